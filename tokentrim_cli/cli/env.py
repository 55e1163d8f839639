"""`tokentrim env`: versions, device, caches and model shapes: what people paste into bug reports."""

from __future__ import annotations

from . import app, out, reports_errors
from .options import JsonOpt


@app.command(
    help=(
        "Show versions, devices, cache paths and the random:<shape> models.\n\n"
        "Examples:\n\n"
        "\b\n"
        "  tokentrim env\n"
        "  tokentrim env --json"
    )
)
@reports_errors
def env(as_json: JsonOpt = False) -> None:
    import os

    import torch
    from huggingface_hub import constants

    from .. import metrics, model, render

    facts = metrics.provenance()
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    facts |= {
        "cuda_devices": cuda,
        "hf_cache": constants.HF_HUB_CACHE,
        "hf_offline": os.environ.get("HF_HUB_OFFLINE", "0"),
        "default_model": model.default_model_id(),
        "random_shapes": dict(model.shape_table()),
    }
    if as_json:
        out.file.write(render.to_json(facts) + "\n")
        return
    rows = [(k, ", ".join(v) if isinstance(v, list) else str(v)) for k, v in facts.items() if k != "random_shapes"]
    out.print(render.key_value_table("tokentrim environment", rows), soft_wrap=False)
    out.print(render.key_value_table("random:<shape> models (random weights, exact architecture)", model.shape_table()), soft_wrap=False)

"""`tokentrim calibrate`: pick a trimming setting by how far it moves the next-token distribution."""

from __future__ import annotations

import enum
import json
from typing import Annotated

import typer

from ..errors import InputError, UsageError
from . import app, err, out, reports_errors
from .loading import load_model
from .options import (
    AttnImpl,
    AttnOpt,
    DeviceOpt,
    DType,
    DTypeOpt,
    JsonOpt,
    ModelOpt,
    OfflineOpt,
    Quantize,
    QuantizeOpt,
    QuietOpt,
    RevisionOpt,
    check_device,
)


class CalibrateMethod(str, enum.Enum):
    vtw = "vtw"
    fastv = "fastv"
    st3 = "st3"
    mustdrop = "mustdrop"


@app.command(
    help=(
        "Calibrate a trimming method on a small dataset and write a trimming profile.\n\n"
        "VTW: for every candidate layer K, the KL divergence between the next-token distribution with "
        "the visual tokens withdrawn before K and without trimming; K = the smallest layer whose mean "
        "KL <= --eta. FastV, ST3, MustDrop: the most aggressive setting of the main knob (prune ratio, "
        "threshold preset) whose mean KL stays within --kl-budget.\n\n"
        "Examples:\n\n"
        "  tokentrim calibrate --method vtw -m llava-hf/llava-1.5-7b-hf\n\n"
        "  tokentrim calibrate --method vtw --data my-samples.jsonl --eta 0.003 --plot kl.png\n\n"
        "  tokentrim calibrate --method fastv --kl-budget 0.05 --output profiles/fastv-mine.toml"
    )
)
@reports_errors
def calibrate(
    method: Annotated[CalibrateMethod, typer.Option("--method", help="The method to calibrate.")] = CalibrateMethod.vtw,
    data: Annotated[
        str | None,
        typer.Option("--data", help='JSONL, one {"image": PATH|URL, "prompt": ...} per line; default: the built-in set.'),
    ] = None,
    samples: Annotated[int | None, typer.Option("--samples", min=1, help="Use the first N samples.")] = None,
    eta: Annotated[float, typer.Option("--eta", help="VTW: mean KL threshold (0.003 is the reference's for LLaVA-1.5-7B).")] = 0.003,
    min_layer: Annotated[int | None, typer.Option("--min-layer", help="VTW: smallest candidate K (default: 5 of 32, scaled).")] = None,
    kl_budget: Annotated[float | None, typer.Option("--kl-budget", help="FastV, ST3, MustDrop: the mean KL allowed.")] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Profile to write (default: profiles/<method>-<model>.toml).")] = None,
    plot: Annotated[str | None, typer.Option("--plot", help="Also draw the KL curve to this PNG file.")] = None,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    offline: OfflineOpt = False,
    device: DeviceOpt = "auto",
    dtype: DTypeOpt = DType.auto,
    quantize: QuantizeOpt = Quantize.none,
    attn_impl: AttnOpt = AttnImpl.auto,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from .. import __version__, calibration, metrics, profiles, render

    device = check_device(device)
    if method is CalibrateMethod.vtw and eta <= 0:
        raise InputError(f"--eta must be > 0, got {eta}")
    if method is not CalibrateMethod.vtw and kl_budget is None:
        raise UsageError(f"--method {method.value} needs --kl-budget (the mean KL allowed)")
    if plot:
        render.check_plotting()
    dataset = calibration.load_dataset(data, limit=samples)
    loaded = load_model(
        model, revision=revision, offline=offline, device=device, dtype=dtype, quantize=quantize,
        attn_impl=attn_impl, quiet=quiet or as_json,
    )  # fmt: skip
    with render.progress_bar(f"Calibrating {method.value}", enabled=not (quiet or as_json) and err.is_terminal, console=err) as advance:
        if method is CalibrateMethod.vtw:
            result = calibration.calibrate_vtw(loaded, dataset, eta=eta, min_layer=min_layer, progress=advance)
        else:
            result = calibration.calibrate_knob(loaded, dataset, method=method.value, kl_budget=kl_budget, progress=advance)
    profile = calibration.calibrated_profile(result, loaded.info, dataset, version=__version__)
    path = profiles.write_profile(profile, output or f"profiles/{profile.name}.toml")
    if plot:
        render.plot_kl_curve(result, plot)
    if as_json:
        document = render.calibration_document(result, dataset=dataset, profile_path=str(path), versions=metrics.provenance(loaded.info))
        out.file.write(json.dumps(document, indent=2) + "\n")
        return
    out.print(render.calibration_table(result))
    if not result.qualified:
        err.print(
            f"Warning: no setting met the threshold ({result.threshold}); the profile trims nothing "
            f"({result.knob} = {result.params.get(result.knob, result.chosen)}).",
            markup=False,
        )
    out.print(f"Wrote {path} ({result.knob} = {result.chosen}; {result.samples} samples, {result.seconds:.1f} s)", markup=False)

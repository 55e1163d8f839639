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
    JsonOpt,
    ModelOptions,
    QuietOpt,
    with_model_options,
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
@with_model_options
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
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    *,
    model_options: ModelOptions,
) -> None:
    from .. import __version__, calibration, files, metrics, profiles, render
    from .. import model as model_lib

    if method is CalibrateMethod.vtw and eta <= 0:
        raise InputError(f"--eta must be > 0, got {eta}")
    if method is not CalibrateMethod.vtw and kl_budget is None:
        raise UsageError(f"--method {method.value} needs --kl-budget (the mean KL allowed)")
    if output is not None and not output.strip():
        raise UsageError("--output is empty (leave it out for profiles/<method>-<model>.toml)")
    model_id = model_options.model or model_lib.default_model_id()
    target = output or f"profiles/{method.value}-{calibration.model_slug(model_id)}.toml"
    # Every output target is checked before the work starts, and written together at the end.
    profiles.check_outside_package(target)
    files.check_writable(target)
    plot_fmt = render.plot_format(plot) if plot else None
    dataset = calibration.load_dataset(data, limit=samples)
    loaded = load_model(model_options, quiet=quiet or as_json)
    with render.progress_bar(f"Calibrating {method.value}", enabled=not (quiet or as_json) and err.is_terminal, console=err) as advance:
        if method is CalibrateMethod.vtw:
            result = calibration.calibrate_vtw(loaded, dataset, eta=eta, min_layer=min_layer, progress=advance)
        else:
            result = calibration.calibrate_knob(loaded, dataset, method=method.value, kl_budget=kl_budget, progress=advance)
    profile = calibration.calibrated_profile(result, loaded.info, dataset, version=__version__)
    provenance = metrics.provenance(loaded.info)
    text = profiles.profile_text(profile, source=target)
    with files.staged_outputs([target] + ([plot] if plot else [])) as staged:
        files.write_text(staged[0], text)
        if plot:
            render.plot_kl_curve(result, staged[1], fmt=plot_fmt, provenance=provenance)
    if as_json:
        document = render.calibration_document(result, dataset=dataset, profile_path=str(target), versions=provenance)
        out.file.write(json.dumps(document, indent=2) + "\n")
        return
    out.print(render.calibration_table(result))
    if not result.qualified:
        err.print(
            f"Warning: no setting met the threshold ({result.threshold}); the profile trims nothing "
            f"({result.knob} = {result.params.get(result.knob, result.chosen)}).",
            markup=False,
        )
    out.print(render.cell(f"Wrote {target} ({result.knob} = {result.chosen}; {result.samples} samples, {result.seconds:.1f} s)"))

"""`tokentrim calibrate`: pick a trimming setting by how far it moves the next-token distribution."""

from __future__ import annotations

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


def _check_method(value: str) -> str:
    """A method that declares what calibration may tune (the registry says which: `profiles list`)."""
    from ..methods import calibratable

    if value not in calibratable():
        raise typer.BadParameter(f"'{value}' cannot be calibrated; calibratable: {', '.join(sorted(calibratable()))}")
    return value


def _complete_method(incomplete: str) -> list[str]:
    from ..methods import calibratable

    return [name for name in sorted(calibratable()) if name.startswith(incomplete)]


@app.command(
    help=(
        "Calibrate a trimming method on a small dataset and write a trimming profile.\n\n"
        "VTW: for every candidate layer K, the KL divergence between the next-token distribution with "
        "the visual tokens withdrawn before K and without trimming; K = the smallest layer whose mean "
        "KL <= --eta (default: the reference's value for the checkpoint). Every other method that "
        "declares a knob (`tokentrim profiles list` shows them): the most aggressive value whose mean "
        "KL stays within --kl-budget.\n\n"
        "Examples:\n\n"
        "\b\n"
        "  tokentrim calibrate --method vtw -m llava-hf/llava-1.5-7b-hf\n"
        "  tokentrim calibrate --method vtw --data my-samples.jsonl --eta 0.003 --plot kl.png\n"
        "  tokentrim calibrate --method dart --kl-budget 0.05 --output profiles/dart-mine.toml"
    )
)
@reports_errors
@with_model_options
def calibrate(
    method: Annotated[
        str, typer.Option("--method", metavar="NAME", callback=_check_method, autocompletion=_complete_method,
                          help="The method to calibrate: vtw, or any method with a calibration knob.")
    ] = "vtw",
    data: Annotated[
        str | None,
        typer.Option("--data", metavar="FILE.jsonl", help='JSONL, one {"image": PATH|URL, "prompt": ...} per line; default: the built-in set.'),
    ] = None,
    samples: Annotated[int | None, typer.Option("--samples", min=1, metavar="N", help="Use the first N samples.")] = None,
    eta: Annotated[
        float | None, typer.Option("--eta", metavar="X", show_default=False,
                                   help="VTW: mean KL threshold (default: the reference's for the checkpoint, else 0.003).")
    ] = None,
    min_layer: Annotated[int | None, typer.Option("--min-layer", metavar="K", help="VTW: smallest candidate K (default: 5 of 32, scaled).")] = None,
    kl_budget: Annotated[float | None, typer.Option("--kl-budget", metavar="X", help="Every method but VTW: the mean KL allowed.")] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", metavar="FILE.toml", help="Profile to write (default: profiles/<method>-<model>.toml).")] = None,
    plot: Annotated[str | None, typer.Option("--plot", metavar="FILE.png", help="Also draw the KL curve.")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    *,
    model_options: ModelOptions,
) -> None:
    from .. import __version__, calibration, files, metrics, profiles, render
    from .. import model as model_lib
    from ..methods import get_method

    withdrawal = get_method(method).calibration.search == "withdrawal_layer"
    if eta is not None and eta <= 0:
        raise InputError(f"--eta must be > 0, got {eta}")
    if not withdrawal and kl_budget is None:
        raise UsageError(f"--method {method} needs --kl-budget (the mean KL allowed)")
    if output is not None and not output.strip():
        raise UsageError("--output is empty (leave it out for profiles/<method>-<model>.toml)")
    model_id = model_options.model or model_lib.default_model_id()
    eta_source = "--eta"
    if withdrawal and eta is None:
        eta, eta_source = calibration.vtw_eta(model_id)
    target = output or f"profiles/{method}-{calibration.model_slug(model_id)}.toml"
    from ..distributed import Shard

    shard = Shard.from_environment()
    quiet = quiet or as_json or not shard.is_main
    # Every output target is checked before the work starts, and written together at the end.
    profiles.check_outside_package(target)
    files.check_writable(target)
    plot_fmt = render.plot_format(plot) if plot else None
    dataset = calibration.load_dataset(data, limit=samples)
    if shard.world > 1:
        import dataclasses

        model_options = dataclasses.replace(model_options, device=shard.local_device(model_options.device))
    loaded = load_model(model_options, quiet=quiet)
    label = f"Calibrating {method}" + (f" ({shard.world} processes)" if shard.world > 1 else "")
    with render.progress_bar(label, enabled=not quiet and err.is_terminal, console=err) as advance:
        if withdrawal:
            result = calibration.calibrate_vtw(loaded, dataset, eta=eta, min_layer=min_layer, progress=advance, shard=shard)
            result.notes = [f"eta = {eta:g}: {eta_source}"]
            if data is None:
                result.notes.append(calibration.REFERENCE_SET_NOTE)
        else:
            result = calibration.calibrate_knob(loaded, dataset, method=method, kl_budget=kl_budget, progress=advance, shard=shard)
    if not shard.is_main:
        return
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
    out.print(render.calibration_table(result), soft_wrap=False)
    for note in result.notes:
        err.print(f"Note: {note}", markup=False)
    if not result.qualified:
        err.print(
            f"Warning: no setting met the threshold ({result.threshold}); the profile trims nothing "
            f"({result.knob} = {result.params.get(result.knob, result.chosen)}).",
            markup=False,
        )
    out.print(render.cell(f"Wrote {target} ({result.knob} = {result.chosen}; {result.samples} samples, {result.seconds:.1f} s)"))

"""`tokentrim profile`: speed and memory of trimming profiles side by side."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ..errors import OutOfMemoryError, UsageError
from . import app, err, out, reports_errors
from .loading import load_model
from .eval import Format
from .options import (
    JsonOpt,
    ModelOptions,
    QuietOpt,
    complete_profile,
    with_model_options,
)


@app.command(
    help=(
        "Measure trimming profiles side by side: visual tokens, prefill FLOPs, time to first token, "
        "decode tokens/s, end-to-end time, KV cache bytes and peak memory, with the speed-up against "
        "the first --compare profile beside the FLOPs-implied one. Runs are interleaved after warm-ups; "
        "EOS is ignored so every profile generates --max-new-tokens tokens. A 'stock' row runs "
        "transformers without tokentrim, to show the engine's own overhead.\n\n"
        "Examples:\n\n"
        "\b\n"
        "  tokentrim profile --profile st3 --compare baseline -m random:cpu-576 -i cat.jpg\n"
        "  tokentrim profile --profile vtw --profile fastv --compare baseline -m llava-hf/llava-1.5-7b-hf -i cat.jpg --runs 20\n"
        "  tokentrim profile --profile st3 --compare baseline -m random:llava-1.5-7b --batch-size 16 --json > st3.json\n"
        "  tokentrim profile --profile visionzip-64 --profile dart-64 -i cat.jpg --format csv > speed.csv"
    )
)
@reports_errors
@with_model_options
def profile(
    profiles_: Annotated[list[str] | None, typer.Option("--profile", metavar="NAME|PATH", autocompletion=complete_profile, help="Trimming profile to measure; repeatable.")] = None,
    compare: Annotated[
        list[str] | None, typer.Option("--compare", metavar="NAME|PATH", autocompletion=complete_profile, help="Profile to compare against; repeatable; the first is the reference.")
    ] = None,
    image: Annotated[list[str] | None, typer.Option("--image", "-i", metavar="PATH|URL", help="Image path or URL; repeatable (default: the sample picture).")] = None,
    prompt: Annotated[str, typer.Option("--prompt", "-p", metavar="TEXT", help="The question.")] = "Describe this picture in detail.",
    runs: Annotated[int, typer.Option("--runs", min=1, metavar="N", help="Measured runs per profile (>= 10 on GPU).")] = 5,
    warmup: Annotated[int, typer.Option("--warmup", min=0, metavar="N", help="Unmeasured runs first.")] = 1,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "--max-tokens", min=1, metavar="N", help="Tokens every profile generates.")] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, metavar="N", help="The same image and prompt this many times.")] = 1,
    no_stock: Annotated[bool, typer.Option("--no-stock", help="Skip the stock transformers row.")] = False,
    plot: Annotated[str | None, typer.Option("--plot", metavar="FILE.png", help="Draw speed-ups and KV memory.")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="How to print the results (csv, markdown, json: every column).")] = Format.table,
    wide: Annotated[bool, typer.Option("--wide", help="Every column in the table.")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    *,
    model_options: ModelOptions,
) -> None:
    from importlib import resources

    from .. import inputs

    images = image or [str(resources.files("tokentrim_cli") / "samples" / "red-circle.png")]
    missing = inputs.check_image_paths(images)
    if missing:
        raise UsageError(f"image not found: {', '.join(missing)}")
    compare = compare or ["baseline"]
    names = list(dict.fromkeys(compare + (profiles_ or [])))
    if len(names) < 2 and no_stock:
        raise UsageError("give at least one --profile besides the --compare reference")
    from .. import files, generation, metrics, profiles, render

    plot_fmt = render.plot_format(plot) if plot else None  # checked before any work
    trimming = {name: profiles.load_profile(name) for name in names}
    loaded_images = [inputs.load_image(source) for source in images]
    loaded = load_model(model_options, quiet=quiet or as_json)
    info = loaded.info
    for profile_ in trimming.values():
        profiles.check_fits(profile_, model_id=info.model_id, model_type=info.model_type, num_layers=info.num_layers)
    batch = metrics.batched(generation.prepare_inputs(loaded, loaded_images, prompt), batch_size)
    # Rows are named by the profiles' own names; a path given twice under one name is an error.
    labels = [p.name for p in trimming.values()]
    if len(set(labels)) != len(labels) or "stock" in labels:
        raise UsageError(f"the measured profiles need distinct names other than 'stock', got {', '.join(labels)}")
    entries = ([] if no_stock else [("stock", None)]) + [(p.name, p) for p in trimming.values()]
    single = generation.prepare_inputs(loaded, loaded_images, prompt)
    room = generation.context_length(loaded) - single["input_ids"].shape[1]
    if max_new_tokens > room:
        raise UsageError(f"--max-new-tokens {max_new_tokens} does not fit: the prompt leaves {room} of the model's "
                         f"{generation.context_length(loaded)} positions")  # fmt: skip
    if info.device == "cpu":
        # On the CPU an allocation too large for memory is not an exception but the OOM killer:
        # estimate first, and refuse with the largest batch that fits.
        fits = metrics.largest_batch_by_estimate(loaded, single, max_new_tokens=max_new_tokens)
        if batch_size > fits:
            raise OutOfMemoryError(
                f"--batch-size {batch_size} needs more than the {metrics.available_memory() / 2**30:.1f} GiB of memory available",
                hint=f"the largest batch that fits a {max_new_tokens}-token answer by estimate: {fits}",
            )
    try:
        with render.progress_bar("Measuring", enabled=not (quiet or as_json) and err.is_terminal, console=err) as advance:
            report = metrics.measure(
                loaded, entries, inputs=batch, runs=runs, warmup=warmup, max_new_tokens=max_new_tokens,
                reference=trimming[compare[0]].name, progress=advance,
            )  # fmt: skip
    except Exception as e:
        if not metrics.is_out_of_memory(e) or batch_size == 1:
            raise
        fits = metrics.largest_fitting_batch(loaded, single, below=batch_size, max_new_tokens=max_new_tokens)
        raise OutOfMemoryError(
            f"--batch-size {batch_size} does not fit in {info.device} memory",
            hint=f"the largest batch that fits a {max_new_tokens}-token answer with stock transformers: {fits}",
        ) from None
    if plot:
        with files.staged_outputs([plot]) as (staged,):
            render.plot_report(report, staged, fmt=plot_fmt)
    if as_json or fmt is Format.json:
        out.file.write(json.dumps(render.report_document(report), indent=2) + "\n")
        return
    if fmt is Format.csv:
        out.file.write(render.rows_csv(render.report_rows(report)))
        return
    if fmt is Format.markdown:
        out.file.write(render.rows_markdown(render.report_rows(report), f"{info.model_id}, batch {batch_size}"))
        return
    out.print(render.report_table(report, wide=wide), soft_wrap=False)
    if warning := render.runs_warning(report):
        err.print(f"Note: {warning}", markup=False)
    if info.device == "cpu":
        err.print(f"CPU run: peak memory is the process's ({report.process_peak_rss_bytes / 2**20:.0f} MiB RSS over the whole run).", markup=False)

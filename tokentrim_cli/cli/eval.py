"""`tokentrim eval`: the quality of trimming profiles on an evaluation set, side by side."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from ..errors import UsageError
from . import app, err, out, reports_errors
from .loading import check_profiles_fit, load_model
from .options import JsonOpt, ModelOptions, QuietOpt, check_seed, complete_profile, with_model_options


class Format(str, enum.Enum):
    table = "table"
    csv = "csv"
    markdown = "markdown"
    json = "json"


def _check_dataset(value: str | None) -> str | None:
    from ..benchmarks import NAMED  # light: no torch

    if value is not None and value not in NAMED:
        raise typer.BadParameter(f"'{value}' is not supported; supported: {', '.join(NAMED)}")
    return value


def _complete_dataset(incomplete: str) -> list[str]:
    from ..benchmarks import NAMED

    return [name for name in NAMED if name.startswith(incomplete)]


@app.command(
    "eval",
    help=(
        "Score trimming profiles on the same samples (the first --profile is the reference): the "
        "benchmark's score, retention, agreement with the reference's answers, visual tokens, prefill "
        "FLOPs ratio. Datasets: a JSONL file (--data), the built-in scenes testbed, easy-VQA, and the "
        "papers' suite (pope, mme, gqa, scienceqa-img, textvqa) from the Hub or a local copy "
        "(--dataset-path), with LLaVA-1.5's prompts and the official scoring rules. Several processes: "
        "accelerate launch -m tokentrim_cli eval ...\n\n"
        "Examples:\n\n"
        "\b\n"
        "  tokentrim eval --dataset scenes --limit 700 --profile baseline --profile visionzip-64 --profile random-64\n"
        "  tokentrim eval --dataset pope --split adversarial -m llava-hf/llava-1.5-7b-hf --profile baseline --profile dart-64\n"
        "  tokentrim eval --dataset mme --dataset-path ./mme --output-dir runs/mme --json > mme.json\n"
        "  tokentrim eval --data qa.jsonl --profile baseline --profile fastv --format csv"
    ),
)
@reports_errors
@with_model_options
def evaluate(
    profile: Annotated[list[str] | None, typer.Option("--profile", metavar="NAME|PATH", autocompletion=complete_profile, help="Trimming profile; repeatable; the first is the reference.")] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", metavar="FILE.jsonl", help='JSONL: {"image": PATH|URL, "prompt": ..., "answer": str or [str, ...]} per line.'),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", metavar="NAME", callback=_check_dataset, autocompletion=_complete_dataset,
                                 help="scenes, easy-vqa, pope, mme, gqa, scienceqa-img or textvqa.")
    ] = None,
    dataset_path: Annotated[
        str | None, typer.Option("--dataset-path", metavar="DIR", help="A local copy in the Hub schema (save_to_disk folder or parquet files).")
    ] = None,
    split: Annotated[str | None, typer.Option("--split", metavar="NAME", help="Split of --dataset (default: its evaluation split).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, metavar="N", help="At most N samples (a seeded sample for --dataset).")] = None,
    seed: Annotated[int, typer.Option("--seed", metavar="N", callback=check_seed, help="Seed of the --limit sample.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, metavar="N", help="Samples per generate() call.")] = 8,
    max_new_tokens: Annotated[
        int | None, typer.Option("--max-new-tokens", "--max-tokens", min=1, metavar="N", show_default=False,
                                 help="Answer length bound for every sample (default: the benchmark's, per sample where it knows one).")
    ] = None,
    output_dir: Annotated[
        str | None, typer.Option("--output-dir", metavar="DIR", help="Keep finished samples here; an interrupted run resumes from them.")
    ] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Leave out samples whose image cannot be decoded (named on stderr).")] = False,
    plot: Annotated[str | None, typer.Option("--plot", metavar="FILE.png", help="Draw the score against the FLOPs ratio.")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="How to print the results (csv, markdown, json: every column).")] = Format.table,
    wide: Annotated[bool, typer.Option("--wide", help="Every column in the table (per category too).")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    *,
    model_options: ModelOptions,
) -> None:
    if (data is None) == (dataset is None):
        raise UsageError("give exactly one of --data FILE.jsonl and --dataset NAME")
    if dataset_path is not None and dataset is None:
        raise UsageError("--dataset-path goes with --dataset NAME")
    from .. import benchmarks, evaluation, files, profiles, render
    from ..distributed import Shard

    if as_json:
        fmt = Format.json
    shard = Shard.from_environment()
    quiet = quiet or fmt is not Format.table or not shard.is_main
    plot_fmt = render.plot_format(plot) if plot and shard.is_main else None  # checked before any work
    if output_dir is not None and shard.is_main:
        files.check_writable(f"{output_dir}/run.json")
    trimming = [profiles.load_profile(name) for name in (profile or ["baseline"])]
    check_profiles_fit(trimming, model_options)
    if data is not None:
        evalset = benchmarks.load_jsonl(data, limit=limit)
    else:
        evalset = benchmarks.load_named(dataset, path=dataset_path, split=split, limit=limit, seed=seed,
                                        offline=model_options.offline)  # fmt: skip
    if shard.world > 1:
        import dataclasses

        model_options = dataclasses.replace(model_options, device=shard.local_device(model_options.device))
    loaded = load_model(model_options, quiet=quiet)
    enabled = not quiet and err.is_terminal
    label = f"Evaluating ({shard.world} processes)" if shard.world > 1 else "Evaluating"
    with render.progress_bar(label, enabled=enabled, console=err) as advance:
        report = evaluation.evaluate(
            loaded, trimming, evalset, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=advance,
            output_dir=output_dir, skip_bad=skip_bad, shard=shard,
            on_skip=lambda sample_id: err.print(f"Warning: skipped sample {render.terminal_safe(sample_id)}: its image cannot be decoded", markup=False),
        )  # fmt: skip
    if not shard.is_main:
        return
    if plot:
        with files.staged_outputs([plot]) as (staged,):
            render.plot_eval(report, staged, fmt=plot_fmt)
    if fmt is Format.json:
        out.file.write(render.to_json(render.eval_document(report)) + "\n")
    elif fmt is Format.csv:
        out.file.write(render.eval_csv(report))
    elif fmt is Format.markdown:
        out.file.write(render.eval_markdown(report))
    else:
        out.print(render.eval_table(report, wide=wide), soft_wrap=False)

"""`tokentrim eval`: exact-match accuracy of trimming profiles on question/answer data."""

from __future__ import annotations

import enum
import json
from typing import Annotated

import typer

from ..errors import UsageError
from . import app, err, out, reports_errors
from .loading import load_model
from .options import (
    JsonOpt,
    ModelOptions,
    QuietOpt,
    with_model_options,
)


class Dataset(str, enum.Enum):
    easy_vqa = "easy-vqa"


@app.command(
    "eval",
    help=(
        "Score trimming profiles by exact-match accuracy on the same samples (the first --profile is "
        "the reference): accuracy, retention, agreement with the reference's answers, visual tokens, "
        "prefill FLOPs ratio and time. Answers are normalised (case, whitespace, a final period).\n\n"
        "Examples:\n\n"
        "  tokentrim eval --data qa.jsonl --profile baseline --profile fastv --profile vtw\n\n"
        "  tokentrim eval --dataset easy-vqa --split test --limit 2000 --seed 0 --profile baseline --profile st3 --plot pareto.png\n\n"
        "  tokentrim eval --data qa.jsonl --profile baseline --profile mustdrop --batch-size 16 --json > scores.json"
    ),
)
@reports_errors
@with_model_options
def evaluate(
    profile: Annotated[list[str] | None, typer.Option("--profile", help="Trimming profile; repeatable; the first is the reference.")] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help='JSONL: {"image": PATH|URL, "prompt": ..., "answer": str or [str, ...]} per line.'),
    ] = None,
    dataset: Annotated[Dataset | None, typer.Option("--dataset", help="A named dataset instead of --data (needs its package).")] = None,
    split: Annotated[str, typer.Option("--split", help="Split of --dataset.")] = "test",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N samples (a seeded sample for --dataset).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the --dataset sample.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Samples per generate() call.")] = 8,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "--max-tokens", min=1, help="Answer length bound.")] = 16,
    plot: Annotated[str | None, typer.Option("--plot", help="Draw accuracy against FLOPs ratio to this PNG file.")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    *,
    model_options: ModelOptions,
) -> None:
    if (data is None) == (dataset is None):
        raise UsageError("give exactly one of --data FILE.jsonl and --dataset NAME")
    from .. import evaluation, files, profiles, render

    plot_fmt = render.plot_format(plot) if plot else None  # checked before any work
    trimming = [profiles.load_profile(name) for name in (profile or ["baseline"])]
    evalset = evaluation.load_jsonl(data, limit=limit) if data else evaluation.load_easy_vqa(split, limit=limit, seed=seed)
    loaded = load_model(model_options, quiet=quiet or as_json)
    with render.progress_bar("Evaluating", enabled=not (quiet or as_json) and err.is_terminal, console=err) as advance:
        report = evaluation.evaluate(
            loaded, trimming, evalset, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=advance
        )
    if plot:
        with files.staged_outputs([plot]) as (staged,):
            render.plot_eval(report, staged, fmt=plot_fmt)
    if as_json:
        out.file.write(json.dumps(render.eval_document(report), indent=2) + "\n")
        return
    out.print(render.eval_table(report))

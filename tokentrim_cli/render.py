"""Everything the user sees: Rich tables, summary lines and JSON documents. Formatting only."""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .errors import EnvironmentProblem
from .files import atomic_path
from .metrics import FLOPS_FORMULA, Stats


def visual_accounting_line(result) -> str:
    """`cat.jpg 1024x768 -> 576 visual tokens -> 576 in -> 288 kept (layer-avg 432.0)` (cli.md):
    produced by the processor, entering the language model, reaching its last layer."""
    images = ", ".join(f"{i['source']} {i['width']}x{i['height']}" for i in result.images) or "no image"
    visual = result.visual_tokens
    return (
        f"{images} -> {visual.before_trimming} visual tokens -> {visual.input} in -> {visual.per_layer[-1]} kept "
        f"(layer-avg {visual.layer_averaged:.1f})"
    )


def generation_summary(result, *, verbose: bool = False) -> str:
    timing = result.timing
    line = (
        f"{visual_accounting_line(result)} | TTFT {timing.ttft_s:.3f} s | "
        f"{timing.decode_tokens_per_s:.1f} tok/s | {result.new_tokens} tokens ({result.finish_reason})"
    )
    if result.finish_reason == "length":
        line += " | stopped at --max-new-tokens"
    if verbose:
        line += f"\nvisual tokens per layer: {result.visual_tokens.per_layer}"
        line += f"\nKV entries per layer:    {result.kv_tokens_per_layer} ({result.kv_bytes / 2**20:.2f} MiB)"
    return line


def generation_document(result, *, model_info, profile, versions: dict) -> dict:
    """The JSON object of `tokentrim chat --json`; other commands reuse these names."""
    return {
        "text": result.text,
        "model": model_info.model_id,
        "profile": profile.name,
        "profile_sha256": profile.sha256,
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "new_tokens": result.new_tokens,
        "images": result.images,
        "visual_tokens": asdict(result.visual_tokens),
        "kv_tokens_per_layer": result.kv_tokens_per_layer,
        "kv_bytes": result.kv_bytes,
        "timing": asdict(result.timing),
        "versions": versions,
    }


def to_json(document: dict) -> str:
    return json.dumps(document, indent=2, sort_keys=False)


def profiles_table(profiles: list) -> Table:
    table = Table(title="Trimming profiles (parameters: tokentrim profiles show NAME)")
    table.add_column("name", no_wrap=True)
    table.add_column("method", no_wrap=True)
    table.add_column("description")
    table.add_column("source", overflow="fold")
    for profile in profiles:
        table.add_row(profile.name, profile.method, profile.description, profile.source)
    return table


def key_value_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    return table


@contextlib.contextmanager
def progress_bar(description: str, *, enabled: bool, console):
    """Yields an `advance(done, total)` callback; draws a bar on `console` when enabled."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield advance


def calibration_table(result) -> Table:
    label = "eta" if result.method == "vtw" else "KL budget"
    table = Table(title=f"{result.method}: mean KL per {result.knob} ({label} {result.threshold}, {result.samples} samples)")
    table.add_column(result.knob, justify="right")
    table.add_column("mean KL", justify="right")
    table.add_column(f"<= {label}", justify="center")
    for value, kl in result.curve:
        marker = "yes" if kl <= result.threshold else ""
        style = "bold" if value == result.chosen and result.qualified else None
        table.add_row(f"{value:g}", f"{kl:.3e}", marker, style=style)
    return table


def calibration_document(result, *, dataset, profile_path: str, versions: dict) -> dict:
    return {
        "method": result.method,
        "knob": result.knob,
        "chosen": result.chosen,
        "params": result.params,
        "qualified": result.qualified,
        "threshold": result.threshold,
        "curve": [{"value": value, "mean_kl": kl} for value, kl in result.curve],
        "per_sample_kl": result.per_sample,
        "samples": result.samples,
        "dataset": dataset.name,
        "dataset_hash": f"sha256:{dataset.sha256}",
        "seconds": result.seconds,
        "profile": profile_path,
        "versions": versions,
    }


def check_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EnvironmentProblem("--plot needs matplotlib", hint="pip install 'tokentrim-cli[plot]'") from None


@contextlib.contextmanager
def _figure(path: str | Path, **subplots):
    """Yield (figure, axes) from matplotlib's file-only backend; on exit the figure is saved
    atomically to `path` and closed, whatever happened."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(**subplots)
    try:
        yield figure, axes
        with atomic_path(path) as tmp:
            figure.savefig(tmp, dpi=120, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    finally:
        plt.close(figure)


def plot_kl_curve(result, path: str | Path) -> None:
    """The mean KL over the knob, the threshold as a line, the chosen setting marked."""
    values = [value for value, _ in result.curve]
    kls = [max(kl, 1e-12) for _, kl in result.curve]
    with _figure(path, figsize=(6, 3.5)) as (_, axis):
        axis.semilogy(values, kls, marker="o", label="mean KL")
        axis.axhline(result.threshold, color="tab:red", linestyle="--", label=f"threshold {result.threshold:g}")
        if result.qualified:
            axis.axvline(result.chosen, color="tab:green", linestyle=":", label=f"chosen {result.knob} = {result.chosen:g}")
        axis.set_xlabel(result.knob)
        axis.set_ylabel("KL(P_trimmed || P_full)")
        axis.set_title(f"{result.method} calibration, {result.samples} samples")
        axis.legend()


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def report_table(report) -> Table:
    """`tokentrim profile`: one row per configuration."""
    settings = report.settings
    table = Table(
        title=(
            f"{report.provenance['model']['model_id']} on {report.provenance['device_name']}, "
            f"{report.provenance['model']['dtype']}, {report.provenance['model']['attn_impl']}, batch {settings['batch_size']}, "
            f"{settings['prompt_tokens']} prompt tokens, {settings['max_new_tokens']} new tokens, median of {settings['runs']} runs"
        )
    )
    for column, justify in (
        ("configuration", "left"), ("visual in -> LM (layer-avg)", "right"), ("decoder prefill GFLOPs", "right"),
        ("TTFT ms (p10-p90)", "right"), (f"TTFT speed-up vs {report.reference} (p10-p90)", "right"),
        ("decoder-FLOPs-implied", "right"),
        ("decode tok/s", "right"), ("end-to-end s", "right"), ("KV MiB prefill / end", "right"), ("peak MiB", "right"),
        ("trim overhead ms", "right"),
    ):  # fmt: skip
        table.add_column(column, justify=justify)
    for row in report.rows:
        ttft = Stats.of(row.ttft_s)
        speedup = report.speedup(row.name)
        overhead = "-" if row.overhead_s is None else f"{sum(row.overhead_s.values()) * 1e3:.1f}"
        table.add_row(
            row.name,
            f"{row.visual_before} -> {row.visual_input} ({row.visual_layer_averaged:.1f})",
            f"{row.prefill_flops / 1e9:.2f}",
            f"{ttft.median * 1e3:.1f} ({ttft.p10 * 1e3:.1f}-{ttft.p90 * 1e3:.1f})",
            f"{speedup.median:.2f}x ({speedup.p10:.2f}-{speedup.p90:.2f})",
            f"{report.flops_speedup(row.name):.2f}x",
            f"{Stats.of(row.decode_tokens_per_s).median:.1f}",
            f"{Stats.of(row.end_to_end_s).median:.2f}",
            f"{_mib(row.kv_bytes_after_prefill)} / {_mib(row.kv_bytes_end)}",
            _mib(row.peak_memory_bytes),
            overhead,
        )
    return table


def report_document(report) -> dict:
    rows = []
    for row in report.rows:
        entry = asdict(row)
        entry["ttft_stats_s"] = asdict(Stats.of(row.ttft_s))
        entry["decode_tokens_per_s_stats"] = asdict(Stats.of(row.decode_tokens_per_s))
        entry["end_to_end_stats_s"] = asdict(Stats.of(row.end_to_end_s))
        entry["speedup_vs_reference"] = asdict(report.speedup(row.name))
        entry["flops_implied_speedup"] = report.flops_speedup(row.name)
        rows.append(entry)
    return {
        "reference": report.reference,
        "flops_formula": FLOPS_FORMULA,
        "settings": report.settings,
        "process_peak_rss_bytes": report.process_peak_rss_bytes,
        "provenance": report.provenance,
        "rows": rows,
    }


def plot_report(report, path: str | Path) -> None:
    """Measured vs FLOPs-implied TTFT speed-up, and KV memory at the end, per configuration."""
    names = [row.name for row in report.rows]
    x = list(range(len(names)))
    with _figure(path, ncols=2, figsize=(11, 4)) as (_, (left, right)):
        measured = [report.speedup(n).median for n in names]
        implied = [report.flops_speedup(n) for n in names]
        left.bar([i - 0.2 for i in x], measured, width=0.4, label="measured TTFT speed-up")
        left.bar([i + 0.2 for i in x], implied, width=0.4, label="FLOPs-implied")
        left.set_xticks(x, names, rotation=30, ha="right")
        left.axhline(1.0, color="gray", linewidth=0.8)
        left.set_title(f"speed-up vs {report.reference}")
        left.legend()
        right.bar(x, [row.kv_bytes_end / 2**20 for row in report.rows], color="tab:orange")
        right.set_xticks(x, names, rotation=30, ha="right")
        right.set_title(f"KV cache after {report.settings['max_new_tokens']} tokens (MiB)")


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def eval_table(report) -> Table:
    table = Table(title=f"{report.dataset}: {report.samples} samples, reference: {report.reference.name}")
    for column in ("profile", "accuracy", "retention", "agreement", "visual in (layer-avg)", "FLOPs ratio", "time s"):
        table.add_column(column, justify="left" if column == "profile" else "right")
    for row in report.rows:
        visual = sum(row.visual_input) / len(row.visual_input)
        averaged = sum(row.visual_layer_averaged) / len(row.visual_layer_averaged)
        table.add_row(
            row.name, f"{row.accuracy:.1%}", _share(report.retention(row)), f"{report.agreement(row):.1%}",
            f"{visual:.1f} ({averaged:.1f})", f"{report.flops_ratio(row):.3f}", f"{row.seconds:.1f}",
        )  # fmt: skip
    return table


def eval_document(report) -> dict:
    rows = []
    for row in report.rows:
        rows.append(
            {
                "profile": row.name,
                "profile_sha256": row.sha256,
                "accuracy": row.accuracy,
                "retention": report.retention(row),
                "agreement": report.agreement(row),
                "visual_tokens": {
                    "input": sum(row.visual_input) / len(row.visual_input),
                    "layer_averaged": sum(row.visual_layer_averaged) / len(row.visual_layer_averaged),
                },
                "prefill_flops_ratio": report.flops_ratio(row),
                "seconds": row.seconds,
                "predictions": row.predictions,
                "correct": row.correct,
            }
        )
    return {
        "dataset": report.dataset,
        "dataset_sha256": report.dataset_sha256,
        "samples": report.samples,
        "reference": report.reference.name,
        "settings": report.settings,
        "flops_formula": FLOPS_FORMULA,
        "versions": report.provenance,
        "profiles": rows,
    }


def plot_eval(report, path: str | Path) -> None:
    """Accuracy against the prefill FLOPs ratio, one point per profile: the Pareto picture."""
    with _figure(path, figsize=(6, 4)) as (_, axis):
        for row in report.rows:
            x, y = report.flops_ratio(row), row.accuracy * 100
            axis.scatter([x], [y])
            axis.annotate(row.name, (x, y), textcoords="offset points", xytext=(4, 4))
        axis.set_xlabel("decoder prefill FLOPs (ratio to the reference)")
        axis.set_ylabel("exact-match accuracy (%)")
        axis.set_title(f"{report.dataset}, {report.samples} samples")

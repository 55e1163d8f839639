"""Everything the user sees: Rich tables, summary lines and JSON documents. Formatting only."""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import asdict
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from .errors import EnvironmentProblem
from .metrics import FLOPS_FORMULA, Stats


# C0 controls but tab and newline, DEL and C1 controls: what can move a terminal's cursor, clear it,
# set its title or colours. Text from outside (file names, profile fields, servers, model output)
# passes through terminal_safe() before it is printed.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: object, *, keep_newlines: bool = True) -> str:
    """`text` with control characters written as visible escapes (ESC -> \\x1b)."""
    text = str(text)
    if not keep_newlines:
        text = text.replace("\n", "\\n")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def model_text(text: str) -> str:
    """A model's output for a terminal: control characters (but tab and newline) become U+FFFD."""
    return _CONTROL.sub("\ufffd", text)


def visual_accounting_line(result) -> str:
    """`cat.jpg 1024x768 -> 576 visual tokens -> 576 in -> 288 kept (layer-avg 432.0)` (cli.md):
    produced by the processor, entering the language model, reaching its last layer."""
    images = ", ".join(f"{terminal_safe(i['source'])} {i['width']}x{i['height']}" for i in result.images) or "no image"
    visual = result.visual_tokens
    return (
        f"{images} -> {visual.before_trimming} visual tokens -> {visual.input} in -> {visual.per_layer[-1]} kept "
        f"(layer-avg {visual.layer_averaged:.1f})"
    )


def generation_summary(result, *, verbose: bool = False) -> str:
    timing = result.timing
    # A rate needs two tokens or more: the first one's time is the TTFT.
    rate = f"{timing.decode_tokens_per_s:.1f} tok/s" if result.new_tokens > 1 else "- tok/s"
    line = (
        f"{visual_accounting_line(result)} | TTFT {timing.ttft_s:.3f} s | "
        f"{rate} | {result.new_tokens} tokens ({result.finish_reason})"
    )
    if not result.text.strip():
        line += " | empty answer (the model ended its turn at once)"
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


def cell(value: object) -> Text:
    """A table cell shown exactly as written: no Rich markup ("[calibration]" stays), controls escaped."""
    return Text(terminal_safe(value))


def method_traits(method) -> tuple[str, str, str]:
    """(where it acts, whether it needs attention scores, whether it reads the question)."""
    where = " + ".join(method.where()) or "-"
    return where, "yes" if method.needs_attention else "no", "yes" if method.reads_question else "no"


def profiles_table(profiles: list, *, wide: bool = False) -> Table:
    """One row per profile: what its method does (where, attention, question) and, with `wide`,
    the description and the file. "question: no" marks the multi-turn-safe methods."""
    table = Table(title="Trimming profiles (tokentrim profiles show NAME; --wide for descriptions)")
    table.add_column("name", no_wrap=True, max_width=24, overflow="ellipsis")
    if wide:  # the descriptions need the room the trait columns take
        table.add_column("description", ratio=1, min_width=30)
        table.add_column("file", no_wrap=True, max_width=22, overflow="ellipsis")
    else:
        table.add_column("method", no_wrap=True)
        table.add_column("acts in")  # may wrap at its spaces: "vision + prefill + decode"
        table.add_column("attention", no_wrap=True, min_width=9)
        table.add_column("question", no_wrap=True, min_width=8)
    for profile in profiles:
        if wide:
            table.add_row(cell(profile.name), cell(profile.description), cell(_short_source(profile.source)))
        else:
            table.add_row(cell(profile.name), cell(profile.method), *map(cell, method_traits(profile.build_method())))
    return table


def _short_source(source: str) -> str:
    """"built-in/fastv.toml" for a shipped profile; a long path keeps its last two parts, so that
    the column never wraps in the middle of a name."""
    path = Path(source)
    if path.parent == Path(__file__).resolve().parent / "profiles":
        return f"built-in/{path.name}"
    parts = path.parts
    return source if len(parts) <= 2 else str(Path("…", *parts[-2:]))


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
        "notes": result.notes,
        "samples": result.samples,
        "dataset": dataset.name,
        "dataset_hash": f"sha256:{dataset.sha256}",
        "seconds": result.seconds,
        "profile": profile_path,
        "versions": versions,
    }


PLOT_INSTALL_HINT = "pip install matplotlib (or, in a checkout: pip install -e '.[plot]')"
MIN_RUNS_TO_COMPARE = 5  # fewer runs than this: the p10-p90 spread cannot separate profiles


def check_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EnvironmentProblem("--plot needs matplotlib", hint=PLOT_INSTALL_HINT) from None


def plot_format(path: str | Path) -> str:
    """The image format a --plot path asks for (from its extension); refused before any work when
    matplotlib cannot write it or the path cannot be written."""
    from .errors import OutputError
    from .files import check_writable

    check_plotting()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    check_writable(path)
    supported = sorted(FigureCanvasAgg(Figure()).get_supported_filetypes())
    extension = Path(str(path)).suffix.lower().lstrip(".")
    if not extension:
        raise OutputError(f"--plot {path}: give the file an extension (.png, .pdf, .svg)")
    if extension not in supported:
        raise OutputError(f"--plot {path}: matplotlib cannot write '.{extension}' files; it writes {', '.join(supported)}")
    return extension


@contextlib.contextmanager
def _figure(path: str | Path, fmt: str, **subplots):
    """Yield (figure, axes) from matplotlib's file-only backend; on exit the figure is saved to
    `path` (a temporary file of the caller's staged outputs) in `fmt`, and closed."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(**subplots)
    try:
        yield figure, axes
        try:
            figure.savefig(path, dpi=120, bbox_inches="tight", format=fmt)
        except OSError as e:
            from .errors import OutputError

            raise OutputError(f"{path}: cannot write the plot ({e.strerror or e})") from None
    finally:
        plt.close(figure)


def _model_line(provenance: dict) -> str:
    model = provenance.get("model", {})
    return f"{model.get('model_id', '?')} ({model.get('dtype', '?')}) on {provenance.get('device_name', '?')}"


def plot_kl_curve(result, path: str | Path, *, fmt: str = "png", provenance: dict | None = None) -> None:
    """The mean KL over the knob, the threshold as a line, the chosen setting marked (or "none
    qualified" written on the plot)."""
    values = [value for value, _ in result.curve]
    kls = [max(kl, 1e-12) for _, kl in result.curve]
    with _figure(path, fmt, figsize=(6.5, 3.8)) as (_, axis):
        axis.semilogy(values, kls, marker="o", label="mean KL")
        axis.axhline(result.threshold, color="tab:red", linestyle="--", label=f"threshold {result.threshold:g}")
        if result.qualified:
            chosen_kl = dict(result.curve).get(result.chosen)
            axis.axvline(result.chosen, color="tab:green", linestyle=":", label=f"chosen {result.knob} = {result.chosen:g}")
            if chosen_kl is not None:
                axis.plot([result.chosen], [max(chosen_kl, 1e-12)], marker="*", markersize=14, color="tab:green")
        else:
            axis.text(0.5, 0.5, "none qualified: the profile trims nothing", transform=axis.transAxes,
                      ha="center", va="center", color="tab:red", fontsize=11)  # fmt: skip
        axis.set_xlabel(result.knob)
        axis.set_ylabel("KL(P_trimmed || P_full)")
        where = f"\n{_model_line(provenance)}" if provenance else ""
        axis.set_title(f"{result.method} calibration: {result.samples} samples{where}", fontsize=10)
        axis.legend(fontsize=8)


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def report_rows(report) -> list[dict]:
    """Every column of the profile report, one dict per configuration (CSV, markdown, JSON, --wide)."""
    rows = []
    for row in report.rows:
        ttft, speedup = Stats.of(row.ttft_s), report.speedup(row.name)
        rows.append({
            "configuration": row.name,
            "visual_before": row.visual_before, "visual_input": row.visual_input,
            "visual_layer_averaged": row.visual_layer_averaged,
            "prefill_gflops": row.prefill_flops / 1e9,
            "ttft_ms": ttft.median * 1e3, "ttft_ms_p10": ttft.p10 * 1e3, "ttft_ms_p90": ttft.p90 * 1e3,
            "speedup": speedup.median, "speedup_p10": speedup.p10, "speedup_p90": speedup.p90,
            "flops_implied_speedup": report.flops_speedup(row.name),
            "decode_tokens_per_s": Stats.of(row.decode_tokens_per_s).median,
            "end_to_end_s": Stats.of(row.end_to_end_s).median,
            "kv_mib_after_prefill": row.kv_bytes_after_prefill / 2**20, "kv_mib_end": row.kv_bytes_end / 2**20,
            "peak_mib": None if row.peak_memory_bytes is None else row.peak_memory_bytes / 2**20,
            "trim_overhead_ms": None if row.overhead_s is None else sum(row.overhead_s.values()) * 1e3,
        })  # fmt: skip
    return rows


def report_table(report, *, wide: bool = False) -> Table:
    """`tokentrim profile`: one row per configuration. The default columns fit a 100-column
    terminal; --wide adds spreads, GFLOPs, end-to-end time, prefill KV, peak memory and overhead."""
    settings, model = report.settings, report.provenance["model"]
    table = Table(title=cell(
        f"{model['model_id']} on {report.provenance['device_name']}, {model['dtype']}, {model['attn_impl']}, "
        f"batch {settings['batch_size']}, {settings['prompt_tokens']} prompt tokens, {settings['max_new_tokens']} new "
        f"tokens, median of {settings['runs']} runs"
    ), caption=cell(
        f"visual: tokens in -> entering the LM (layer-averaged); speed-up: measured TTFT vs {report.reference}; "
        "implied: what the decoder FLOPs predict; KV: cache at the end"
    ))  # fmt: skip
    columns = ["configuration", "visual (avg)", "TTFT ms", "speed-up", "implied", "decode tok/s", "KV MiB"]
    if wide:
        columns += ["TTFT p10-p90", "speed-up p10-p90", "prefill GFLOPs", "end-to-end s", "KV MiB prefill",
                    "peak MiB", "trim overhead ms"]  # fmt: skip
    for column in columns:
        table.add_column(cell(column), justify="left" if column == "configuration" else "right", no_wrap=column == "configuration")
    for entry in report_rows(report):
        values = [
            cell(entry["configuration"]), f"{entry['visual_before']}->{entry['visual_input']} ({entry['visual_layer_averaged']:.1f})",
            f"{entry['ttft_ms']:.1f}",
            f"{entry['speedup']:.2f}x", f"{entry['flops_implied_speedup']:.2f}x", f"{entry['decode_tokens_per_s']:.1f}",
            f"{entry['kv_mib_end']:.1f}",
        ]  # fmt: skip
        if wide:
            values += [
                f"{entry['ttft_ms_p10']:.1f}-{entry['ttft_ms_p90']:.1f}",
                f"{entry['speedup_p10']:.2f}-{entry['speedup_p90']:.2f}", f"{entry['prefill_gflops']:.2f}",
                f"{entry['end_to_end_s']:.2f}", f"{entry['kv_mib_after_prefill']:.1f}",
                "-" if entry["peak_mib"] is None else f"{entry['peak_mib']:.1f}",
                "-" if entry["trim_overhead_ms"] is None else f"{entry['trim_overhead_ms']:.1f}",
            ]  # fmt: skip
        table.add_row(*values)
    return table


def rows_csv(rows: list[dict]) -> str:
    import csv
    import io

    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def rows_markdown(rows: list[dict], title: str) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))

    def text(value) -> str:
        if value is None:
            return "-"
        return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "\\|")

    lines = [title, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(text(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


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


def runs_warning(report) -> str | None:
    """A warning when too few runs were measured for the spread to separate profiles."""
    runs = report.settings["runs"]
    if runs < MIN_RUNS_TO_COMPARE:
        return (f"only {runs} run{'s' * (runs != 1)} per profile: differences within the p10-p90 spread are noise "
                f"(use --runs {max(10, MIN_RUNS_TO_COMPARE)} or more to compare profiles)")  # fmt: skip
    return None


def plot_report(report, path: str | Path, *, fmt: str = "png") -> None:
    """Measured (median, p10-p90) vs FLOPs-implied TTFT speed-up, and KV memory at the end, per configuration."""
    names = [row.name for row in report.rows]
    x = list(range(len(names)))
    settings = report.settings
    with _figure(path, fmt, ncols=2, figsize=(12, 4.6)) as (figure, (left, right)):
        stats = [report.speedup(n) for n in names]
        measured = [s.median for s in stats]
        spread = [[s.median - s.p10 for s in stats], [s.p90 - s.median for s in stats]]
        implied = [report.flops_speedup(n) for n in names]
        left.bar([i - 0.2 for i in x], measured, width=0.4, yerr=spread, capsize=3, label="measured (median, p10-p90)")
        left.bar([i + 0.2 for i in x], implied, width=0.4, label="decoder-FLOPs-implied")
        left.set_xticks(x, names, rotation=30, ha="right")
        left.axhline(1.0, color="gray", linewidth=0.8)
        left.set_ylabel(f"TTFT speed-up vs {report.reference} (x)")
        left.set_title("time to first token")
        left.legend(fontsize=8)
        right.bar(x, [row.kv_bytes_end / 2**20 for row in report.rows], color="tab:orange")
        right.set_xticks(x, names, rotation=30, ha="right")
        right.set_ylabel("MiB")
        right.set_title(f"KV cache after {settings['max_new_tokens']} tokens")
        title = (f"{_model_line(report.provenance)}, batch {settings['batch_size']}, "
                 f"median of {settings['runs']} runs")  # fmt: skip
        if warning := runs_warning(report):
            title += f"\n{warning}"
        figure.suptitle(title, fontsize=10)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _score(report, value: float) -> str:
    """A headline score: a percentage, or MME's summed points."""
    return f"{value:.1f}" if report.benchmark == "mme" else f"{value:.1%}"


def eval_rows(report) -> list[dict]:
    """Every column of the eval report, one dict per profile (table, CSV, markdown and JSON)."""
    rows = []
    for row in report.rows:
        entry = {
            "profile": row.name,
            report.score_name: row.accuracy,
            "retention": report.retention(row),
            "agreement": report.agreement(row),
            "visual_input": report.mean(row, "visual_input"),
            "visual_layer_averaged": report.mean(row, "layer_averaged"),
            "visual_after_pruning": report.mean(row, "after_pruning"),
            "prefill_flops_ratio": report.flops_ratio(row),
            "seconds": row.seconds,
            "resumed_samples": row.resumed,
        }
        for name, value in (row.summary.metrics if row.summary else {}).items():
            entry.setdefault(name, value)
        for category, values in (row.summary.categories if row.summary else {}).items():
            for name, value in values.items():
                if name != "samples":
                    entry[f"{category}/{name}"] = value
        rows.append(entry)
    return rows


def eval_table(report, *, wide: bool = False) -> Table:
    """Fits 80 columns by default: profile, score, retention, agreement, visual tokens, FLOPs ratio;
    --wide adds the layer-averaged budgets, time and every metric per category."""
    title = f"{report.dataset}: {report.samples} samples, reference: {report.reference.name}"
    if report.skipped:
        title += f" ({len(report.skipped)} skipped)"
    table = Table(title=cell(title))
    columns = ["profile", report.score_name, "retention", "agreement", "visual in (layer-avg)", "FLOPs"]
    if wide:
        columns += ["after pruning", "time s"]
    extra = [k for k in eval_rows(report)[0] if "/" in k or k not in (
        "profile", report.score_name, "retention", "agreement", "visual_input", "visual_layer_averaged",
        "visual_after_pruning", "prefill_flops_ratio", "seconds", "resumed_samples")] if wide else []  # fmt: skip
    for column in columns + extra:
        table.add_column(cell(column), justify="left" if column == "profile" else "right", no_wrap=column == "profile")
    for row, entry in zip(report.rows, eval_rows(report)):
        values = [
            cell(row.name), _score(report, row.accuracy), _share(report.retention(row)), f"{report.agreement(row):.1%}",
            f"{entry['visual_input']:.1f} ({entry['visual_layer_averaged']:.1f})", f"{entry['prefill_flops_ratio']:.3f}",
        ]  # fmt: skip
        if wide:
            resumed = f" ({row.resumed} resumed)" if row.resumed else ""  # their time was an earlier run's
            values += [f"{entry['visual_after_pruning']:.1f}", f"{row.seconds:.1f}{resumed}"]
            values += [f"{entry[k]:.3f}" if isinstance(entry.get(k), float) else str(entry.get(k, "-")) for k in extra]
        table.add_row(*values)
    return table


def eval_csv(report) -> str:
    return rows_csv(eval_rows(report))


def eval_markdown(report) -> str:
    return rows_markdown(eval_rows(report), f"{report.dataset}, {report.samples} samples, reference {report.reference.name}")


def eval_document(report) -> dict:
    rows = []
    for row, entry in zip(report.rows, eval_rows(report)):
        rows.append(
            {
                "profile": row.name,
                "profile_sha256": row.sha256,
                "score": row.accuracy,
                "score_name": report.score_name,
                "accuracy": row.accuracy,
                "metrics": row.summary.metrics if row.summary else {},
                "categories": row.summary.categories if row.summary else {},
                "retention": report.retention(row),
                "agreement": report.agreement(row),
                "visual_tokens": {"input": entry["visual_input"], "layer_averaged": entry["visual_layer_averaged"]},
                # MustDrop's and SparseVLM's convention: each layer counted after its own pruning
                "visual_layer_averaged_after_pruning": entry["visual_after_pruning"],
                "prefill_flops_ratio": report.flops_ratio(row),
                "seconds": row.seconds,  # answering time in this process only
                "resumed_samples": row.resumed,  # answered by an earlier run in --output-dir
                "predictions": row.predictions,
                "correct": row.correct,
                "ids": [r.id for r in row.records],
            }
        )
    return {
        "dataset": report.dataset,
        "benchmark": report.benchmark,
        "dataset_sha256": report.dataset_sha256,
        "samples": report.samples,
        "skipped": report.skipped,
        "reference": report.reference.name,
        "settings": report.settings,
        "flops_formula": FLOPS_FORMULA,
        "versions": report.provenance,
        "profiles": rows,
    }


def pareto_frontier(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (less or equal cost, more or equal accuracy, one
    of them strictly), sorted by cost."""
    frontier = []
    for i, (cost, accuracy) in enumerate(points):
        dominated = any(
            (c <= cost and a >= accuracy) and (c < cost or a > accuracy) for j, (c, a) in enumerate(points) if j != i
        )
        if not dominated:
            frontier.append(i)
    return sorted(frontier, key=lambda i: points[i])


def plot_eval(report, path: str | Path, *, fmt: str = "png") -> None:
    """Accuracy against the prefill FLOPs ratio, one point per profile, the Pareto frontier drawn."""
    rows = report.rows
    scale = 1 if report.benchmark == "mme" else 100
    points = [(report.flops_ratio(row), row.accuracy * scale) for row in rows]
    frontier = pareto_frontier(points)
    with _figure(path, fmt, figsize=(7, 4.8)) as (_, axis):
        axis.scatter([p[0] for p in points], [p[1] for p in points], color="tab:blue", zorder=3)
        axis.plot([points[i][0] for i in frontier], [points[i][1] for i in frontier], color="tab:green",
                  linestyle="--", zorder=2, label="Pareto frontier")  # fmt: skip
        # Labels alternate above and below and fan out, so close points do not print on each other.
        order = sorted(range(len(rows)), key=lambda i: points[i])
        for rank, i in enumerate(order):
            offset = (6, 8 + 10 * (rank % 3)) if rank % 2 == 0 else (6, -14 - 10 * (rank % 3))
            axis.annotate(rows[i].name, points[i], textcoords="offset points", xytext=offset, fontsize=8,
                          arrowprops=dict(arrowstyle="-", color="gray", linewidth=0.5))  # fmt: skip
        axis.set_xlabel("decoder prefill FLOPs (ratio to the reference)")
        axis.set_ylabel(report.score_name if report.benchmark == "mme" else f"{report.score_name} (%)")
        axis.set_title(f"{report.dataset}\n{_model_line(report.provenance)}", fontsize=9)
        axis.legend(fontsize=8)

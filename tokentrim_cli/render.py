"""Everything the user sees: Rich tables, summary lines and JSON documents. Formatting only."""

from __future__ import annotations

import json
from dataclasses import asdict

from rich.table import Table


def visual_accounting_line(result) -> str:
    """`cat.jpg 1024x768 -> 576 visual tokens -> 288 kept (layer-avg 432.0)` (cli.md)."""
    images = ", ".join(f"{i['source']} {i['width']}x{i['height']}" for i in result.images) or "no image"
    visual = result.visual_tokens
    kept = f"{visual.input} kept" if visual.input != visual.before_trimming else "all kept"
    return f"{images} -> {visual.before_trimming} visual tokens -> {kept} (layer-avg {visual.layer_averaged:.1f})"


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

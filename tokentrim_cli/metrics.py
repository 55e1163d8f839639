"""Measurements and the arithmetic around them: FLOPs, KV bytes, both budgets, statistics, provenance.

One FLOPs formula everywhere (cli.md, FastV's convention): a decoder layer with n live tokens costs
4nd^2 + 2n^2d + 2ndm multiply-accumulates (d hidden size, m MLP size). Prefill FLOPs sum it over
layers with each layer's own n; ratios between profiles are what the reports use.
"""

from __future__ import annotations

import datetime
import platform
import statistics
import time
from dataclasses import dataclass

FLOPS_FORMULA = "FastV convention: sum over decoder layers of 4nd^2 + 2n^2d + 2ndm (n = that layer's live tokens)"


def layer_flops(n: int, *, hidden: int, intermediate: int) -> int:
    return 4 * n * hidden**2 + 2 * n * n * hidden + 2 * n * hidden * intermediate


def prefill_flops(tokens_per_layer: list[int], *, hidden: int, intermediate: int) -> int:
    """Decoder prefill FLOPs of one sample, from the live tokens entering each layer."""
    return sum(layer_flops(n, hidden=hidden, intermediate=intermediate) for n in tokens_per_layer)


def kv_bytes(entries_per_layer: list[int], *, kv_heads: int, head_dim: int, bytes_per_element: int, batch: int = 1) -> int:
    """Keys and values: 2 x sum over layers of cached entries x kv_heads x head_dim x bytes x batch."""
    return 2 * sum(entries_per_layer) * kv_heads * head_dim * bytes_per_element * batch


def layer_averaged_budget(visual_per_layer: list[int]) -> float:
    """Visual tokens averaged over all decoder layers (SparseVLM / MustDrop convention, methods.md §0.2)."""
    return sum(visual_per_layer) / len(visual_per_layer)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (q in [0, 100]), as numpy's default."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Stats:
    median: float
    p10: float
    p90: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        return cls(statistics.median(values), percentile(values, 10), percentile(values, 90), len(values))


class Timer:
    """Wall-clock timer that synchronises the device first, so queued GPU work is counted."""

    def __init__(self, device: str) -> None:
        self.device = device

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)

    def __enter__(self) -> Timer:
        self._sync()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self.start


def provenance(info=None) -> dict:
    """Versions, device and date: what a number needs to be reproduced."""
    import importlib.metadata as md

    import torch

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    if info is not None and info.device.startswith("cuda"):
        device_name = torch.cuda.get_device_name(info.device)
    else:
        device_name = f"CPU: {_cpu_model()}, {torch.get_num_threads()} threads"
    out = {
        "tool_version": version("tokentrim-cli"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "bitsandbytes": version("bitsandbytes"),
        "device_name": device_name,
    }
    if info is not None:
        out["model"] = info.to_dict()
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

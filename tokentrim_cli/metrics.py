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
    """Linear-interpolation percentile (q in [0, 100]), numpy's default: the standard library's
    inclusive quantiles."""
    if not values:
        raise ValueError("percentile of no values")
    if len(values) == 1:
        return float(values[0])
    if q <= 0 or q >= 100:
        return float(min(values) if q <= 0 else max(values))
    cuts = statistics.quantiles(values, n=100, method="inclusive")  # cuts[k-1] is the k-th percentile
    if float(q).is_integer():
        return cuts[int(q) - 1]
    low, high = int(q), int(q) + 1
    below = cuts[low - 1] if low >= 1 else min(values)
    above = cuts[high - 1] if high <= 99 else max(values)
    return below + (above - below) * (q - low)


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
        devices = info.device.split(",")
        device_name = " + ".join(torch.cuda.get_device_name(d) for d in devices if d.startswith("cuda"))
    else:
        device_name = f"CPU: {cpu_model()}, {torch.get_num_threads()} threads"
    out = {
        "tool_version": version("tokentrim-cli"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "bitsandbytes": version("bitsandbytes"),
        "device_name": device_name,
        # the vector unit torch's CPU kernels use (AVX2, AVX512, ...): CPU timings, and bf16's above
        # all, differ by it between machines that print the same model name
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if info is not None:
        out["model"] = info.to_dict()
    return out


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo): platform.processor() says only "x86_64"."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---- measuring profiles side by side (`tokentrim profile`) ---------------------------------------


@dataclass
class Measurement:
    """One configuration's raw samples and accounting. `profile` is None for stock transformers."""

    name: str
    profile_sha256: str | None
    visual_before: int = 0
    visual_input: int = 0
    visual_layer_averaged: float = 0.0
    prefill_flops: int = 0  # decoder prefill, whole batch
    kv_bytes_after_prefill: int = 0  # from the trace's per-layer entries (formula)
    kv_bytes_end: int = 0  # measured from the cache tensors once the answer is done
    kv_bytes_end_formula: int = 0  # the same from the per-layer entry counts
    kv_entries_end: list[int] | None = None
    peak_memory_bytes: int | None = None  # CUDA max allocated in the last run; None on CPU
    overhead_s: dict | None = None  # scoring and gathering, from one instrumented run
    ttft_s: list[float] | None = None
    decode_tokens_per_s: list[float] | None = None  # all sequences of the batch together
    end_to_end_s: list[float] | None = None


@dataclass
class Report:
    rows: list[Measurement]
    reference: str  # the row speed-ups are relative to
    settings: dict
    provenance: dict
    process_peak_rss_bytes: int

    def row(self, name: str) -> Measurement:
        return next(r for r in self.rows if r.name == name)

    def speedup(self, name: str) -> Stats:
        """TTFT speed-up against the reference, from run-by-run ratios (runs are interleaved)."""
        reference = self.row(self.reference).ttft_s
        return Stats.of([r / t for r, t in zip(reference, self.row(name).ttft_s)])

    def flops_speedup(self, name: str) -> float:
        return self.row(self.reference).prefill_flops / self.row(name).prefill_flops


def batched(inputs: dict, batch_size: int) -> dict:
    """The same prompt and images `batch_size` times (sample-major, as the processor orders images)."""
    import torch

    return {k: torch.cat([v] * batch_size) for k, v in inputs.items()}


def measure(
    loaded,
    entries: list[tuple[str, object]],
    *,
    inputs: dict,
    runs: int,
    warmup: int = 1,
    max_new_tokens: int = 64,
    reference: str,
    progress=None,
) -> Report:
    """Measure every (name, Profile or None for stock) on the same inputs, interleaved run by run."""
    rows = {name: Measurement(name, getattr(profile, "sha256", None), ttft_s=[], decode_tokens_per_s=[], end_to_end_s=[])
            for name, profile in entries}  # fmt: skip
    total = (warmup + runs) * len(entries)
    done = 0
    for run in range(warmup + runs):
        # Interleaved, every other round reversed (A B C, C B A, ...): drift and position effects
        # hit every configuration alike.
        for name, profile in entries if run % 2 == 0 else list(reversed(entries)):
            sample = _one_run(loaded, profile, inputs, max_new_tokens)
            if run >= warmup:
                rows[name].ttft_s.append(sample["ttft_s"])
                rows[name].decode_tokens_per_s.append(sample["decode_tokens_per_s"])
                rows[name].end_to_end_s.append(sample["end_to_end_s"])
                _account(rows[name], loaded, sample, inputs)
            done += 1
            if progress:
                progress(done, total)
    for name, profile in entries:
        if profile is not None:
            rows[name].overhead_s = _one_run(loaded, profile, inputs, max_new_tokens, overhead=True)["overhead_s"]
    import resource

    return Report(
        rows=list(rows.values()),
        reference=reference,
        settings={"runs": runs, "warmup": warmup, "max_new_tokens": max_new_tokens,
                  "batch_size": int(inputs["input_ids"].shape[0]), "prompt_tokens": int(inputs["input_ids"].shape[1])},  # fmt: skip
        provenance=provenance(loaded.info),
        process_peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )


def _one_run(loaded, profile, inputs: dict, max_new_tokens: int, *, overhead: bool = False) -> dict:
    """One timed answer of exactly `max_new_tokens` tokens (EOS ignored), through the one generation path."""
    import torch

    from .generation import GenerationSettings, run

    device = loaded.info.device.split(",")[0]
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, ignore_eos=True)
    result = run(loaded, profile, inputs, settings, measure_overhead=overhead)
    return {
        "ttft_s": result.timings.ttft_s,
        "end_to_end_s": result.timings.total_s,
        "decode_tokens_per_s": result.timings.decode_tokens_per_s,
        "trace": result.trace,
        "peak": torch.cuda.max_memory_allocated(device) if cuda else None,
        "overhead_s": result.timings.overhead_s,
    }


def _account(row: Measurement, loaded, sample: dict, inputs: dict) -> None:
    text = loaded.model.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    trace = sample["trace"]
    batch = inputs["input_ids"].shape[0]
    kv = dict(kv_heads=text.num_key_value_heads, head_dim=head_dim, bytes_per_element=loaded.model.dtype.itemsize, batch=batch)
    row.visual_before = trace.visual_before[0]
    row.visual_input = trace.visual_input[0]
    row.visual_layer_averaged = trace.layer_averaged[0]
    row.kv_bytes_after_prefill = kv_bytes(trace.kv_after_prefill, **kv)
    row.prefill_flops = batch * prefill_flops(trace.tokens_per_layer[0], hidden=text.hidden_size, intermediate=text.intermediate_size)
    row.kv_entries_end = trace.kv_end
    row.kv_bytes_end = trace.kv_bytes_end
    row.kv_bytes_end_formula = kv_bytes(trace.kv_end, **kv)
    row.peak_memory_bytes = sample["peak"]


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's failure (a plain RuntimeError)."""
    if type(e).__name__ == "OutOfMemoryError" or isinstance(e, MemoryError):
        return True
    return isinstance(e, RuntimeError) and "can't allocate memory" in str(e)


def available_memory() -> int:
    """Bytes the process can still allocate on the host (psutil's "available")."""
    import psutil

    return int(psutil.virtual_memory().available)


def generation_bytes(loaded, inputs: dict, *, max_new_tokens: int) -> int:
    """A generous estimate of the memory one sequence needs beyond the weights: its KV cache at the
    end of the answer, the prefill's largest activations (the MLP's, the attention scores if eager,
    the logits) and the vision tower's; x1.5 for the allocator's slack."""
    config = loaded.model.config
    text, vision = config.text_config, config.vision_config
    element = loaded.model.dtype.itemsize
    tokens = int(inputs["input_ids"].shape[1]) + max_new_tokens
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * tokens * element
    prefill = tokens * (4 * text.hidden_size + 3 * text.intermediate_size) * element
    if getattr(text, "_attn_implementation", None) == "eager":
        prefill += text.num_attention_heads * tokens * tokens * element
    logits = text.vocab_size * 4 * 2
    pixels = inputs.get("pixel_values")
    images = 0 if pixels is None else int(pixels.shape[0]) * (pixels.shape[1] if pixels.ndim == 5 else 1)
    patches = 0 if pixels is None else (pixels.shape[-2] // vision.patch_size) * (pixels.shape[-1] // vision.patch_size) + 1
    # CLIP and SigLIP state the MLP's width; DINOv2 states a ratio of the hidden size.
    mlp = getattr(vision, "intermediate_size", None) or int(vision.hidden_size * getattr(vision, "mlp_ratio", 4))
    vision_bytes = images * patches * (vision.hidden_size * 6 + mlp) * element
    return int(1.5 * (kv + prefill + logits + vision_bytes))


def largest_batch_by_estimate(loaded, inputs: dict, *, max_new_tokens: int) -> int:
    """The largest batch of copies of `inputs` whose estimated memory fits what is available."""
    return max(0, available_memory() // max(1, generation_bytes(loaded, inputs, max_new_tokens=max_new_tokens)))


def largest_fitting_batch(loaded, inputs: dict, *, below: int, max_new_tokens: int) -> int:
    """The largest batch size under `below` that completes one stock answer, halving from `below`
    (a handful of tries); 0 if not even one sequence fits."""
    import torch

    size = below // 2
    while size >= 1:
        try:
            _one_run(loaded, None, batched(inputs, size), max_new_tokens)
            return size
        except Exception as e:  # noqa: BLE001 - only out-of-memory is expected here
            if not is_out_of_memory(e):
                raise
            if loaded.info.device.startswith("cuda"):
                torch.cuda.empty_cache()
            size //= 2
    return 0
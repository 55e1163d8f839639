"""Per-token decode time of stock transformers, the baseline profile and every method, interleaved.

A benchmark, not a test. For each model shape and batch size, every configuration generates the
same answer length (EOS ignored) through `tokentrim_cli.generation.run` (stock: no engine at all),
in interleaved rounds (A B C ..., then ... C B A) after warm-ups; the decode time per token is the
time from the first generated token to the last, divided by the tokens after the first. Medians
with p10-p90 spread, raw samples and provenance go to JSON.

    python benchmarks/decode_bench.py                                  # random:tiny and random:cpu-576
    python benchmarks/decode_bench.py --shapes tiny --batches 1 --rounds 31 --tokens 64
    python benchmarks/decode_bench.py --model random:llava-1.5-7b --device cuda --dtype float16 \
        --output benchmarks/results/decode-gpu.json

On `random:tiny` (4 layers, hidden 64) the per-layer bookkeeping of the engine dominates the
decode step, as kernel launches do on a GPU: it is where engine overhead shows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tokentrim_cli.generation import prepare_inputs  # noqa: E402
from tokentrim_cli.inputs import LoadedImage  # noqa: E402
from tokentrim_cli.metrics import Stats, provenance  # noqa: E402
from tokentrim_cli.model import load_llava  # noqa: E402
from tokentrim_cli.profiles import load_profile  # noqa: E402

PROMPT = "Describe this picture in detail."
DEFAULT_PROFILES = ("baseline", "fastv", "vtw", "st3", "mustdrop", "visionzip", "dart", "divprune", "cdpruner", "pyramiddrop")


def scaled_profiles(names: list[str], num_layers: int) -> dict:
    """name -> Profile (None = stock), shipped profiles whose layers a shallow model lacks scaled
    down to its depth (the same share of the depth), so every method runs on every shape."""
    import dataclasses

    from tokentrim_cli.profiles import check_fits

    chosen = {"stock": None}
    for name in names:
        try:
            profile = load_profile(name)
        except Exception:  # noqa: BLE001 - a method this checkout does not have
            continue
        try:
            check_fits(profile, model_id="bench", model_type="llava", num_layers=num_layers)
        except Exception:  # noqa: BLE001 - scale the depth-dependent parameters
            params = profile.params
            scaled = {}
            for field in dataclasses.fields(params):
                value = getattr(params, field.name)
                if "vision" in field.name:
                    continue
                if ("layer" in field.name or field.name == "stages") and isinstance(value, int):
                    scaled[field.name] = max(1, min(num_layers - 1, round(value * num_layers / 32)))
                elif ("layers" in field.name or field.name == "stages") and isinstance(value, tuple):
                    low = 1 if field.name == "stages" else 0  # a stage ends after at least one layer
                    scaled[field.name] = tuple(sorted({max(low, min(num_layers - 2, round(v * num_layers / 32))) for v in value}))
            profile = dataclasses.replace(profile, params=dataclasses.replace(params, **scaled))
            check_fits(profile, model_id="bench", model_type="llava", num_layers=num_layers)
        chosen[name] = profile
    return chosen


def decode_seconds(loaded, profile, inputs: dict, tokens: int) -> float:
    """Seconds from the first generated token to the last, for one answer of `tokens` tokens."""
    try:
        from tokentrim_cli.generation import GenerationSettings, run
    except ImportError:  # a checkout from before the one generation path ("before" numbers)
        from tokentrim_cli.metrics import _one_run

        sample = _one_run(loaded, profile, inputs, tokens)
        return sample["end_to_end_s"] - sample["ttft_s"]
    result = run(loaded, profile, inputs, GenerationSettings(max_new_tokens=tokens, ignore_eos=True))
    return result.timings.total_s - result.timings.ttft_s


def measure(loaded, configurations: dict, inputs: dict, *, rounds: int, warmup: int, tokens: int) -> dict:
    samples = {name: [] for name in configurations}
    order = list(configurations)
    for round_ in range(warmup + rounds):
        for name in order if round_ % 2 == 0 else list(reversed(order)):
            seconds = decode_seconds(loaded, configurations[name], inputs, tokens)
            if round_ >= warmup:
                samples[name].append(seconds / (tokens - 1))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["tiny", "cpu-576"])
    parser.add_argument("--model", default=None, help="one model instead of --shapes (e.g. random:llava-1.5-7b)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--profiles", nargs="+", default=list(DEFAULT_PROFILES))
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds (default: 21 tiny, 7 otherwise)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=None, help="answer length (default: 48 tiny, 16 otherwise)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "decode-cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = LoadedImage("noise.png", Image.effect_noise((336, 336), 60).convert("RGB"))
    models = [args.model] if args.model else [f"random:{shape}" for shape in args.shapes]
    results = {"provenance": None, "settings": vars(args) | {"output": str(args.output)}, "runs": []}
    for model_id in models:
        loaded = load_llava(model_id, device=args.device, dtype=args.dtype)
        results["provenance"] = provenance(loaded.info)
        tiny = loaded.info.num_layers <= 4
        rounds = args.rounds or (21 if tiny else 7)
        tokens = args.tokens or (48 if tiny else 16)
        configurations = scaled_profiles(args.profiles, loaded.info.num_layers)
        single = prepare_inputs(loaded, [image], PROMPT)
        for batch in args.batches:
            inputs = {k: torch.cat([v] * batch) for k, v in single.items()}
            started = time.time()
            samples = measure(loaded, configurations, inputs, rounds=rounds, warmup=args.warmup, tokens=tokens)
            stock = samples["stock"]
            rows = []
            for name, values in samples.items():
                stats = Stats.of(values)
                ratios = [v / s for v, s in zip(values, stock)]  # run-by-run: interleaving cancels drift
                rows.append({"configuration": name, "ms_per_token": {k: v * 1e3 for k, v in vars(stats).items() if k != "n"},
                             "vs_stock": {"median": statistics.median(ratios), "p10": Stats.of(ratios).p10, "p90": Stats.of(ratios).p90},
                             "raw_s": values})  # fmt: skip
                print(f"{model_id} batch {batch} {name:12s} {stats.median * 1e3:8.2f} ms/token "
                      f"({stats.p10 * 1e3:.2f}-{stats.p90 * 1e3:.2f})  x{statistics.median(ratios):.3f} of stock", flush=True)
            results["runs"].append({"model": model_id, "batch": batch, "rounds": rounds, "tokens": tokens,
                                    "prompt_tokens": int(single["input_ids"].shape[1]),
                                    "minutes": (time.time() - started) / 60, "rows": rows})  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

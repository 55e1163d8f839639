"""Prefill time and KV bytes of stock transformers and of every trimming method, in one run.

A benchmark, not a test. Configurations run interleaved (A B C D, A B C D, ...) after warm-ups;
the script prints the FLOPs-implied prefill ratio beside the measured one, then KV bytes after
prefill and after a fixed-length answer with decode speed. Raw samples and provenance go to JSON.

    python benchmarks/prefill_bench.py                       # random:cpu-576, fp32, CPU
    python benchmarks/prefill_bench.py --model random:llava-1.5-7b --device cuda --dtype float16 \
        --output benchmarks/results/prefill-gpu.json

"Decoder prefill" is one forward of the language model over the whole prompt (image features
computed beforehand, through the method's vision stage when it has one), with a KV cache and
last-position logits, as generate() does: the part the FLOPs formula counts. "Full prefill" adds
the vision tower and projector. Methods whose reference settings name layers of a 32-layer model
are scaled to the model's depth (see `configurations`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tokentrim_cli.engine import Trimmer  # noqa: E402
from tokentrim_cli.generation import prepare_inputs  # noqa: E402
from tokentrim_cli.inputs import LoadedImage  # noqa: E402
from tokentrim_cli.methods import ST3, FastV, MustDrop, NoTrimming, VTW  # noqa: E402
from tokentrim_cli.methods.fastv import FastVConfig  # noqa: E402
from tokentrim_cli.methods.mustdrop import MustDropConfig  # noqa: E402
from tokentrim_cli.methods.st3 import ST3Config  # noqa: E402
from tokentrim_cli.methods.vtw import VTWConfig  # noqa: E402
from tokentrim_cli.metrics import FLOPS_FORMULA, Stats, Timer, prefill_flops, provenance  # noqa: E402
from tokentrim_cli.model import load_llava  # noqa: E402

PROMPT = "Describe this picture in detail: the objects, their colours and where they are."


NEW_METHOD_PROFILES = ("visionzip-64", "dart-64", "divprune-64", "cdpruner-64", "pyramiddrop-64", "random-64")


def configurations(num_layers: int) -> dict:
    """name -> (trimming method, position policy); (None, None) = stock transformers, no engine.

    The seed methods with their reference settings, then the shipped 64-token profiles of the
    newer methods (layers scaled to the depth by decode_bench.scaled_profiles), each with its own
    position policy."""
    from decode_bench import scaled_profiles

    def scaled(layer: int) -> int:  # a layer of LLaVA-1.5-7B's 32, at the same depth share here
        return max(1, round(layer * num_layers / 32))

    vtw_layer = scaled(16)
    filter_layers = tuple(sorted({min(scaled(layer), num_layers - 2) for layer in (2, 6, 10, 14)}))
    seeds = {
        "stock": None,
        "baseline": NoTrimming(NoTrimming.Config()),
        f"vtw(K={vtw_layer})": VTW(VTWConfig(layer=vtw_layer)),
        "fastv(K=2,R=0.5)": FastV(FastVConfig(layer=2, drop_ratio=0.5)),
        "fastv(K=2,R=0.75)": FastV(FastVConfig(layer=2, drop_ratio=0.75)),
        "st3(default)": ST3(ST3Config()),
        "st3(no VTA)": ST3(ST3Config(decay="none")),
        f"mustdrop-192(filters {','.join(map(str, filter_layers))})": MustDrop(MustDropConfig(filter_layers=filter_layers)),
        f"mustdrop-64(filters {','.join(map(str, filter_layers))})": MustDrop(
            MustDropConfig(filter_layers=filter_layers, global_threshold=0.011, individual_threshold=0.01)
        ),
    }
    chosen = {name: (method, None if method is None else "keep") for name, method in seeds.items()}
    for name, profile in scaled_profiles(list(NEW_METHOD_PROFILES), num_layers).items():
        if profile is not None:
            chosen[name] = (profile.build_method(), profile.position_policy)
    return chosen


def decoder_prefill(model, inputs, image_features, method, policy, timer):
    """One timed decoder prefill; returns (seconds, cache)."""
    kwargs = dict(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        use_cache=True,
        logits_to_keep=1,
    )
    with torch.inference_mode():
        if method is None:
            with timer:
                out = model(**kwargs, mm_encoder_outputs={"image": image_features})
            return timer.seconds, out.past_key_values
        with Trimmer(model, method, position_policy=policy) as trimmer:
            features = image_features
            if method.has_vision_stage():  # untimed, like the stock features above
                features = model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True)
            with timer:
                model(**kwargs, mm_encoder_outputs={"image": features})
        return timer.seconds, trimmer.last_cache


def answer(model, inputs, method, policy, new_tokens: int) -> dict:
    """A fixed-length answer (EOS ignored): seconds, KV bytes after prefill and at the end."""
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, return_dict_in_generate=True)
    started = time.perf_counter()
    with torch.inference_mode():
        if method is None:
            out = model.generate(**inputs, **kwargs)
            cache = out.past_key_values
            seconds = time.perf_counter() - started
            end_bytes = sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers)
            return {"seconds": seconds, "kv_bytes_end": end_bytes, "kv_entries_end": stored_lengths(cache)}
        with Trimmer(model, method, position_policy=policy) as trimmer:
            model.generate(**inputs, **kwargs)
        seconds = time.perf_counter() - started
    cache = trimmer.last_cache
    return {"seconds": seconds, "kv_bytes_end": cache.nbytes(), "kv_entries_end": cache.lengths()}


def full_prefill(model, inputs, method, policy, timer) -> float:
    with torch.inference_mode():
        if method is None:
            with timer:
                model(**inputs, use_cache=True, logits_to_keep=1)
        else:
            with Trimmer(model, method, position_policy=policy), timer:
                model(**inputs, use_cache=True, logits_to_keep=1)
    return timer.seconds


def stored_lengths(cache) -> list[int]:
    return [layer.keys.shape[2] for layer in cache.layers]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:cpu-576")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=128, help="answer length for the decode phase (0: skip)")
    parser.add_argument("--decode-runs", type=int, default=2)
    parser.add_argument("--only", nargs="+", default=None, help="these configurations (and stock, baseline)")
    parser.add_argument("--output", default="benchmarks/results/prefill-cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_llava(args.model, device=args.device, dtype=args.dtype)
    model, info = loaded.model, loaded.info
    size = model.config.vision_config.image_size
    image = LoadedImage("synthetic.png", Image.effect_noise((size, size), 60).convert("RGB"))
    inputs = prepare_inputs(loaded, [image], PROMPT)
    with torch.inference_mode():
        image_features = model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True)
    configs = configurations(info.num_layers)
    if args.only:
        unknown = set(args.only) - set(configs)
        if unknown:
            parser.error(f"unknown configurations {sorted(unknown)}; known: {list(configs)}")
        configs = {name: configs[name] for name in configs if name in args.only or name in ("stock", "baseline")}
    timer = Timer(info.device)
    decoder_s = {name: [] for name in configs}
    full_s = {name: [] for name in configs}
    caches = {}
    for run in range(args.warmup + args.runs):
        # Interleaved, and every other round in reverse order (A B C, C B A, ...), so drift and
        # position effects hit every configuration alike.
        order = list(configs.items()) if run % 2 == 0 else list(reversed(configs.items()))
        for name, (method, policy) in order:
            seconds, cache = decoder_prefill(model, inputs, image_features, method, policy, timer)
            full = full_prefill(model, inputs, method, policy, timer)
            if run >= args.warmup:
                decoder_s[name].append(seconds)
                full_s[name].append(full)
            caches[name] = cache
        print(f"run {run + 1}/{args.warmup + args.runs}{' (warm-up)' if run < args.warmup else ''}", file=sys.stderr)

    answers = {name: [] for name in configs}
    for run in range(1 + args.decode_runs if args.new_tokens else 0):
        order = list(configs.items()) if run % 2 == 0 else list(reversed(configs.items()))
        for name, (method, policy) in order:
            result = answer(model, inputs, method, policy, args.new_tokens)
            if run:  # the first round warms up
                answers[name].append(result)
        print(f"decode run {run + 1}/{1 + args.decode_runs}{' (warm-up)' if run == 0 else ''}", file=sys.stderr)

    text = model.config.text_config
    flops = {}
    for name, cache in caches.items():
        tokens = cache.meta.prefills[-1].tokens_per_layer[0] if name != "stock" else stored_lengths(cache)
        flops[name] = prefill_flops(tokens, hidden=text.hidden_size, intermediate=text.intermediate_size)
    results = []
    base = Stats.of(decoder_s["baseline"]).median
    for name in configs:
        stats, full = Stats.of(decoder_s[name]), Stats.of(full_s[name])
        cache = caches[name]
        lengths = stored_lengths(cache)
        kv = sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers)
        results.append(
            {
                "config": name,
                "decoder_prefill_s": stats.__dict__,
                "full_prefill_s": full.__dict__,
                "measured_ratio_vs_baseline": stats.median / base,
                "flops_implied_ratio_vs_baseline": flops[name] / flops["baseline"],
                "decoder_prefill_flops": flops[name],
                "kv_entries_per_layer": lengths,
                "kv_bytes": kv,
                "visual_per_layer": cache.meta.prefills[-1].visual_per_layer[0] if name != "stock" else None,
                "answer_s": Stats.of([a["seconds"] for a in answers[name]]).__dict__ if answers[name] else None,
                "kv_bytes_after_answer": answers[name][-1]["kv_bytes_end"] if answers[name] else None,
                "kv_entries_after_answer": answers[name][-1]["kv_entries_end"] if answers[name] else None,
                "raw_answer_s": [a["seconds"] for a in answers[name]],
                "raw_decoder_prefill_s": decoder_s[name],
                "raw_full_prefill_s": full_s[name],
            }
        )
    stock = next(r for r in results if r["config"] == "stock")
    baseline = next(r for r in results if r["config"] == "baseline")
    overhead = baseline["decoder_prefill_s"]["median"] / stock["decoder_prefill_s"]["median"] - 1
    document = {
        "benchmark": "prefill_bench",
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "model": args.model,
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "visual_tokens": int((inputs["input_ids"] == model.config.image_token_id).sum()),
        "runs": args.runs,
        "warmup": args.warmup,
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "decode_runs": args.decode_runs,
        "flops_formula": FLOPS_FORMULA,
        "baseline_overhead_vs_stock": overhead,
        "provenance": provenance(info),
        "results": results,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.output).with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(args.output)
    print_table(document)


def print_table(document: dict) -> None:
    print(f"{document['model']} on {document['provenance']['device_name']}, {document['prompt_tokens']} prompt tokens "
          f"({document['visual_tokens']} visual), median of {document['runs']} runs")  # fmt: skip
    print(f"{'config':30} {'decoder prefill':>16} {'p10-p90':>15} {'measured':>9} {'FLOPs-implied':>14} {'gap':>7} "
          f"{'KV MiB':>7} {'KV end':>7} {'answer':>8}")  # fmt: skip
    for r in document["results"]:
        s = r["decoder_prefill_s"]
        gap = r["measured_ratio_vs_baseline"] / r["flops_implied_ratio_vs_baseline"] - 1
        end = f"{r['kv_bytes_after_answer'] / 2**20:7.1f}" if r["kv_bytes_after_answer"] is not None else "      -"
        seconds = f"{r['answer_s']['median']:7.2f}s" if r["answer_s"] else "       -"
        print(
            f"{r['config']:30} {s['median'] * 1e3:13.1f} ms {s['p10'] * 1e3:6.1f}-{s['p90'] * 1e3:6.1f} ms "
            f"{r['measured_ratio_vs_baseline']:9.3f} {r['flops_implied_ratio_vs_baseline']:14.3f} {gap:+7.1%} "
            f"{r['kv_bytes'] / 2**20:7.1f} {end} {seconds}"
        )
    print(f"baseline profile vs stock transformers: {document['baseline_overhead_vs_stock']:+.1%}")
    print(f"KV MiB: after prefill; KV end: after a {document['new_tokens']}-token answer (EOS ignored); "
          f"answer: its median wall time")  # fmt: skip


if __name__ == "__main__":
    main()

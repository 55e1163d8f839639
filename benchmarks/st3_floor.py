"""ST3's annealing floor: do answers late in a long generation still see the picture?

A benchmark, not a test. ST3's visual token annealing (VTA) shrinks the share of visual KV entries
each layer keeps as decoding goes on; with the reference-like default (linear to zero over 112
steps) every visual entry is gone by step 112, so whatever is generated after that is written
without the image. `floor` keeps that share of the visual entries for good. This measures the
trade-off on the default model (builtin:scenes):

Each sample is one scene picture and a chat of many short questions about it. The picture and the
first question are the prompt; the rest of the chat (the gold answers and the next questions) is
*forced* through the real decode path of `generate()` (a logits processor replaces each step's
choice by the next gold token, after recording what the model would have chosen), so every answer
is asked at a known decode step, with ST3's evictions happening exactly as in a free answer. The
score is whether the model's own choice for each answer's first token is the gold one, by the
decode step at which the answer starts: before step 112 and after. KV entries at the end give the
memory side.

    python benchmarks/st3_floor.py                          # floors 0, 0.1, 0.25, 0.5; 40 scenes
    python benchmarks/st3_floor.py --samples 10 --floors 0 0.25

Pictures come from seeds ST3_STUDY_SEED + i, disjoint from training, evaluation, calibration and the
training script's held-out seeds; nothing here is the evaluation set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tokentrim_cli import scenes  # noqa: E402
from tokentrim_cli.engine import Trimmer, kv_lengths  # noqa: E402
from tokentrim_cli.metrics import provenance  # noqa: E402
from tokentrim_cli.model import load_llava, slow_cpu_dtype_warning  # noqa: E402
from tokentrim_cli.profiles import load_profile  # noqa: E402

ST3_STUDY_SEED = 800_000
HORIZON_BUCKETS = ((0, 56), (56, 112), (112, 224), (224, 10_000))


def chat(seed: int, questions: int) -> tuple[object, list[dict], list[str]]:
    """(picture, messages, answers): `questions` short-answer turns about one scene."""
    image, objects = scenes.scene(seed)
    rng = random.Random(f"st3-floor-{seed}")
    messages, answers = [], []
    while len(answers) < questions:
        kind = rng.choice(scenes.SHORT_TYPES)
        question = scenes.make_question(kind, objects, rng)
        if question is None:
            continue
        content = ([{"type": "image"}] if not messages else []) + [{"type": "text", "text": question.prompt}]
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": [{"type": "text", "text": question.answer}]}]
        answers.append(question.answer)
    return image, messages, answers


class Forced:
    """A logits processor: records the model's greedy choice at each step, then forces the gold token."""

    def __init__(self, gold: list[int]):
        self.gold, self.chosen = gold, []

    def __call__(self, input_ids, scores):
        step = len(self.chosen)
        self.chosen.append(int(scores[0].argmax()))
        forced = torch.full_like(scores, -float("inf"))
        forced[0, self.gold[step]] = 0.0
        return forced


def answer_starts(ids: list[int], header: list[int]) -> list[int]:
    """Indices in `ids` right after each assistant header (where an answer's first token is)."""
    n = len(header)
    return [i + n for i in range(len(ids) - n + 1) if ids[i : i + n] == header]


def run_sample(loaded, profile, image, messages) -> tuple[list[tuple[int, bool]], list[int]]:
    """[(decode step, first token right)] for every answer after the first, and KV entries at the end."""
    from transformers import LogitsProcessorList

    processor, tokenizer = loaded.processor, loaded.processor.tokenizer
    text = processor.apply_chat_template(messages, add_generation_prompt=False)
    batch = dict(processor(images=[image], text=[text], return_tensors="pt"))
    ids = batch["input_ids"][0].tolist()
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    starts = answer_starts(ids, header)
    prompt_end = starts[0]  # the prompt: the picture, the first question and its assistant header
    gold = ids[prompt_end:]
    prompt = {k: (v[:, :prompt_end] if k in ("input_ids", "attention_mask") else v) for k, v in batch.items()}
    forced = Forced(gold)
    kwargs = dict(max_new_tokens=len(gold), min_new_tokens=len(gold), do_sample=False, temperature=None, top_p=None,
                  top_k=None, logits_processor=LogitsProcessorList([forced]), pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=None)  # fmt: skip  # the forced chat has <|im_end|> tokens: no stopping at them
    with torch.inference_mode():
        if profile is None:
            out = loaded.model.generate(**prompt, **kwargs, return_dict_in_generate=True)
            kv = kv_lengths(out.past_key_values)
        else:
            with Trimmer.from_profile(loaded.model, profile) as trimmer:
                loaded.model.generate(**prompt, **kwargs)
            kv = kv_lengths(trimmer.last_cache)
    results = []
    for start in starts[1:]:  # the first answer is at step 0 for everyone
        step = start - prompt_end
        results.append((step, forced.chosen[step] == gold[step]))
    return results, kv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:scenes")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--questions", type=int, default=24, help="turns per chat (about 11 tokens each)")
    parser.add_argument("--floors", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5])
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "st3-floor-cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if warning := slow_cpu_dtype_warning(args.dtype, "cpu"):
        print(f"Warning: {warning}", file=sys.stderr)
    loaded = load_llava(args.model, device="cpu", dtype=args.dtype)
    st3 = load_profile("st3")
    configurations = {"baseline": None, **{f"st3 floor={f:g}": dataclasses.replace(
        st3, params=dataclasses.replace(st3.params, floor=f)) for f in args.floors}}  # fmt: skip
    started = time.time()
    raw = {name: [] for name in configurations}
    kv = {name: [] for name in configurations}
    for i in range(args.samples):
        image, messages, _ = chat(ST3_STUDY_SEED + i, args.questions)
        for name, profile in configurations.items():
            results, lengths = run_sample(loaded, profile, image, messages)
            raw[name].append(results)
            kv[name].append(sum(lengths))
        print(f"sample {i + 1}/{args.samples} ({(time.time() - started) / 60:.1f} min)", file=sys.stderr, flush=True)
    rows = []
    for name in configurations:
        row = {"configuration": name, "kv_entries_end_mean": sum(kv[name]) / len(kv[name]),
               "kv_ratio_vs_baseline": sum(kv[name]) / sum(kv["baseline"])}  # fmt: skip
        for low, high in HORIZON_BUCKETS:
            hits = [ok for sample in raw[name] for step, ok in sample if low <= step < high]
            row[f"steps {low}-{high}"] = {"accuracy": sum(hits) / len(hits) if hits else None, "answers": len(hits)}
        rows.append(row)
        cells = "  ".join(f"{k}: {v['accuracy']:.3f} ({v['answers']})" for k, v in row.items() if k.startswith("steps") and v["accuracy"] is not None)
        print(f"{name:18s} KV end {row['kv_ratio_vs_baseline']:.3f} of baseline  {cells}")
    document = {
        "benchmark": "st3_floor",
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seeds": [ST3_STUDY_SEED, ST3_STUDY_SEED + args.samples - 1],
        "minutes": (time.time() - started) / 60,
        "provenance": provenance(loaded.info),
        "rows": rows,
        "raw": raw,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.output.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    temporary.replace(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

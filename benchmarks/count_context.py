"""Does a count lean on the turns before it? The same count question, asked first and asked last in
one training-style conversation about a picture, answered by the default model's trained weights.

    python benchmarks/count_context.py --pictures 150 --precision fp32

Training (scripts/train_scenes_model.py) asks 16 questions about each picture in one sequence, and
the counts lessons (runs 31-34) made most of them counts: about ten counts of colours, shapes (and
in run34 of sizes) per picture, so that every count after the first is asked with the picture's
other counts, answered right, above it. The evaluation asks every question alone. If a count is
answered right more often when asked last than when asked first, the model reads part of its count
from the answers above it (how many objects of each colour there are bounds how many of each
shape), a help it never has on the evaluation set, and training's count loss overstates what it
has learnt about the picture.

Per picture (seeds PICTURE_SEED up: neither training, evaluation, calibration nor any other probe's),
one count question (of a colour or of a shape, as scenes.make_question asks them) and 15 other
questions drawn with run31's mix as train_scenes_model.conversation draws them (`--distinct`; every
turn in the short-answer form except a description). Two teacher-forced sequences: the count first then the 15, and the 15
then the count. The count is right when every token of its answer is the argmax there. The table
pairs the two answers per picture (McNemar, benchmarks/paired_comparison.py). Nothing trains; the
weights are a folder as the training script writes them (default: the shipped ones).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tokentrim_cli import assembly, scenes  # noqa: E402
from tokentrim_cli.metrics import provenance  # noqa: E402

PICTURE_SEED = 980_000  # past spatial_diagnosis' probe pictures (975,000 up), below TRAIN_SEED
OTHER_TURNS = 15
# run31's mix (its recorded --type-weights): the turns around the count in every counts lesson
OTHER_WEIGHTS = {"count_color": 6, "count_shape": 8, "color": 1, "shape": 1, "exist": 1, "spatial": 4,
                 "describe": 1, "position": 1}  # fmt: skip


def turns(seed: int, objects) -> tuple[scenes.Question, list[scenes.Question]]:
    """(the count question, the other questions) for picture `seed`, drawn from the seed alone."""
    import train_scenes_model as training

    rng = random.Random(f"count-context-{seed}")
    count = scenes.make_question(rng.choice(("count_color", "count_shape")), objects, rng)
    asked, others = {count.text}, []
    while len(others) < OTHER_TURNS:
        question = training.draw_question(objects, rng, OTHER_WEIGHTS)
        if question is not None and question.text not in asked:
            asked.add(question.text)
            others.append(question)
    return count, others


def messages(questions: list[scenes.Question]) -> list[dict]:
    """A conversation as training writes it: the picture in the first turn, short answers except
    describe's."""
    out = []
    for turn, question in enumerate(questions):
        content = ([{"type": "image"}] if turn == 0 else []) + [{"type": "text", "text": question.prompt}]
        out.append({"role": "user", "content": content})
        out.append({"role": "assistant", "content": [{"type": "text", "text": question.answer}]})
    return out


def answer_spans(labels: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each run of labelled positions (one per assistant answer, in order)."""
    spans, start = [], None
    flags = (labels != -100).tolist()
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            spans.append((start, i))
            start = None
    return spans


@torch.no_grad()
def answers_right(model, processor, image, questions: list[scenes.Question]) -> list[bool]:
    """Per question, whether the teacher-forced argmax gives every token of its answer (and the end
    of the turn)."""
    import train_scenes_model as training

    text = processor.apply_chat_template(messages(questions), add_generation_prompt=False)
    batch = processor(images=[image], text=[text], return_tensors="pt")
    labels = training.answer_labels(batch["input_ids"], processor.tokenizer)[0]
    with training.autocast():
        logits = model(**batch).logits[0].float()
    predicted = logits[:-1].argmax(-1)
    targets = labels[1:]
    spans = answer_spans(targets)
    if len(spans) != len(questions):
        raise RuntimeError(f"{len(spans)} answers found for {len(questions)} questions")
    return [bool((predicted[a:b] == targets[a:b]).all()) for a, b in spans]


def measure(model, processor, pictures: int) -> dict:
    """{"first": [...], "last": [...], "types": [...], "later_counts": [right, asked]}: the count
    question's correctness when asked first and last on each picture, its type, and, in the
    count-first sequences, how the other count questions (turns 2-16) fared."""
    first, last, types, later = [], [], [], [0, 0]
    for i in range(pictures):
        seed = PICTURE_SEED + i
        image, objects = scenes.scene(seed)
        count, others = turns(seed, objects)
        leading = answers_right(model, processor, image, [count, *others])
        trailing = answers_right(model, processor, image, [*others, count])
        first.append(leading[0])
        last.append(trailing[-1])
        types.append(count.type)
        for question, right in zip(others, leading[1:]):
            if question.type in ("count_color", "count_shape"):
                later[0] += right
                later[1] += 1
    return {"first": first, "last": last, "types": types, "later_counts": later}


def summary(result: dict) -> dict:
    from paired_comparison import mcnemar

    pairs = list(zip(result["first"], result["last"]))
    only_first = sum(f and not la for f, la in pairs)
    only_last = sum(la and not f for f, la in pairs)
    z, p = mcnemar(only_first, only_last)
    by_type = {}
    for kind in ("count_color", "count_shape"):
        chosen = [(f, la) for (f, la), t in zip(pairs, result["types"]) if t == kind]
        by_type[kind] = {"asked": len(chosen), "first": sum(f for f, _ in chosen), "last": sum(la for _, la in chosen)}
    right, asked = result["later_counts"]
    return {"pictures": len(pairs), "first_right": sum(result["first"]), "last_right": sum(result["last"]),
            "only_first": only_first, "only_last": only_last, "mcnemar_z": round(z, 2), "exact_p": round(p, 4),
            "by_type": by_type, "other_counts_in_count_first_sequences": f"{right}/{asked}"}  # fmt: skip


def main() -> None:
    import train_scenes_model as training

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pictures", type=int, default=150)
    parser.add_argument("--weights", type=Path, default=ROOT / "tokentrim_cli" / "scenes_model",
                        help="a folder of trained parts (projector, adapter)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    training.add_precision_option(parser)
    args = parser.parse_args()
    training.use_precision(args.precision)
    torch.set_num_threads(args.threads)
    model, processor = assembly.build_base(lambda message: None, seed=0)
    config = json.loads((args.weights / assembly.ADAPTER_CONFIG).read_text())
    training.add_lora(model, config["rank"], config["alpha"])
    training.load_trained(model, args.weights)
    model.eval()
    result = measure(model, processor, args.pictures)
    print(json.dumps({"weights": str(args.weights), "precision": args.precision, **summary(result),
                      "provenance": provenance()}))  # fmt: skip


if __name__ == "__main__":
    main()

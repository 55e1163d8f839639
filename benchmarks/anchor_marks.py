"""How precisely does the default model's decoder mark each object once? A linear probe reads, at
every visual token, whether it is an object's first patch (the anchor probe's target), and the
marks it reads are set beside the objects and the count questions.

    python benchmarks/anchor_marks.py benchmarks/results/eval-scenes-full-cpu.json --probe 200 --layers 8

Since run43 the training adds a probe at layer 8 (`--anchor-probe-layer`) that asks the decoder to
mark each object's first visual token in row-major order, so that a count could become a sum of
marks. The training logs its balanced accuracy, 0.96-0.98, which leaves its precision open: about
5 of the 576 tokens are anchors, so a probe right on 97% of the other tokens would mark some 17 of
them as well, and a sum over such marks would count area again. This measures it on the shipped
weights (the training probe itself is never saved, so it is fitted anew):

- A logistic regression (size_diagnosis.fit_probe, the two classes weighted half each as the
  training loss weighs them) on the residual stream after the given layer at every visual token of
  N probe pictures (size_diagnosis.PROBE_SEED up). The model is run as `tokentrim eval` runs it
  (bf16, the picture first in the prompt, so the visual tokens do not depend on the question).
- On the pictures of the evaluation set's count questions:
  - tokens: the share of anchors marked, the share of marks that are anchors, and the false marks
    per picture, on an object's other patches or on the background;
  - objects: how many marks fall on each object's patches (0, 1, 2 or more), by size;
  - counts: the marks on the asked objects' patches read as a count (four classes: 0, 1, 2, 3 or
    more), beside the model's own answers from the eval JSON, by true count and, for one object to
    count, by its size.

Needs the carrier packages. Markdown on stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from count_components import GRID, KINDS, model_count, tally  # noqa: E402  (beside this script)
from count_diagnosis import model_answers, percent  # noqa: E402
from size_diagnosis import PROBE_SEED, counted_objects, fit_probe, read_scenes_result  # noqa: E402
from spatial_diagnosis import residual_stream  # noqa: E402

from tokentrim_cli import scenes  # noqa: E402


def anchor_labels(objects: list[scenes.SceneObject]) -> list[bool]:
    """Per patch (row-major), whether it is an object's first patch: the training probe's target."""
    from train_scenes_model import object_anchors

    return object_anchors(objects, GRID)


def mark_summary(marks: list[bool], objects: list[scenes.SceneObject]) -> dict:
    """For one picture's marks (row-major): {"anchors", "marked anchors", "marks", "false on an
    object", "false on the background"} and "per object", the marks on each object's patches."""
    from train_scenes_model import patch_objects

    owner = patch_objects(objects, GRID, scenes.SIZE / GRID)
    anchors = anchor_labels(objects)
    per_object = [0] * len(objects)
    for marked, i in zip(marks, owner):
        if marked and i >= 0:
            per_object[i] += 1
    return {
        "anchors": sum(anchors),
        "marked anchors": sum(m and a for m, a in zip(marks, anchors)),
        "marks": sum(marks),
        "false on an object": sum(m and not a and i >= 0 for m, a, i in zip(marks, anchors, owner)),
        "false on the background": sum(m and i < 0 for m, i in zip(marks, owner)),
        "per object": per_object,
    }


def marks_count(summary: dict, objects: list[scenes.SceneObject], question: scenes.Question) -> int:
    """The count a sum over marks gives: the marks on the patches of the objects the question counts."""
    counted = counted_objects(question, objects)
    return sum(n for o, n in zip(objects, summary["per object"]) if any(o is c for c in counted))


def visual_states(loaded, seeds: list[int], layers: list[int], log):
    """{layer: (pictures, 576, hidden)}: the residual stream after each layer at the visual tokens
    (row-major), one prompt for every picture (the tokens before and among them do not depend on it,
    so they sit at the same places counted from the prompt's end in every row)."""
    from tokentrim_cli.generation import prepare_batch
    from tokentrim_cli.inputs import LoadedImage

    ids = prepare_batch(loaded, [([LoadedImage("scene", scenes.picture(seeds[0]))], scenes.DESCRIBE_PROMPT)])["input_ids"][0]
    visual = ((ids == loaded.model.config.image_token_id).nonzero().squeeze(1) - len(ids)).tolist()
    rows = [(scenes.picture(seed), scenes.DESCRIBE_PROMPT, visual) for seed in seeds]
    states = residual_stream(loaded, rows, log, layers=layers)
    return {layer: states[:, i] for i, layer in enumerate(layers)}


def balanced_weights(labels) -> object:
    """Class weights that give each of the two classes half the loss (the training probe's)."""
    import torch

    counts = torch.bincount(labels.long(), minlength=2).float()
    return counts.sum() / (2 * counts.clamp_min(1))


def report_layer(layer: int, summaries: dict[int, dict], objects_of: dict[int, list], rows: list[dict]) -> None:
    pictures = len(summaries)
    keys = ("anchors", "marked anchors", "marks", "false on an object", "false on the background")
    total = {key: sum(s[key] for s in summaries.values()) for key in keys}
    print(f"\n## Layer {layer}\n")
    print(
        "| evaluation pictures | anchors marked | marks that are anchors "
        "| false marks a picture: on an object | on the background |"
    )
    print("|---|---|---|---|---|")
    print(f"| {pictures} | {percent(total['marked anchors'], total['anchors'])} | "
          f"{percent(total['marked anchors'], total['marks'])} | "
          f"{total['false on an object'] / pictures:.2f} | {total['false on the background'] / pictures:.2f} |")  # fmt: skip
    print("\n| object | no mark | one mark | two or more |")
    print("|---|---|---|---|")
    for size in scenes.SIZES:
        marks = [
            n for seed, s in summaries.items() for o, n in zip(objects_of[seed], s["per object"]) if o.size == size
        ]
        cells = [sum(n == 0 for n in marks), sum(n == 1 for n in marks), sum(n >= 2 for n in marks)]
        print(f"| {size} | " + " | ".join(percent(c, len(marks)) for c in cells) + " |")
    found = tally(rows, readers=("marks", "model"))
    splits = ["all", 0, 1, 2, 3, "one small", "one large"]
    names = {0: "count 0", 1: "count 1", 2: "count 2", 3: "count 3 or more"}
    for kind in KINDS:
        print(f"\n{kind}:\n")
        print("| reader | " + " | ".join(names.get(s, s) for s in splits) + " |")
        print("|---|" + "---|" * len(splits))
        for reader, label in (("marks", "marks on the asked objects"), ("model", "the model's answers")):
            cells = [found.get((kind, reader, s), [0, 0]) for s in splits]
            print(f"| {label} | " + " | ".join(percent(r, n) for r, n in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_json", type=Path,
                        help="a whole-set `tokentrim eval --dataset scenes` result with a baseline profile")  # fmt: skip
    parser.add_argument("--probe", type=int, default=200, metavar="N", help="pictures the probe is fitted on")
    parser.add_argument(
        "--layers", default="8", help="comma-separated decoder layers to read (8: the training probe's)"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.probe < 1:
        parser.error("--probe must be at least 1")
    try:
        layers = sorted({int(part) for part in args.layers.split(",")})
    except ValueError:
        parser.error(f"--layers: comma-separated layer numbers, not {args.layers!r}")
    samples = scenes.evaluation_questions()
    answers = model_answers(read_scenes_result(args.eval_json), samples)

    import torch

    from tokentrim_cli.model import load_llava

    torch.set_num_threads(args.threads)
    log = lambda message: print(f"<!-- {message} -->", file=sys.stderr)  # noqa: E731
    loaded = load_llava("builtin:scenes", device="cpu", dtype="bfloat16")
    depth = loaded.model.config.text_config.num_hidden_layers
    if not all(1 <= layer <= depth for layer in layers):
        sys.exit(f"--layers: the decoder has layers 1-{depth}")
    probe_seeds = [PROBE_SEED + i for i in range(args.probe)]
    asked = [s for s in samples if s.question.type in KINDS]
    seeds = sorted({s.seed for s in asked})
    log(f"visual tokens of {len(probe_seeds)} probe pictures")
    train = visual_states(loaded, probe_seeds, layers, log)
    log(f"visual tokens of {len(seeds)} evaluation pictures")
    test = visual_states(loaded, seeds, layers, log)
    labels = torch.tensor([a for seed in probe_seeds for a in anchor_labels(scenes.scene_objects(seed))])
    objects_of = {seed: scenes.scene_objects(seed) for seed in seeds}
    print(
        f"Anchor marks read by a linear probe ({loaded.info.model_id}, {loaded.info.revision}; {args.probe} probe "
        f"pictures from seed {PROBE_SEED}; the count questions' {len(seeds)} evaluation pictures)."
    )
    for layer in layers:
        predict = fit_probe(train[layer].flatten(0, 1), labels.long(), 2, class_weights=balanced_weights(labels))
        with torch.no_grad():
            marked = predict(test[layer].flatten(0, 1)).view(len(seeds), -1).bool().tolist()
        summaries = {seed: mark_summary(marks, objects_of[seed]) for seed, marks in zip(seeds, marked)}
        rows = []
        for sample in asked:
            objects, said = objects_of[sample.seed], answers.get((sample.seed, sample.question.text))
            mine = counted_objects(sample.question, objects)
            rows.append({
                "kind": sample.question.type,
                "truth": len(mine),
                "size": mine[0].size if len(mine) == 1 else None,
                "marks": marks_count(summaries[sample.seed], objects, sample.question),
                "model": None if said is None else model_count(said),
            })  # fmt: skip
        report_layer(layer, summaries, objects_of, rows)


if __name__ == "__main__":
    main()

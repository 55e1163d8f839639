"""Are the visual tokens enough to count? Each visual token of the default model is labelled by a
linear probe, and the asked colour's or shape's objects are counted as connected groups of tokens,
with no learning past the probe; set beside the model's own answers to the same questions.

    python benchmarks/count_components.py benchmarks/results/eval-scenes-full-cpu.json --probe 300

"Why a shape's count is not formed" (tokentrim_cli/scenes_model/README.md) found the shape in every
visual token and no count of a shape anywhere in the decoder. This asks whether counting needs
more than the tokens give, or only a step the decoder does not take:

- A linear probe (size_diagnosis.fit_probe) reads each of the 576 visual tokens (the projector's
  output, what the decoder is given) as one of the colours or the background, and another as one of
  the shapes or the background. They are fitted on every patch of N pictures of their own seeds
  (size_diagnosis.PROBE_SEED up), a patch labelled with the object covering its centre
  (train_scenes_model.patch_objects) or the background.
- On each evaluation count question, the patches the probe gives the asked colour (or shape) are
  grouped into 8-connected components on the 24 x 24 grid: the number of groups is the count.
- The same grouping of the patches the objects truly cover gives the count the grid itself allows
  (objects that touch on the grid merge, and are counted as one).

Both are scored on the four classes of count_diagnosis (0, 1, 2, 3 or more), beside the model's
answers from the eval JSON's `baseline` profile, split by the true count and, for one object to
count, by its size. Needs the carrier packages; about 4 minutes for --probe 300 on 2 cores.
Markdown on stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from count_diagnosis import count_class, model_answers  # noqa: E402  (beside this script)
from size_diagnosis import PROBE_SEED, counted, counted_objects, fit_probe, read_scenes_result, visual_batches  # noqa: E402

from tokentrim_cli import scenes  # noqa: E402

GRID = 24  # 336 px at the tower's 14-px patches
KINDS = ("count_color", "count_shape")


def components(marked: list[bool], grid: int = GRID) -> int:
    """The number of 8-connected groups of marked cells on a `grid` x `grid` board (row-major)."""
    seen = [False] * len(marked)
    groups = 0
    for start, on in enumerate(marked):
        if not on or seen[start]:
            continue
        groups += 1
        seen[start] = True
        stack = [start]
        while stack:
            row, col = divmod(stack.pop(), grid)
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    r, c = row + dr, col + dc
                    if 0 <= r < grid and 0 <= c < grid and marked[r * grid + c] and not seen[r * grid + c]:
                        seen[r * grid + c] = True
                        stack.append(r * grid + c)
    return groups


def patch_classes(objects: list[scenes.SceneObject], place: int) -> list[int]:
    """Per patch (row-major), the colour (place 0) or shape (place 1) index of the object covering
    its centre, or the background class (the number of colours or shapes)."""
    from train_scenes_model import patch_objects

    values = (tuple(scenes.COLORS), scenes.SHAPES)[place]
    classes = [values.index((o.color, o.shape)[place]) for o in objects]
    return [classes[i] if i >= 0 else len(values) for i in patch_objects(objects, GRID, scenes.SIZE / GRID)]


def component_count(labels: list[int], question: scenes.Question) -> int:
    """How many groups of patches labelled with the counted colour or shape."""
    place, value = counted(question)
    wanted = (tuple(scenes.COLORS), scenes.SHAPES)[place].index(value)
    return components([label == wanted for label in labels])


def model_count(answer: str) -> int:
    """The count a short answer says, or -1 (in no class, so scored wrong) when it says none."""
    said = scenes.normalize_short(answer)
    return int(said) if said.isdigit() else -1


def tally(rows: list[dict], readers: tuple[str, ...] = ("grid", "probe", "model")) -> dict:
    """{(kind, reader, split): [right, asked]} over rows of {"kind", "truth", "size", reader: count};
    split is "all", the true count's class, or "one small" / "one large"."""
    found: dict = {}
    for row in rows:
        for reader in readers:
            if row[reader] is None:
                continue
            right = int(count_class(row[reader]) == count_class(row["truth"]))
            splits = ["all", count_class(row["truth"])] + ([f"one {row['size']}"] if row["truth"] == 1 else [])
            for split in splits:
                cell = found.setdefault((row["kind"], reader, split), [0, 0])
                cell[0] += right
                cell[1] += 1
    return found


def patch_features(model, processor, seeds: list[int]):
    """(pictures, 576, D) projector outputs (bf16 autocast, as the evaluation runs) and the objects."""
    import torch

    features, every = [], []
    for _, projected, drawn in visual_batches(model, processor, seeds):
        features.append(projected.float())
        every += drawn
    return torch.cat(features), every


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_json", type=Path, help="a whole-set `tokentrim eval --dataset scenes` result with a baseline profile")
    parser.add_argument("--probe", type=int, default=300, metavar="N", help="pictures the patch probes are fitted on")
    parser.add_argument("--weights", type=Path, default=ROOT / "tokentrim_cli" / "scenes_model",
                        help="the trained projector's folder")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.probe < 1:
        parser.error("--probe must be at least 1")
    samples = scenes.evaluation_questions()
    answers = model_answers(read_scenes_result(args.eval_json), samples)

    import torch
    from safetensors.torch import load_file

    from tokentrim_cli import assembly

    torch.set_num_threads(args.threads)
    log = lambda message: print(f"<!-- {message} -->", file=sys.stderr)  # noqa: E731
    model, processor = assembly.build_base(log, seed=0)
    model.model.multi_modal_projector.load_state_dict(load_file(args.weights / assembly.PROJECTOR_FILE))
    model.eval()
    log(f"visual tokens of {args.probe} probe pictures")
    train, train_objects = patch_features(model, processor, [PROBE_SEED + i for i in range(args.probe)])
    asked = [(i, s) for i, s in enumerate(samples) if s.question.type in KINDS]
    seeds = sorted({s.seed for _, s in asked})
    log(f"visual tokens of {len(seeds)} evaluation pictures")
    test, test_objects = patch_features(model, processor, seeds)
    row_of = {seed: n for n, seed in enumerate(seeds)}
    probed = {}
    for place in (0, 1):
        labels = torch.tensor([c for objects in train_objects for c in patch_classes(objects, place)])
        classes = (len(scenes.COLORS), len(scenes.SHAPES))[place] + 1
        predict = fit_probe(train.flatten(0, 1), labels, classes)
        with torch.no_grad():
            probed[place] = predict(test.flatten(0, 1)).view(len(seeds), -1).tolist()
        truth = torch.tensor([c for objects in test_objects for c in patch_classes(objects, place)])
        accuracy = (torch.tensor(probed[place]).flatten() == truth).float().mean().item()
        log(f"patch probe, {('colour', 'shape')[place]}: {100 * accuracy:.1f}% of the evaluation patches")

    rows = []
    for i, sample in asked:
        question, objects = sample.question, scenes.scene_objects(sample.seed)
        place = counted(question)[0]
        mine = counted_objects(question, objects)
        said = answers.get((sample.seed, question.text))
        rows.append({
            "kind": question.type,
            "truth": len(mine),
            "size": mine[0].size if len(mine) == 1 else None,
            "grid": component_count(patch_classes(objects, place), question),
            "probe": component_count(probed[place][row_of[sample.seed]], question),
            "model": None if said is None else model_count(said),
        })  # fmt: skip
    found = tally(rows)
    readers = {"model": "the model's answers", "probe": "groups of probe-labelled tokens", "grid": "groups of the covered patches"}
    splits = ["all", 0, 1, 2, 3, "one small", "one large"]
    names = {0: "count 0", 1: "count 1", 2: "count 2", 3: "count 3 or more"}
    print(f"Counted as 8-connected groups of visual tokens ({args.probe} probe pictures from seed {PROBE_SEED}; "
          f"weights {args.weights.name}); four classes, 0, 1, 2, 3 or more.\n")  # fmt: skip
    for kind in KINDS:
        print(f"\n## {kind}\n")
        print("| reader | " + " | ".join(names.get(s, s) for s in splits) + " |")
        print("|---|" + "---|" * len(splits))
        for reader, label in readers.items():
            cells = [found.get((kind, reader, s), [0, 0]) for s in splits]
            print(f"| {label} | " + " | ".join(f"{100 * r / max(n, 1):.1f}% of {n}" for r, n in cells) + " |")


if __name__ == "__main__":
    main()

"""Does the model know left from right? Two readings of one `tokentrim eval --dataset scenes` result.

    python benchmarks/spatial_diagnosis.py benchmarks/results/eval-scenes-full-cpu.json

"Describe the picture" answers list the objects left to right (scenes.describe, the training
target). For every pair of objects named in a description (colour and shape, each pair unique in
its picture) whose centres are at least RELATION_GAP apart horizontally, this counts whether the
description names them in the order of their centres: the comparison the spatial questions ask
("Is the red star to the left of the blue cross?"), made without being asked. Beside it, the
spatial questions' accuracy per relation and how often each was answered "yes" (the set is
balanced: chance answers sit near 50%, a "yes" share far from 50% is a prior on the wording).

Reads the predictions and sample ids of each profile (eval's JSON keeps both) and rebuilds the
objects of each picture from scenes.py; nothing is run. Markdown on stdout.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tokentrim_cli import scenes  # noqa: E402
from tokentrim_cli.benchmarks import scenes_question  # noqa: E402


def order_counts(description: str, objects: list[scenes.SceneObject]) -> tuple[int, int]:
    """(pairs named in left-to-right order, pairs named out of order) in one description."""
    text = description.lower()
    named = []  # (where in the text, centre x)
    for o in objects:
        if scenes.unique_name(o, objects) != f"{o.color} {o.shape}":
            continue  # a repeated colour and shape: which one was meant is unknowable
        found = re.search(rf"\b{o.color} {o.shape}s?\b", text)
        if found:
            named.append((found.start(), o.x))
    named.sort()
    in_order = out_of_order = 0
    for i, (_, x_first) in enumerate(named):
        for _, x_later in named[i + 1 :]:
            if abs(x_first - x_later) >= scenes.RELATION_GAP:
                in_order += x_first < x_later
                out_of_order += x_first > x_later
    return in_order, out_of_order


def relation_of(question: scenes.Question) -> str:
    return next(r for r, (words, _, _) in scenes.RELATIONS.items() if f" {words} " in question.text)


def diagnose(profile: dict, samples: list[scenes.SceneSample]) -> dict:
    """{"describe_order": (in order, out of order), "spatial": {relation: [right, asked, said yes]}}."""
    in_order = out_of_order = 0
    spatial = {relation: [0, 0, 0] for relation in scenes.RELATIONS}
    for sample_id, prediction in zip(profile["ids"], profile["predictions"]):
        sample = scenes_question(sample_id, samples)
        if sample.question.type == "describe":
            objects = scenes.scene_objects(sample.seed)
            good, bad = order_counts(prediction, objects)
            in_order, out_of_order = in_order + good, out_of_order + bad
        elif sample.question.type == "spatial":
            said = scenes.normalize_short(prediction)
            counts = spatial[relation_of(sample.question)]
            counts[0] += said == sample.question.answer
            counts[1] += 1
            counts[2] += said == "yes"
    return {"describe_order": (in_order, out_of_order), "spatial": spatial}


def main(path: str) -> None:
    document = json.load(open(path))
    if not document["dataset"].startswith("scenes"):
        sys.exit(f"{path}: not a scenes evaluation ({document['dataset']!r})")
    samples = scenes.evaluation_questions()
    relations = tuple(scenes.RELATIONS)
    print("| profile | describe: pairs in left-to-right order | " + " | ".join(f"spatial {r}: right (yes)" for r in relations) + " |")
    print("|---|---|" + "---|" * len(relations))
    for profile in document["profiles"]:
        found = diagnose(profile, samples)
        good, bad = found["describe_order"]
        cells = [f"{100 * good / max(good + bad, 1):.1f}% of {good + bad}"]
        for relation in relations:
            right, asked, yes = found["spatial"][relation]
            cells.append(f"{100 * right / max(asked, 1):.0f}% of {asked} ({100 * yes / max(asked, 1):.0f}% yes)")
        print(f"| {profile['profile']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])

"""Split a `tokentrim eval --dataset easy-vqa` result by kind of question.

    python benchmarks/eval_by_question.py benchmarks/results/eval-demo-cpu.json

An overall accuracy hides what a model answers from the picture and what from the wording alone.
This reads the eval JSON (predictions, per profile, in sample order), rebuilds the same seeded
sample of easy-VQA questions and prints, per profile, the accuracy on each kind of question:
open shape, open colour, yes/no about a shape, yes/no about a colour. Markdown on stdout.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict

from tokentrim_cli.evaluation import sample_indices

SHAPES = ("circle", "rectangle", "triangle")
KINDS = ("shape", "colour", "yes/no shape", "yes/no colour")


def kind(question: str, answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes/no shape" if any(re.search(rf"\b{s}\b", question) for s in SHAPES) else "yes/no colour"
    return "shape" if answer in SHAPES else "colour"


def main(path: str) -> None:
    import easy_vqa

    document = json.load(open(path))
    match = re.fullmatch(r"easy-vqa (\w+) \((\d+) of (\d+), seed (\d+)\)", document["dataset"])
    if not match:
        sys.exit(f"{path}: not an easy-VQA evaluation ({document['dataset']!r})")
    split, limit, total, seed = match.group(1), int(match.group(2)), int(match.group(3)), int(match.group(4))
    questions, answers, _ = getattr(easy_vqa, f"get_{split}_questions")()
    assert len(questions) == total, "a different easy-vqa release"
    kinds = [kind(questions[i], answers[i]) for i in sample_indices(total, limit=limit, seed=seed)]
    counts = {k: kinds.count(k) for k in KINDS}
    print("| profile | " + " | ".join(f"{k} ({counts[k]})" for k in KINDS) + " |")
    print("|---|" + "---|" * len(KINDS))
    for profile in document["profiles"]:
        right = defaultdict(int)
        for k, correct in zip(kinds, profile["correct"]):
            right[k] += correct
        print(f"| {profile['profile']} | " + " | ".join(f"{100 * right[k] / counts[k]:.1f}%" for k in KINDS) + " |")


if __name__ == "__main__":
    main(sys.argv[1])

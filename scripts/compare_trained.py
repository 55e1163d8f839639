"""Compare trained weights of the default model on held-out pictures, never the evaluation set.

    python scripts/compare_trained.py --questions 140 tokentrim_cli/scenes_model runs/run5

Each folder holds what scripts/train_scenes_model.py writes (projector, adapter); every folder is
loaded into the same base model and answers the same questions greedily: pictures from the
training script's HOLDOUT_SEED (neither training, evaluation nor calibration), question types in
rotation (`--first-question K` skips the first K, to ask questions no earlier decision read). One
JSON line per folder: exact match per short-answer type, "short" over all of them,
and describe recall. This is how a new run is accepted or not before anything is measured on the
evaluation set, so that choosing the shipped weights is not tuning on it.

`--position N` also asks, on N more held-out pictures (from PROBE_SEED), the training-only
position question (train_scenes_model.position_question: is one named object on the left or right,
at the top or bottom), a spatial question and the training-only comparison
(train_scenes_model.compare_question: which of two named objects is further left, right, up or
down), and reports the accuracy of each: whether the weights can tell where one object is, whether
they can compare two when asked for the object, and when asked yes or no (20 spatial questions in
the rule's 140 move by 5 points per answer). It is a diagnostic, not part of the rule.

`--spatial N` asks one spatial question per relation on each of N held-out pictures (PROBE_SEED
up, drawn apart from the position probe's) and reports the accuracy per relation (left of, right
of, above, below): whether weights trained on some relations (`train_scenes_model.py
--relations`) answer those and not the others. Also a diagnostic.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import train_scenes_model as training  # noqa: E402  (beside this script: on sys.path already)

from tokentrim_cli import assembly, scenes  # noqa: E402

PROBE_SEED = 960_000  # past the held-out questions (HOLDOUT_SEED, 900,000 up), below the training pictures


# Which column of the probe's report a question counts in.
PROBE_COLUMNS = {"left": "position_left_right", "right": "position_left_right",
                 "top": "position_top_bottom", "bottom": "position_top_bottom"}  # fmt: skip


def position_questions(count: int) -> list[tuple[int, scenes.Question]]:
    out = []
    for i in range(count):
        seed = PROBE_SEED + i
        objects = scenes.scene_objects(seed)
        rng = random.Random(f"position-{seed}")
        # The comparison is drawn last, so the first two questions are those the probe asked before it had one.
        drawn = (training.position_question(objects, rng), scenes.make_question("spatial", objects, rng),
                 training.compare_question(objects, rng))  # fmt: skip
        for question in drawn:
            if question is not None:
                out.append((seed, question))
    return out


def greedy_scores(model, processor, asked: list[tuple[int, str, scenes.Question]], columns) -> dict[str, str]:
    """{column: "right/asked"} for (picture seed, column, question) triples, each answered greedily
    (a picture with several questions is drawn once)."""
    model.eval()
    right: dict[str, list[bool]] = {column: [] for column in columns}
    pictures: dict[int, object] = {}
    for seed, column, question in asked:
        if seed not in pictures:
            pictures[seed] = scenes.scene(seed)[0]
        answer = training.greedy_answer(model, processor, pictures[seed], question.prompt, max_new_tokens=6)
        right[column].append(scenes.normalize_short(answer) == question.answer)
    return {column: f"{sum(v)}/{len(v)}" for column, v in right.items()}


def position_scores(model, processor, questions) -> dict:
    asked = [(seed, question.type if question.type in ("spatial", "compare") else PROBE_COLUMNS[question.answer], question)
             for seed, question in questions]  # fmt: skip
    columns = ("position_left_right", "position_top_bottom", "spatial", "compare")
    return {f"probe_{c}": v for c, v in greedy_scores(model, processor, asked, columns).items()}


def relation_questions(count: int) -> list[tuple[int, str, scenes.Question]]:
    """(seed, relation, question): on each of `count` pictures (PROBE_SEED up) one spatial question
    per relation, where the picture allows one."""
    out = []
    for i in range(count):
        seed = PROBE_SEED + i
        objects, rng = scenes.scene_objects(seed), random.Random(f"relation-{seed}")
        for relation in scenes.RELATIONS:
            if (question := scenes.spatial_question(objects, rng, (relation,))) is not None:
                out.append((seed, relation, question))
    return out


def relation_scores(model, processor, questions) -> dict:
    return {f"spatial_{c}": v for c, v in greedy_scores(model, processor, questions, scenes.RELATIONS).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--questions", type=int, default=140)
    parser.add_argument("--first-question", type=int, default=0, metavar="K",
                        help="skip the first K held-out questions (those earlier decisions used)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    training.add_precision_option(parser)
    parser.add_argument("--position", type=int, default=0, help="also probe position questions on this many pictures")
    parser.add_argument("--spatial", type=int, default=0, help="also ask spatial questions on this many pictures, by relation")
    args = parser.parse_args()
    training.use_precision(args.precision)
    torch.set_num_threads(args.threads)
    if args.first_question < 0:
        parser.error("--first-question must be 0 or more")
    questions = training.holdout_questions(args.questions, args.first_question)
    probe = position_questions(args.position)
    by_relation = relation_questions(args.spatial)
    model, processor = assembly.build_base(lambda message: None, seed=0)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    loaded_rank = None
    for folder in args.folders:
        config = json.loads((folder / assembly.ADAPTER_CONFIG).read_text())
        if loaded_rank is None:
            training.add_lora(model, config["rank"], config["alpha"])
            loaded_rank = (config["rank"], config["alpha"])
        elif (config["rank"], config["alpha"]) != loaded_rank:
            raise SystemExit(f"{folder}: adapter rank/alpha {config['rank']}/{config['alpha']} differ from the first folder's")
        started = time.time()
        training.load_trained(model, folder)
        scores = training.holdout_check(model, processor, questions) if questions else {}
        if args.position:
            scores |= position_scores(model, processor, probe)
        if args.spatial:
            scores |= relation_scores(model, processor, by_relation)
        print(json.dumps({"folder": str(folder), "questions": args.questions, "first_question": args.first_question, **scores,
                          "minutes": round((time.time() - started) / 60, 1)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

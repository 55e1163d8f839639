"""Compare trained weights of the default model on held-out pictures, never the evaluation set.

    python scripts/compare_trained.py --questions 140 tokentrim_cli/scenes_model runs/run5

Each folder holds what scripts/train_scenes_model.py writes (projector, adapter); every folder is
loaded into the same base model and answers the same questions greedily: pictures from the
training script's HOLDOUT_SEED (neither training, evaluation nor calibration), question types in
rotation. One JSON line per folder: exact match per short-answer type, "short" over all of them,
and describe recall. This is how a new run is accepted or not before anything is measured on the
evaluation set, so that choosing the shipped weights is not tuning on it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import train_scenes_model as training  # noqa: E402  (beside this script: on sys.path already)

from tokentrim_cli import assembly  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--questions", type=int, default=140)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    questions = training.holdout_questions(args.questions)
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
        scores = training.holdout_check(model, processor, questions)
        print(json.dumps({"folder": str(folder), "questions": args.questions, **scores,
                          "minutes": round((time.time() - started) / 60, 1)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

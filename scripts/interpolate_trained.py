"""Interpolate two sets of trained weights of the default model in weight space (WiSE-FT).

    python scripts/interpolate_trained.py tokentrim_cli/scenes_model runs/run40 --weight 0.5 --out runs/mix31-40

Each folder holds what scripts/train_scenes_model.py writes: the projector and a LoRA adapter of
the decoder. The output folder holds weights of the same form whose decoder is exactly

    W = W0 + (1 - w) * dW_first + w * dW_second,   dW = (alpha / rank) * B @ A

for every adapted layer (Wortsman et al., 2022, "Robust fine-tuning of zero-shot models": a
fine-tuned model interpolated with the one it started from often keeps most of what it learnt and
gives back less of what it forgot). A product of interpolated factors would not be that sum, so
the output adapter stacks the two: its rank is the sum of the two ranks, A = [A_first; A_second],
B = [(1 - w) s_first B_first, w s_second B_second] with alpha = rank (scaling 1), which merges to
the sum above exactly, up to the adapters' own storage precision (bf16; with w = 0.5 and the
shipped alpha/rank of 2 every factor is a power of two and nothing is rounded). The projector's
tensors are interpolated linearly (exact when, as in the lessons that train only the decoder,
both folders hold the same projector).

The output loads like any training run's folder (`compare_trained.py`; `--init` with `--rank` at least its rank) and can replace
the shipped weights; its adapter is twice as large.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tokentrim_cli import assembly  # noqa: E402


def interpolate(first: Path, second: Path, weight: float) -> tuple[dict, dict, dict]:
    """The interpolated (projector, adapter tensors, adapter config) of two trained folders."""
    configs = [json.loads((folder / assembly.ADAPTER_CONFIG).read_text()) for folder in (first, second)]
    for key in ("targets", "base"):
        if configs[0][key] != configs[1][key]:
            raise ValueError(f"the two adapters differ in {key}: {configs[0][key]} and {configs[1][key]}")
    adapters = [load_file(folder / assembly.ADAPTER_FILE) for folder in (first, second)]
    if adapters[0].keys() != adapters[1].keys():
        raise ValueError("the two adapters adapt different layers")
    projectors = [load_file(folder / assembly.PROJECTOR_FILE) for folder in (first, second)]
    if projectors[0].keys() != projectors[1].keys():
        raise ValueError("the two projectors hold different tensors")

    shares = (1.0 - weight, weight)
    scalings = [config["alpha"] / config["rank"] for config in configs]
    dtype = next(iter(adapters[0].values())).dtype  # the training script stores adapters in bf16
    adapter = {}
    for key in sorted(adapters[0]):
        if key.endswith(".lora_A"):
            adapter[key] = torch.cat([tensors[key] for tensors in adapters], dim=0).to(dtype)
        else:  # lora_B: each half carries its share and its own scaling, since the stack merges at scaling 1
            adapter[key] = torch.cat(
                [share * scaling * tensors[key].float() for share, scaling, tensors in zip(shares, scalings, adapters)],
                dim=1,
            ).to(dtype)
    projector = {key: shares[0] * projectors[0][key].float() + shares[1] * projectors[1][key].float()
                 for key in projectors[0]}  # fmt: skip
    rank = configs[0]["rank"] + configs[1]["rank"]
    config = {**configs[0], "rank": rank, "alpha": float(rank)}
    return projector, adapter, config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--weight", type=float, required=True, help="the second folder's share, in [0, 1]")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not 0.0 <= args.weight <= 1.0:
        parser.error(f"--weight must lie in [0, 1], got {args.weight}")
    for folder in (args.first, args.second):
        missing = [path.name for path in assembly.trained_files(folder) if not path.is_file()]
        if missing:
            parser.error(f"{folder} lacks {', '.join(missing)}: not a trained weights folder")
    if args.out.exists():
        parser.error(f"{args.out} exists; choose a new folder")
    try:
        projector, adapter, config = interpolate(args.first, args.second, args.weight)
    except ValueError as error:
        parser.error(str(error))
    # Staged in a temporary sibling and renamed, as assembly.ensure_assembled stages a checkpoint:
    # an interrupted run leaves no folder that looks complete.
    args.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.", dir=args.out.parent))
    try:
        save_file(projector, staging / assembly.PROJECTOR_FILE)
        save_file(adapter, staging / assembly.ADAPTER_FILE)
        (staging / assembly.ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        staging.rename(args.out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    print(f"{args.out}: {1 - args.weight:g} x {args.first} + {args.weight:g} x {args.second}, adapter rank {config['rank']}")


if __name__ == "__main__":
    main()

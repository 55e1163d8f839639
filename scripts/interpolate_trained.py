"""Mix sets of trained weights of the default model in weight space: WiSE-FT and model soups.

    python scripts/interpolate_trained.py tokentrim_cli/scenes_model runs/run40 --weight 0.5 --out runs/mix31-40
    python scripts/interpolate_trained.py runs/run44 runs/run45 runs/run46 --mean --rank 16 --out runs/soup44-46

Each folder holds what scripts/train_scenes_model.py writes: the projector and a LoRA adapter of
the decoder. The output folder holds weights of the same form whose decoder is

    W = W0 + sum_i s_i dW_i,   dW_i = (alpha_i / rank_i) B_i @ A_i,   sum_i s_i = 1

for every adapted layer, with the shares s_i given by `--weight` (two folders: the second's share,
Wortsman et al., 2022, "Robust fine-tuning of zero-shot models") or `--mean` (equal shares: a
uniform "model soup", Wortsman et al., 2022, of runs fine-tuned from the same weights). A product
of mixed factors would not be that sum, so by default the output adapter stacks the folders': its
rank is the sum of theirs, A = [A_1; A_2; ...], B = [s_1 c_1 B_1, s_2 c_2 B_2, ...] (c_i =
alpha_i/rank_i) with alpha = rank (scaling 1), which merges to the sum exactly, up to the adapters'
own storage precision (bf16). `--rank R` instead writes the best rank-R factorisation of each
layer's mixed update (truncated SVD, B = U sqrt(S), A = sqrt(S) V^T), so that a soup of several
runs ships at the size of one; what the truncation leaves out is printed, relative to the mixed
update's norm. The projector's tensors are mixed linearly.

The output loads like any training run's folder (`compare_trained.py`; `--init` with `--rank` at
least its rank) and can replace the shipped weights.
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


def mix(folders: list[Path], shares: list[float], rank: int | None = None) -> tuple[dict, dict, dict, float]:
    """The mixed (projector, adapter tensors, adapter config) of trained folders, and the share of
    the mixed updates' squared norm that `rank` truncation left out (0.0 when stacked)."""
    configs = [json.loads((folder / assembly.ADAPTER_CONFIG).read_text()) for folder in folders]
    for key in ("targets", "base"):
        if any(config[key] != configs[0][key] for config in configs):
            raise ValueError(f"the adapters differ in {key}: {', '.join(str(config[key]) for config in configs)}")
    adapters = [load_file(folder / assembly.ADAPTER_FILE) for folder in folders]
    if any(tensors.keys() != adapters[0].keys() for tensors in adapters):
        raise ValueError("the adapters adapt different layers")
    projectors = [load_file(folder / assembly.PROJECTOR_FILE) for folder in folders]
    if any(tensors.keys() != projectors[0].keys() for tensors in projectors):
        raise ValueError("the projectors hold different tensors")

    scalings = [config["alpha"] / config["rank"] for config in configs]
    dtype = next(iter(adapters[0].values())).dtype  # the training script stores adapters in bf16
    adapter, left_out, total = {}, 0.0, 0.0
    for key_a in sorted(key for key in adapters[0] if key.endswith(".lora_A")):
        key_b = key_a.removesuffix(".lora_A") + ".lora_B"
        # Each B carries its share and its own scaling, since the result merges at scaling 1.
        stacked_b = torch.cat([share * scaling * tensors[key_b].float()
                               for share, scaling, tensors in zip(shares, scalings, adapters)], dim=1)  # fmt: skip
        stacked_a = torch.cat([tensors[key_a].float() for tensors in adapters], dim=0)
        if rank is None:
            adapter[key_a], adapter[key_b] = stacked_a.to(dtype), stacked_b.to(dtype)
            continue
        u, s, vh = torch.linalg.svd(stacked_b.double() @ stacked_a.double(), full_matrices=False)
        left_out += float((s[rank:] ** 2).sum())
        total += float((s**2).sum())
        root = s[:rank].sqrt()
        adapter[key_b] = (u[:, :rank] * root).to(dtype).contiguous()
        adapter[key_a] = (root[:, None] * vh[:rank]).to(dtype).contiguous()
    projector = {key: sum(share * tensors[key].float() for share, tensors in zip(shares, projectors))
                 for key in projectors[0]}  # fmt: skip
    out_rank = rank if rank is not None else sum(config["rank"] for config in configs)
    config = {**configs[0], "rank": out_rank, "alpha": float(out_rank)}
    return projector, adapter, config, (left_out / total if total else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+", help="two or more trained weights folders")
    shares = parser.add_mutually_exclusive_group(required=True)
    shares.add_argument("--weight", type=float, help="with two folders: the second's share, in [0, 1]")
    shares.add_argument("--mean", action="store_true", help="equal shares for every folder (a uniform soup)")
    parser.add_argument("--rank", type=int, default=None, help="refactorise the mixed adapter to this rank (truncated SVD)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if len(args.folders) < 2:
        parser.error("give two or more folders to mix")
    if args.weight is not None:
        if len(args.folders) != 2:
            parser.error(f"--weight mixes two folders, got {len(args.folders)}; use --mean for more")
        if not 0.0 <= args.weight <= 1.0:
            parser.error(f"--weight must lie in [0, 1], got {args.weight}")
        folder_shares = [1.0 - args.weight, args.weight]
    else:
        folder_shares = [1.0 / len(args.folders)] * len(args.folders)
    if args.rank is not None and args.rank < 1:
        parser.error(f"--rank must be at least 1, got {args.rank}")
    for folder in args.folders:
        missing = [path.name for path in assembly.trained_files(folder) if not path.is_file()]
        if missing:
            parser.error(f"{folder} lacks {', '.join(missing)}: not a trained weights folder")
    if args.out.exists():
        parser.error(f"{args.out} exists; choose a new folder")
    try:
        projector, adapter, config, left_out = mix(args.folders, folder_shares, args.rank)
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
    parts = " + ".join(f"{share:g} x {folder}" for share, folder in zip(folder_shares, args.folders))
    truncation = f", {left_out:.2e} of the mixed updates' squared norm left out" if args.rank is not None else ""
    print(f"{args.out}: {parts}, adapter rank {config['rank']}{truncation}")


if __name__ == "__main__":
    main()

"""VTW calibration: the shared-prefix evaluation against the naive loop (one full prefill per candidate).

A benchmark, not a test (the equality of the two curves is tested in tests/test_calibration.py).

    python benchmarks/calibration_bench.py                    # random:cpu-576, 4 built-in samples
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tokentrim_cli import calibration  # noqa: E402
from tokentrim_cli.metrics import provenance  # noqa: E402
from tokentrim_cli.model import load_llava  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:cpu-576")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--min-layer", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/calibration-cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_llava(args.model, device=args.device, dtype=args.dtype)
    dataset = calibration.load_dataset(None, limit=args.samples)
    min_layer = args.min_layer or calibration.default_min_layer(loaded.info.num_layers)
    calibration.calibrate_vtw(loaded, calibration.load_dataset(None, limit=1), eta=0.003, min_layer=min_layer)  # warm-up
    shared = calibration.calibrate_vtw(loaded, dataset, eta=0.003, min_layer=min_layer)
    naive = calibration.calibrate_vtw_naive(loaded, dataset, eta=0.003, min_layer=min_layer)
    largest_gap = max(abs(a - b) / max(abs(b), 1e-12) for (_, a), (_, b) in zip(shared.curve, naive.curve))
    document = {
        "benchmark": "calibration_bench",
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "model": args.model,
        "samples": args.samples,
        "candidates": [k for k, _ in shared.curve],
        "shared_prefix_s": shared.seconds,
        "naive_s": naive.seconds,
        "speedup": naive.seconds / shared.seconds,
        "largest_relative_kl_difference": largest_gap,
        "curve_shared": shared.curve,
        "curve_naive": naive.curve,
        "provenance": provenance(loaded.info),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.output).with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(args.output)
    print(f"{args.model}, {args.samples} samples, candidates K = {min_layer}..{loaded.info.num_layers - 1}: "
          f"shared prefix {shared.seconds:.1f} s, naive {naive.seconds:.1f} s, speed-up {document['speedup']:.1f}x, "
          f"largest relative KL difference {largest_gap:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()

"""Regenerate tokentrim_cli/calibration_set/ and tokentrim_cli/samples/.

The built-in calibration set of `tokentrim calibrate` (offline, tiny, deterministic): 20 pictures
of one coloured shape with an easy-VQA question and its answer each (so the file also works as
`tokentrim eval --data`). Pictures come from scripts/shapes.py, the generator the demo model was
trained with; they are not easy-VQA's images. Also the quick start's sample pictures.

Run from the repository root: python scripts/make_calibration_set.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import shapes

PACKAGE = Path(__file__).resolve().parent.parent / "tokentrim_cli"
SAMPLES = {"red-circle.png": ("circle", "red"), "blue-triangle.png": ("triangle", "blue"),
           "teal-rectangle.png": ("rectangle", "teal")}  # fmt: skip


def main() -> None:
    rng = random.Random(20261122)
    out = PACKAGE / "calibration_set"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    colours = list(shapes.COLOURS)
    lines = []
    for index in range(20):
        shape, colour = shapes.SHAPES[index % 3], colours[index % len(colours)]
        file = f"{index:02d}-{colour}-{shape}.png"
        shapes.draw(shape, colour, rng).save(out / file, optimize=True)
        question, answer = shapes.question(shape, colour, rng)
        lines.append(json.dumps({"image": file, "prompt": question, "answer": answer}))
    (out / "samples.jsonl").write_text("\n".join(lines) + "\n")
    for file, (shape, colour) in SAMPLES.items():
        shapes.draw(shape, colour, rng).save(PACKAGE / "samples" / file, optimize=True)


if __name__ == "__main__":
    main()

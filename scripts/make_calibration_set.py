"""Regenerate tokentrim_cli/calibration_set/: 20 pictures of one coloured shape and a question each.

The built-in calibration set of `tokentrim calibrate` (offline, tiny, deterministic). Pictures are
drawn here, in the style of easy-VQA (one shape, one colour, plain background); they are not
easy-VQA's images. Run from the repository root: python scripts/make_calibration_set.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent.parent / "tokentrim_cli" / "calibration_set"
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
           "teal": (30, 160, 160), "brown": (130, 80, 30), "gray": (128, 128, 128), "black": (20, 20, 20)}  # fmt: skip
SHAPES = ("circle", "rectangle", "triangle")
QUESTIONS = ("What shape is in the image?", "What color is the shape?", "Is there a {shape} in the picture?",
             "Describe the picture.", "Is the shape {colour}?")  # fmt: skip


def draw(shape: str, colour: tuple, rng: random.Random, size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    pen = ImageDraw.Draw(image)
    extent = rng.randint(18, 40)
    x, y = rng.randint(2, size - extent - 2), rng.randint(2, size - extent - 2)
    box = (x, y, x + extent, y + extent)
    if shape == "circle":
        pen.ellipse(box, fill=colour)
    elif shape == "rectangle":
        pen.rectangle((x, y, x + extent, y + rng.randint(extent // 2, extent)), fill=colour)
    else:
        pen.polygon([(x + extent // 2, y), (x, y + extent), (x + extent, y + extent)], fill=colour)
    return image


def main() -> None:
    rng = random.Random(20261122)
    OUT.mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(20):
        shape, (name, colour) = SHAPES[index % 3], list(COLOURS.items())[index % len(COLOURS)]
        file = f"{index:02d}-{name}-{shape}.png"
        draw(shape, colour, rng).save(OUT / file, optimize=True)
        question = QUESTIONS[index % len(QUESTIONS)].format(shape=shape, colour=name)
        lines.append(json.dumps({"image": file, "prompt": question}))
    (OUT / "samples.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

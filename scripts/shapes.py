"""Pictures and questions of the easy-VQA kind, drawn here (never easy-VQA's own images).

One shape (circle, rectangle, equilateral triangle) of one of 8 pure colours on a random off-white
background, 64x64, drawn at twice the size and downsampled bilinearly so the edges are anti-aliased,
shapes 1/8 to 1/2 of the picture wide: the picture distribution easy-VQA's generator describes, so
that the demo model can train on as many pictures as it needs while easy-VQA's test split stays
unseen. The question forms are easy-VQA's (the demo model's vocabulary is exactly theirs).

Used by train_demo_model.py and make_calibration_set.py; not part of the installed package.
"""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw

SIZE = 64
SCALE = 2  # drawn at 2x, then downsampled: anti-aliased edges like easy-VQA's pictures
SHAPES = ("circle", "rectangle", "triangle")
COLOURS = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "teal": (0, 128, 128), "brown": (165, 42, 42), "gray": (128, 128, 128), "black": (0, 0, 0),
}  # fmt: skip
ANSWERS = ("yes", "no", *SHAPES, *COLOURS)

# Question forms, easy-VQA's wording. {shape} / {colour} name what is asked about.
SHAPE_QUESTIONS = ("what shape is in the image?", "what shape is present?",
                   "what shape does the image contain?", "what is the {colour} shape?")  # fmt: skip
COLOUR_QUESTIONS = ("what color is the {shape}?", "what is the color of the {shape}?",
                    "what color is the shape?", "what is the color of the shape?")  # fmt: skip
PRESENCE = ("is there a {x}?", "is there a {x} in the image?", "does the image contain a {x}?", "is a {x} present?")
ABSENCE = ("is there not a {x}?", "is there not a {x} in the image?", "does the image not contain a {x}?",
           "is no {x} present?")  # fmt: skip


def draw(shape: str, colour: str, rng: random.Random) -> Image.Image:
    """A 64x64 RGB picture of one `colour` `shape` at a random size and place."""
    big = SIZE * SCALE
    background = tuple(rng.randint(230, 255) for _ in range(3))
    image = Image.new("RGB", (big, big), background)
    pen = ImageDraw.Draw(image)
    fill = COLOURS[colour]
    low, high = big // 8, big // 2
    if shape == "rectangle":
        width, height = rng.randint(low, high), rng.randint(low, high)
        x, y = rng.randint(0, big - width), rng.randint(0, big - height)
        pen.rectangle((x, y, x + width, y + height), fill=fill)
    elif shape == "circle":
        diameter = rng.randint(low, high)
        x, y = rng.randint(0, big - diameter), rng.randint(0, big - diameter)
        pen.ellipse((x, y, x + diameter, y + diameter), fill=fill)
    elif shape == "triangle":  # equilateral, one side horizontal at the bottom, apex up
        side = rng.randint(low, high)
        x, y = rng.randint(0, big - side), rng.randint(math.ceil(side * math.sqrt(3) / 2), big)
        apex = (x + side / 2, y - side * math.sqrt(3) / 2)
        pen.polygon([(x, y), (x + side, y), apex], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return image.resize((SIZE, SIZE), resample=Image.Resampling.BILINEAR)


def question(
    shape: str,
    colour: str,
    rng: random.Random,
    shape_share: float = 0.5,
    yes_no_share: float = 0.5,
    negated_share: float = 0.5,
) -> tuple[str, str]:
    """A random (question, answer) about a picture of `colour` `shape`; yes and no equally likely.

    `shape_share` of the questions are about the shape, the rest about the colour; `yes_no_share`
    of them are yes/no questions, the rest open ones; `negated_share` of the yes/no questions are
    negated ("is there not a ...?").
    """
    # The draws below are the ones the committed demo model's runs were generated with: keep them.
    if shape_share == 0.5 and yes_no_share == 0.5:
        kind = rng.choice(("shape", "colour", "shape?", "colour?"))
    else:
        kind = "shape" if rng.random() < shape_share else "colour"
        if yes_no_share == 0.5:
            kind += rng.choice(("", "?"))
        else:
            kind += "?" if rng.random() < yes_no_share else ""
    if kind == "shape":
        return rng.choice(SHAPE_QUESTIONS).format(colour=colour), shape
    if kind == "colour":
        return rng.choice(COLOUR_QUESTIONS).format(shape=shape), colour
    truth, others = (shape, SHAPES) if kind == "shape?" else (colour, tuple(COLOURS))
    asked = truth if rng.random() < 0.5 else rng.choice([o for o in others if o != truth])
    noun = asked if kind == "shape?" else f"{asked} shape"
    negated = rng.random() < negated_share
    template = rng.choice(ABSENCE if negated else PRESENCE)
    present = asked == truth
    return template.format(x=noun), "yes" if present != negated else "no"


def sample(
    rng: random.Random, shape_share: float = 0.5, yes_no_share: float = 0.5, negated_share: float = 0.5
) -> tuple[Image.Image, str, str, str, str]:
    """(picture, shape, colour, question, answer), all drawn at random."""
    shape, colour = rng.choice(SHAPES), rng.choice(tuple(COLOURS))
    text, answer = question(shape, colour, rng, shape_share, yes_no_share, negated_share)
    return draw(shape, colour, rng), shape, colour, text, answer

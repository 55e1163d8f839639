"""Scenes: 336x336 pictures of 3-8 coloured shapes on a textured, noisy background, with questions.

The testbed on which trimming methods can be told apart (demo-model.md, "a warning"): several
objects, small ones covering only a few 14-pixel patches, position questions and a background that
is not plain, so *which* visual tokens are kept matters. Everything is drawn from a seed, so the
evaluation set (`tokentrim eval --dataset scenes`) and the calibration set are regenerated
bit for bit instead of shipped; training (scripts/train_scenes_model.py) draws from seeds that the
evaluation and calibration sets never use.

Question types: `count_color`, `count_shape`, `color`, `shape`, `exist`, `spatial` (short answers,
scored by exact match) and `describe` (every object named, scored by recall and precision over
(colour, shape) pairs). Answers come from the object list, never from the pixels.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

SIZE = 336
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "hexagon": "hexagons", "cross": "crosses"}  # fmt: skip
COLORS = {
    "red": (215, 35, 35), "orange": (240, 135, 25), "yellow": (235, 215, 35), "green": (45, 165, 60),
    "cyan": (40, 195, 215), "blue": (40, 70, 215), "purple": (135, 50, 185), "white": (245, 245, 245),
}  # fmt: skip
SIZES = {"small": 14, "large": 30}  # radius in pixels: a small object spans about 2x2 patches of 14 px
RADIUS_SPREAD = (0.9, 1.1)  # each object's radius is its size's times a factor drawn from this range
MIN_OBJECTS, MAX_OBJECTS = 3, 8
MARGIN = 6  # pixels kept free between objects and from the border
RELATION_GAP = 28  # centres this far apart (pixels) along an axis make a relation unambiguous

SHORT_TYPES = ("count_color", "count_shape", "color", "shape", "exist", "spatial")
TYPES = (*SHORT_TYPES, "describe")
SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."  # LLaVA-1.5's VQA prompt
DESCRIBE_PROMPT = "Describe the picture."

# Seed spaces: evaluation pictures, calibration pictures and training pictures never overlap.
EVAL_SEED = 0  # picture i of the evaluation set is drawn from seed EVAL_SEED + i
CALIBRATION_SEED = 500_000
TRAIN_SEED = 1_000_000  # question/answer training draws TRAIN_SEED + n
ALIGN_SEED = 3_000_000  # the projector's alignment stage draws ALIGN_SEED + n
SAMPLE_SEED = 700_900  # samples/scene.png, the quick start's picture: 5 objects, 5 colours, 5 shapes
EVAL_PICTURES = 600
QUESTIONS_PER_PICTURE = 4  # 2,400 questions: 2,057 short-answer, 343 describe


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    x: float  # centre, pixels
    y: float
    radius: float

    @property
    def phrase(self) -> str:
        return f"{self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Question:
    type: str
    text: str  # as asked in chat, without the short-answer instruction
    answer: str  # the short answer (describe: the full description)
    sentence: str  # the same answer as an English sentence (chat style)

    @property
    def prompt(self) -> str:
        """The evaluation prompt: LLaVA-1.5's short-answer instruction, except for describe."""
        return self.text if self.type == "describe" else self.text + SHORT_ANSWER_SUFFIX


# ---- drawing ------------------------------------------------------------------------------------


def shape_polygon(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]] | None:
    """Vertices of a shape centred at (x, y) with outer radius r; None for the circle."""
    if shape == "circle":
        return None
    if shape == "square":
        h = r * 0.85
        return [(x - h, y - h), (x + h, y - h), (x + h, y + h), (x - h, y + h)]
    if shape == "triangle":  # equilateral, apex up; the centroid at (x, y + r/6) keeps it in the box
        cy = y + r / 6
        return [(x + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((x + radius * math.cos(angle), y + radius * math.sin(angle)))
        return points
    if shape == "hexagon":
        return [(x + r * math.cos(k * math.pi / 3), y + r * math.sin(k * math.pi / 3)) for k in range(6)]
    if shape == "cross":
        a, w = r * 0.95, r * 0.36
        return [(x - w, y - a), (x + w, y - a), (x + w, y - w), (x + a, y - w), (x + a, y + w), (x + w, y + w),
                (x + w, y + a), (x - w, y + a), (x - w, y + w), (x - a, y + w), (x - a, y - w), (x - w, y - w)]  # fmt: skip
    raise ValueError(f"unknown shape {shape!r}")


def place_objects(
    rng: random.Random, shapes: tuple[str, ...] = SHAPES, colors: tuple[str, ...] = tuple(COLORS),
    sizes: tuple[str, ...] = tuple(SIZES), counts: tuple[int, int] = (MIN_OBJECTS, MAX_OBJECTS),
    spread: tuple[float, float] = RADIUS_SPREAD,
) -> list[SceneObject]:  # fmt: skip
    """3-8 objects with random shape, colour, size and place, never overlapping. `shapes`, `colors`,
    `sizes` and `counts` (the fewest and most objects) narrow the choice (training draws some scenes
    from a few colours and shapes, so that counts past one are common, some from small objects alone
    and some with two or three objects); each object's radius is its size's times a factor drawn
    from `spread` (training widens it in some scenes, so that the area objects cover stops telling
    their number); the defaults draw the evaluation and calibration sets."""
    count = rng.randint(*counts)
    objects: list[SceneObject] = []
    while len(objects) < count:
        size = rng.choice(sizes)
        radius = SIZES[size] * rng.uniform(*spread)
        for _ in range(200):
            x = rng.uniform(radius + MARGIN, SIZE - radius - MARGIN)
            y = rng.uniform(radius + MARGIN, SIZE - radius - MARGIN)
            if all(math.hypot(x - o.x, y - o.y) > radius + o.radius + MARGIN for o in objects):
                break
        else:  # no room left: a smaller scene
            break
        objects.append(SceneObject(rng.choice(shapes), rng.choice(colors), size, x, y, radius))
    return objects


def draw(objects: list[SceneObject], rng: random.Random):
    """The picture (PIL RGB, SIZE x SIZE): a gradient with blotches and pixel noise, then the objects
    (drawn at 4x and downsampled, so edges are anti-aliased), then noise over everything."""
    import numpy as np
    from PIL import Image, ImageDraw

    generator = np.random.default_rng(rng.getrandbits(63))
    base = np.array([rng.uniform(70, 170) for _ in range(3)])
    tint = np.array([rng.uniform(-35, 35) for _ in range(3)])
    angle = rng.uniform(0, 2 * math.pi)
    axis = np.linspace(-1, 1, SIZE)
    ramp = math.cos(angle) * axis[None, :] + math.sin(angle) * axis[:, None]  # (H, W)
    background = base[None, None, :] + ramp[..., None] * tint[None, None, :]
    blotches = Image.fromarray(generator.normal(0, 1, (7, 7, 3)).astype(np.float32).mean(-1))
    blotches = np.asarray(blotches.resize((SIZE, SIZE), Image.BICUBIC))
    background = background + 28 * blotches[..., None] * np.array([1.0, 0.9, 0.8])
    scale = 4
    canvas = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8)).resize((SIZE * scale, SIZE * scale))
    pen = ImageDraw.Draw(canvas)
    for o in objects:
        x, y, r = o.x * scale, o.y * scale, o.radius * scale
        polygon = shape_polygon(o.shape, x, y, r)
        if polygon is None:
            pen.ellipse((x - r, y - r, x + r, y + r), fill=COLORS[o.color])
        else:
            pen.polygon(polygon, fill=COLORS[o.color])
    picture = np.asarray(canvas.resize((SIZE, SIZE), Image.BOX)).astype(np.float32)
    picture += generator.normal(0, 9, picture.shape)
    return Image.fromarray(np.clip(picture, 0, 255).round().astype(np.uint8))


def scene(
    seed: int, shapes: tuple[str, ...] = SHAPES, colors: tuple[str, ...] = tuple(COLORS), sizes: tuple[str, ...] = tuple(SIZES),
    counts: tuple[int, int] = (MIN_OBJECTS, MAX_OBJECTS),
):  # fmt: skip
    """(picture, objects) for one seed (`shapes`, `colors`, `sizes`, `counts`: as in place_objects)."""
    rng = random.Random(seed)
    objects = place_objects(rng, shapes, colors, sizes, counts)
    return draw(objects, rng), objects


def scene_objects(seed: int) -> list[SceneObject]:
    """The objects of scene(seed), without drawing the picture (placing comes first from the seed)."""
    return place_objects(random.Random(seed))


# ---- questions ----------------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def unique_name(o: SceneObject, objects: list[SceneObject]) -> str | None:
    """The shortest unambiguous name of `o` among `objects` ("red star", "small red star"), or None."""
    if sum((p.color, p.shape) == (o.color, o.shape) for p in objects) == 1:
        return f"{o.color} {o.shape}"
    if sum((p.size, p.color, p.shape) == (o.size, o.color, o.shape) for p in objects) == 1:
        return f"{o.size} {o.color} {o.shape}"
    return None


def named_objects(objects: list[SceneObject]) -> list[tuple[SceneObject, str]]:
    """(object, unique_name) for every object that has a unique name: those a question can name."""
    return [(o, name) for o in objects if (name := unique_name(o, objects))]


def describe(objects: list[SceneObject]) -> str:
    """Every object, left to right: "There are 3 objects: a small red star, a large blue circle and
    a small white cross." """
    ordered = sorted(objects, key=lambda o: o.x)
    phrases = [f"{_article(o.size)} {o.phrase}" for o in ordered]
    listed = ", ".join(phrases[:-1]) + f" and {phrases[-1]}" if len(phrases) > 1 else phrases[0]
    return f"There are {len(objects)} objects: {listed}."


def count_word(n: int, singular: str, plural: str) -> str:
    return f"{n} {singular if n == 1 else plural}"


def count_sentence(n: int, singular: str, plural: str) -> str:
    """A count question's answer as a sentence: "There is 1 red object.", "There are no stars."."""
    if not n:
        return f"There are no {plural}."
    return f"There {'is' if n == 1 else 'are'} {count_word(n, singular, plural)}."


def make_question(kind: str, objects: list[SceneObject], rng: random.Random) -> Question | None:
    """One question of `kind` about the scene, or None when the scene cannot support it."""
    if kind == "describe":
        text = describe(objects)
        return Question(kind, DESCRIBE_PROMPT, text, text)
    if kind == "count_color":
        # Mostly colours in the picture, sometimes one that is absent (answer 0).
        present = sorted({o.color for o in objects})
        return count_question(kind, rng.choice(present) if rng.random() < 0.8 else rng.choice(tuple(COLORS)), objects)
    if kind == "count_shape":
        present = sorted({o.shape for o in objects})
        return count_question(kind, rng.choice(present) if rng.random() < 0.8 else rng.choice(SHAPES), objects)
    if kind == "color":
        named = [(o, n) for o in objects if (n := name_without_color(o, objects))]
        if not named:
            return None
        o, name = rng.choice(named)
        return Question(kind, f"What color is the {name}?", o.color, f"The {name} is {o.color}.")
    if kind == "shape":
        named = [(o, n) for o in objects if (n := name_without_shape(o, objects))]
        if not named:
            return None
        o, name = rng.choice(named)
        return Question(kind, f"What shape is the {name}?", o.shape, f"The {name} is {_article(o.shape)} {o.shape}.")
    if kind == "exist":
        return _existence(objects, rng)
    if kind == "spatial":
        return spatial_question(objects, rng)
    raise ValueError(f"unknown question type {kind!r}")


def count_question(kind: str, value: str, objects: list[SceneObject]) -> Question:
    """"How many blue objects are there?" (kind count_color, value "blue") or "How many stars are
    there?" (count_shape, "star"), answered from `objects`."""
    if kind == "count_color":
        n = sum(o.color == value for o in objects)
        return Question(kind, f"How many {value} objects are there?", str(n),
                        count_sentence(n, f"{value} object", f"{value} objects"))  # fmt: skip
    n = sum(o.shape == value for o in objects)
    return Question(kind, f"How many {PLURALS[value]} are there?", str(n), count_sentence(n, value, PLURALS[value]))


def name_without_color(o: SceneObject, objects) -> str | None:
    """A name without the colour: "star" or "small star" when that picks out exactly one object."""
    if sum(p.shape == o.shape for p in objects) == 1:
        return o.shape
    if sum((p.shape, p.size) == (o.shape, o.size) for p in objects) == 1:
        return f"{o.size} {o.shape}"
    return None


def name_without_shape(o: SceneObject, objects) -> str | None:
    """A name without the shape: "red object" or "small red object"."""
    if sum(p.color == o.color for p in objects) == 1:
        return f"{o.color} object"
    if sum((p.color, p.size) == (o.color, o.size) for p in objects) == 1:
        return f"{o.size} {o.color} object"
    return None


def _existence(objects, rng: random.Random) -> Question:
    present = {(o.color, o.shape) for o in objects}
    if rng.random() < 0.5:
        color, shape = rng.choice(sorted(present))
    else:
        # A near miss: the colour or the shape of an object in the picture, paired wrongly.
        o = rng.choice(objects)
        candidates = [(o.color, s) for s in SHAPES] + [(c, o.shape) for c in COLORS]
        absent = [c for c in candidates if c not in present]
        color, shape = rng.choice(absent) if absent else (rng.choice(tuple(COLORS)), rng.choice(SHAPES))
    exists = (color, shape) in present
    text = f"Is there {_article(color)} {color} {shape}?"
    sentence = f"Yes, there is {_article(color)} {color} {shape}." if exists else f"No, there is no {color} {shape}."
    return Question("exist", text, "yes" if exists else "no", sentence)


RELATIONS = {"left": ("to the left of", 0, -1), "right": ("to the right of", 0, 1),
             "above": ("above", 1, -1), "below": ("below", 1, 1)}  # fmt: skip


def relation_holds(a: SceneObject, b: SceneObject, relation: str) -> bool | None:
    """Whether `a` is `relation` `b` (image coordinates: y grows downwards); None when the centres
    are too close along that axis for the answer to be clear."""
    _, axis, sign = RELATIONS[relation]
    delta = (a.x - b.x) if axis == 0 else (a.y - b.y)
    if abs(delta) < RELATION_GAP:
        return None
    return delta * sign > 0


def spatial_options(objects, relations: tuple[str, ...] | dict[str, float] = tuple(RELATIONS)) -> list[tuple]:
    """(a, a's name, b, b's name, relation) for every spatial question the picture can ask: two
    uniquely named objects whose centres are clearly apart along the relation's axis."""
    named = named_objects(objects)
    return [(a, na, b, nb, rel) for a, na in named for b, nb in named if a is not b for rel in relations
            if relation_holds(a, b, rel) is not None]  # fmt: skip


def spatial_question(objects, rng: random.Random, relations: tuple[str, ...] = tuple(RELATIONS)) -> Question | None:
    """"Is the red star to the left of the blue cross?" about two uniquely named objects whose
    centres are clearly apart along the relation's axis, yes and no equally often. `relations`
    narrows the relations asked (training only); all four draw as make_question does."""
    options = spatial_options(objects, relations)
    if not options:
        return None
    want = rng.random() < 0.5  # balanced yes / no
    matching = [opt for opt in options if relation_holds(opt[0], opt[2], opt[4]) == want]
    a, na, b, nb, rel = rng.choice(matching or options)
    holds = relation_holds(a, b, rel)
    words = RELATIONS[rel][0]
    if holds:
        sentence = f"Yes, the {na} is {words} the {nb}."
    else:
        opposite = {"left": "right", "right": "left", "above": "below", "below": "above"}[rel]
        sentence = f"No, the {na} is {RELATIONS[opposite][0]} the {nb}."
    return Question("spatial", f"Is the {na} {words} the {nb}?", "yes" if holds else "no", sentence)


# ---- the fixed sets -----------------------------------------------------------------------------


@dataclass
class SceneSample:
    seed: int  # the picture's seed
    question: Question
    image: object = None  # PIL picture (drawn on demand)


def evaluation_questions(pictures: int = EVAL_PICTURES) -> list[SceneSample]:
    """The fixed evaluation set: QUESTIONS_PER_PICTURE questions on each of `pictures` pictures,
    types in rotation so every type is equally represented. Pictures are not drawn here."""
    samples = []
    slot = 0
    for i in range(pictures):
        seed = EVAL_SEED + i
        rng = random.Random(seed)
        objects = place_objects(rng)
        ask = random.Random(f"questions-{seed}")
        for _ in range(QUESTIONS_PER_PICTURE):
            kind = TYPES[slot % len(TYPES)]
            slot += 1
            question = make_question(kind, objects, ask)
            # A type the scene cannot support (no uniquely named object) falls back to describe's
            # neighbour in the rotation; the fallback is deterministic.
            offset = 1
            while question is None:
                question = make_question(TYPES[(TYPES.index(kind) + offset) % len(TYPES)], objects, ask)
                offset += 1
            samples.append(SceneSample(seed, question))
    return samples


def calibration_samples(count: int = 20) -> list[SceneSample]:
    """The built-in calibration set: one short-answer question on each of `count` pictures."""
    samples = []
    for i in range(count):
        seed = CALIBRATION_SEED + i
        rng = random.Random(seed)
        objects = place_objects(rng)
        ask = random.Random(f"calibration-{seed}")
        question = None
        kind_index = i
        while question is None:
            question = make_question(SHORT_TYPES[kind_index % len(SHORT_TYPES)], objects, ask)
            kind_index += 1
        samples.append(SceneSample(seed, question))
    return samples


def picture(seed: int):
    return scene(seed)[0]


@dataclass(frozen=True)
class SceneImage:
    """A scene picture drawn when used (the same interface as inputs.ImageRef)."""

    seed: int

    @property
    def source(self) -> str:
        return f"scenes:{self.seed}"

    def load(self):
        from .inputs import LoadedImage

        return LoadedImage(self.source, picture(self.seed))


# ---- scoring ------------------------------------------------------------------------------------

_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))}  # fmt: skip


def normalize_short(text: str) -> str:
    """Lower case, no punctuation or articles, number words as digits (the VQA normalisation's spirit)."""
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    words = [_NUMBER_WORDS.get(w, w) for w in words if w not in ("a", "an", "the")]
    return " ".join(words)


def mentioned_objects(text: str) -> list[tuple[str, str]]:
    """(colour, shape) pairs named in a description: a colour word followed, within two words
    (a size word may sit between), by a shape word (singular or plural)."""
    shapes = {s: s for s in SHAPES} | {p: s for s, p in PLURALS.items()}
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    found = []
    for i, word in enumerate(words):
        if word in COLORS:
            for follower in words[i + 1 : i + 3]:
                if follower in shapes:
                    found.append((word, shapes[follower]))
                    break
    return found


def describe_scores(prediction: str, objects: list[SceneObject]) -> tuple[float, float]:
    """(recall, precision) of a description: an object counts as found when its colour and shape are
    both named; repeated mentions match as many objects as there are (multiset matching)."""
    truth: dict[tuple[str, str], int] = {}
    for o in objects:
        truth[(o.color, o.shape)] = truth.get((o.color, o.shape), 0) + 1
    said: dict[tuple[str, str], int] = {}
    for pair in mentioned_objects(prediction):
        said[pair] = said.get(pair, 0) + 1
    matched = sum(min(n, said.get(pair, 0)) for pair, n in truth.items())
    recall = matched / len(objects)
    precision = matched / sum(said.values()) if said else 0.0
    return recall, precision

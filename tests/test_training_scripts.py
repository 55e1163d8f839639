"""The demo model's training data: drawn questions are right, their mixes hold, old runs replay."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
shapes = pytest.importorskip("shapes")
train = pytest.importorskip("train_demo_model")


def expected_answer(question: str, shape: str, colour: str) -> str:
    """The answer, worked out from the words alone (independent of shapes.question's bookkeeping)."""
    words = question.rstrip("?").split()
    if question.startswith("what"):
        return colour if "color" in words else shape
    asked = next(w for w in words if w in shapes.SHAPES or w in shapes.COLOURS)
    present = asked in (shape, colour)
    negated = "not" in words or "no" in words
    return "yes" if present != negated else "no"


@pytest.mark.parametrize("mix", [{}, {"shape_share": 1.0}, {"yes_no_share": 0.75, "negated_share": 0.35}])
def test_drawn_questions_have_the_right_answers(mix):
    rng = random.Random(3)
    for _ in range(400):
        shape, colour = rng.choice(shapes.SHAPES), rng.choice(tuple(shapes.COLOURS))
        question, answer = shapes.question(shape, colour, rng, **mix)
        assert answer == expected_answer(question, shape, colour), question


def test_question_mixes():
    rng = random.Random(4)
    drawn = [shapes.question("circle", "red", rng, shape_share=1.0, yes_no_share=1.0, negated_share=0.0)
             for _ in range(200)]  # fmt: skip
    assert all(a in ("yes", "no") for _, a in drawn)
    assert not any(" not " in q or " no " in q for q, _ in drawn)
    assert not any("shape" in q.split() for q, _ in drawn)  # about shapes: "is there a circle?"
    assert 60 < sum(a == "yes" for _, a in drawn) < 140  # yes and no equally likely
    colour_only = [shapes.question("circle", "red", rng, shape_share=0.0, yes_no_share=0.0) for _ in range(50)]
    assert {a for _, a in colour_only} == {"red"}


def test_default_draws_replay_the_committed_runs():
    """The first three training runs drew their questions this way; new options must not move them."""
    rng = random.Random(0)
    assert [shapes.question("circle", "red", rng) for _ in range(4)] == [
        ("is no teal shape present?", "yes"),
        ("is no black shape present?", "yes"),
        ("does the image contain a rectangle?", "no"),
        ("what color is the circle?", "red"),
    ]
    rng = random.Random(0)
    assert [shapes.question("circle", "red", rng, shape_share=1.0) for _ in range(3)] == [
        ("is a circle present?", "yes"),
        ("is there a triangle in the image?", "no"),
        ("does the image not contain a circle?", "no"),
    ]


@pytest.mark.parametrize(
    "question, answer, targets",
    [
        ("is there a red shape?", "no", (train.NAMED.index("red"), 0)),
        ("is there not a red shape?", "no", (train.NAMED.index("red"), 1)),
        ("is no circle present?", "yes", (train.NAMED.index("circle"), 0)),
        ("does the image not contain a triangle?", "no", (train.NAMED.index("triangle"), 1)),
        ("what is the red shape?", "circle", (train.NAMED.index("red"), -100)),
        ("what shape is present?", "circle", (-100, -100)),
    ],
)
def test_auxiliary_targets(question, answer, targets):
    assert train.auxiliary_targets(question, answer) == targets

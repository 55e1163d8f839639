"""The earlier easy-VQA demo model (`builtin:easy-vqa`): loaded like any checkpoint directory, and it
answers. The default model is now `builtin:scenes` (tests/test_scenes_model.py)."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from typer.testing import CliRunner

from tokentrim_cli import model as model_lib
from tokentrim_cli.cli import app

runner = CliRunner()
easy_vqa = pytest.importorskip("easy_vqa")
EASY = ["-m", "builtin:easy-vqa"]

# Fixed easy-VQA test questions (indices into get_test_questions()): open shape and colour
# questions, which need the picture, among the first 60 (the committed model answers these right;
# a change in loading or preprocessing would show here first), and two yes/no questions.
FIXED = [0, 1, 3, 4, 11, 18, 19, 27, 44, 46, 53, 54]


def test_builtin_easy_vqa_is_the_bundled_checkpoint_directory(monkeypatch):
    folder = resources.files("tokentrim_cli") / "demo_model"
    assert model_lib.builtin_directory("builtin:easy-vqa") == model_lib.DEMO_MODEL
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        assert (folder / name).is_file(), name
    assert model_lib.default_model_id() == "builtin:scenes"
    monkeypatch.setenv("TOKENTRIM_MODEL", "random:tiny")
    assert model_lib.default_model_id() == "random:tiny"


def test_loads_through_the_ordinary_directory_path():
    loaded = model_lib.load_llava("builtin:easy-vqa", device="cpu")
    assert loaded.info.revision == "local" and loaded.info.model_type == "llava"
    assert loaded.info.num_layers == 32  # LLaVA-1.5-7B's depth: every shipped profile applies as written
    config = loaded.model.config
    n_visual = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    assert n_visual >= 256


def test_answers_fixed_easy_vqa_test_questions(tmp_path, monkeypatch):
    monkeypatch.delenv("TOKENTRIM_MODEL", raising=False)
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    data = tmp_path / "fixed.jsonl"
    lines = [{"image": paths[image_ids[i]], "prompt": questions[i], "answer": answers[i]} for i in FIXED]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = runner.invoke(app, ["eval", *EASY, "--data", str(data), "--json", "--profile", "baseline", "--profile", "fastv"])
    assert result.exit_code == 0, result.stderr
    baseline, fastv = json.loads(result.stdout)["profiles"]
    assert baseline["predictions"] == [answers[i] for i in FIXED]
    assert fastv["accuracy"] >= 11 / 12


def test_accuracy_floor_on_a_seeded_test_sample(monkeypatch):
    """Far below the published figure, far above chance: catches a broken load or preprocessing."""
    monkeypatch.delenv("TOKENTRIM_MODEL", raising=False)
    args = ["eval", *EASY, "--dataset", "easy-vqa", "--split", "test", "--limit", "96", "--seed", "1", "--batch-size", "32"]
    result = runner.invoke(app, [*args, "--max-new-tokens", "3", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["profiles"][0]["accuracy"] >= 0.75


def test_answers_about_its_sample_picture():
    sample = str(resources.files("tokentrim_cli") / "samples" / "red-circle.png")
    for prompt, expected in [("What shape is in the image?", "circle"), ("What color is the shape?", "red")]:
        result = runner.invoke(app, ["chat", *EASY, "-i", sample, "-p", prompt, "--json"])
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["text"].strip() == expected

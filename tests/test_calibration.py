"""Calibration: the KL and the choice rules as pure functions, the shared-prefix evaluation
against the naive loop, and `tokentrim calibrate` end to end with its bad-input paths."""

from __future__ import annotations

import json
import math

import pytest
import torch
from images import good_png
from typer.testing import CliRunner

from tokentrim_cli import calibration
from tokentrim_cli.calibration import choose_most_aggressive, choose_vtw_layer, kl_divergence, load_dataset
from tokentrim_cli.cli import app
from tokentrim_cli.errors import InputError
from tokentrim_cli.model import LoadInfo, Loaded
from tokentrim_cli.profiles import load_profile

runner = CliRunner()


def test_kl_divergence_by_hand():
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert kl_divergence(p.log(), q.log()) == pytest.approx(expected, rel=1e-6)
    assert kl_divergence(q.log(), q.log() + 3.0) == pytest.approx(0.0, abs=1e-7)  # logits up to a constant


def test_choose_vtw_layer():
    curve = [(5, 0.02), (6, 0.004), (7, 0.001), (8, 0.005), (9, 0.0001)]
    assert choose_vtw_layer(curve, 0.003, 32) == (7, True)  # the smallest qualifying K, not the last
    assert choose_vtw_layer(curve, 1e-9, 32) == (32, False)  # none qualifies: no withdrawal


def test_choose_most_aggressive():
    curve = [(0.1, 0.001), (0.2, 0.01), (0.3, 0.2), (0.4, 0.05)]
    assert choose_most_aggressive(curve, 0.06) == (0.4, True)
    assert choose_most_aggressive(curve, 0.0001) == (None, False)


@pytest.fixture
def loaded(tiny):
    model, processor = tiny
    return Loaded(model, processor, LoadInfo("random:tiny", "random", "llava", "cpu", "float32", "none", "sdpa", 4, 0.0))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prefix_gives_the_naive_curve(loaded, attn):
    loaded.model.set_attn_implementation(attn)
    try:
        dataset = load_dataset(None, limit=3)
        fast = calibration.calibrate_vtw(loaded, dataset, eta=0.003, min_layer=1)
        naive = calibration.calibrate_vtw_naive(loaded, dataset, eta=0.003, min_layer=1)
    finally:
        loaded.model.set_attn_implementation("sdpa")
    assert [k for k, _ in fast.curve] == [1, 2, 3]
    for (_, a), (_, b) in zip(fast.curve, naive.curve):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-7)
    assert fast.params == naive.params


def test_builtin_dataset_and_hash_are_stable():
    first, second = load_dataset(None), load_dataset(None)
    assert len(first.samples) == 20 and first.sha256 == second.sha256
    assert load_dataset(None, limit=5).sha256 != first.sha256


@pytest.fixture
def jsonl(tmp_path):
    good_png(tmp_path / "a.png")
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"image": "a.png", "prompt": "What is it?"}) + "\n")
    return path


def calibrate(*args):
    return runner.invoke(app, ["calibrate", "-m", "random:tiny", *args])


def test_vtw_calibration_end_to_end(tmp_path, jsonl, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = calibrate("--data", str(jsonl), "--min-layer", "1", "--eta", "1000", "--plot", "kl.png")
    assert result.exit_code == 0, result.stderr
    path = tmp_path / "profiles" / "vtw-random-tiny.toml"
    profile = load_profile(str(path))
    assert profile.method == "vtw" and profile.params.layer == 1  # a huge eta: the first candidate qualifies
    assert profile.applies_to == {"models": ["random:tiny"], "revision": "random"}
    cal = profile.calibration
    assert cal["samples"] == 1 and cal["threshold"] == 1000 and cal["dataset"] == str(jsonl)
    assert [k for k, _ in cal["curve"]] == [1, 2, 3] and cal["dataset_hash"].startswith("sha256:")
    assert (tmp_path / "kl.png").read_bytes()[:4] == b"\x89PNG"
    assert runner.invoke(app, ["profiles", "validate", str(path)]).exit_code == 0
    chat = runner.invoke(app, ["chat", "-m", "random:tiny", "--profile", str(path), "-i", str(tmp_path / "a.png"),
                               "-p", "hi", "--max-new-tokens", "2", "--json"])  # fmt: skip
    assert chat.exit_code == 0, chat.stderr
    assert json.loads(chat.stdout)["visual_tokens"]["per_layer"] == [16, 0, 0, 0]


def test_vtw_calibration_json_and_fallback(tmp_path, jsonl):
    out = tmp_path / "p.toml"
    result = calibrate("--data", str(jsonl), "--min-layer", "1", "--eta", "1e-30", "--output", str(out), "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["qualified"] is False and document["chosen"] == 4  # K = L: no withdrawal
    assert len(document["curve"]) == 3 and document["profile"] == str(out)
    assert load_profile(str(out)).params.layer == 4


def test_knob_calibration(tmp_path, jsonl):
    out = tmp_path / "fastv.toml"
    result = calibrate("--method", "fastv", "--kl-budget", "1000", "--data", str(jsonl), "--output", str(out))
    assert result.exit_code == 0, result.stderr
    assert load_profile(str(out)).params.drop_ratio == 0.95  # a loose budget admits the most aggressive
    strict = calibrate("--method", "fastv", "--kl-budget", "1e-30", "--data", str(jsonl), "--output", str(out))
    assert strict.exit_code == 0 and "no setting met the threshold" in strict.stderr
    assert load_profile(str(out)).params.drop_ratio == 0.0  # fallback: trim nothing


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json\n", "line 1: not valid JSON"),
        ('{"image": "a.png", "prompt": "ok"}\n{"image": 3}\n', 'line 2: expected {"image": "...", "prompt": "..."}'),
        ('{"image": "missing.png", "prompt": "ok"}\n', "missing.png: no such file"),
        ('{"image": "bad.png", "prompt": "ok"}\n', "bad.png: not an image file"),
        ("\n\n", "no samples"),
    ],
)
def test_bad_data_exits_3_and_writes_nothing(tmp_path, content, message):
    good_png(tmp_path / "a.png")
    (tmp_path / "bad.png").write_text("text")
    data = tmp_path / "data.jsonl"
    if content is not None:
        data.write_text(content)
    out = tmp_path / "out.toml"
    result = calibrate("--data", str(data), "--output", str(out))
    assert result.exit_code == 3, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_eta_must_be_positive(tmp_path):
    result = calibrate("--eta", "0", "--output", str(tmp_path / "x.toml"))
    assert result.exit_code == 3 and "--eta must be > 0, got 0.0" in result.stderr


def test_knob_methods_need_a_budget():
    assert calibrate("--method", "st3").exit_code == 2


def test_interrupted_calibration_leaves_no_file(tmp_path, jsonl, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(calibration, "calibrate_vtw", interrupted)
    result = calibrate("--data", str(jsonl), "--output", str(tmp_path / "x.toml"))
    assert result.exit_code == 130
    assert not (tmp_path / "x.toml").exists()


def test_load_dataset_resolves_relative_images(jsonl):
    dataset = load_dataset(str(jsonl))
    assert dataset.samples[0].image.source == str(jsonl.parent / "a.png")
    with pytest.raises(InputError):
        load_dataset(str(jsonl.parent / "nope.jsonl"))

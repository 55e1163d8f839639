"""`tokentrim eval`: normalised exact match, the table and JSON on a tiny JSONL, bad inputs."""

from __future__ import annotations

import json

import pytest
from images import good_png
from typer.testing import CliRunner

from tokentrim_cli.cli import app
from tokentrim_cli.evaluation import exact_match, normalize

runner = CliRunner()
TINY = ["eval", "-m", "random:tiny", "--max-new-tokens", "3"]


def test_normalisation():
    assert normalize("  Red.  ") == "red" and normalize("Dark\n  Blue") == "dark blue"
    assert exact_match("Circle.", ["circle", "round"]) and not exact_match("circles", ["circle"])
    assert normalize("e.g.") == "e.g"  # only one final period goes


@pytest.fixture
def qa(tmp_path):
    """Three samples whose expected answers are what the baseline says for the first two."""
    good_png(tmp_path / "red.png")
    good_png(tmp_path / "blue.png", (30, 50), (10, 20, 200))
    lines = [{"image": "red.png", "prompt": "What colour?"}, {"image": "blue.png", "prompt": "What shape?"},
             {"image": "red.png", "prompt": "Is it red?"}]  # fmt: skip
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps(dict(line, answer="placeholder")) for line in lines) + "\n")
    first = runner.invoke(app, [*TINY, "--data", str(path), "--json"])
    assert first.exit_code == 0, first.stderr
    said = json.loads(first.stdout)["profiles"][0]["predictions"]
    answers = [[said[0]], said[1], "certainly not this"]
    path.write_text("\n".join(json.dumps(dict(line, answer=a)) for line, a in zip(lines, answers)) + "\n")
    return path


def test_eval_json_and_table(qa, tmp_path):
    plot = tmp_path / "pareto.png"
    # The same batch as the fixture's run: random weights give near-uniform logits, so a different
    # padding could flip a greedy pick (batched == per-sample is tested with a sharpened head).
    result = runner.invoke(app, [*TINY, "--data", str(qa), "--profile", "baseline", "--profile", "fastv",
                                 "--json", "--plot", str(plot)])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["samples"] == 3 and document["reference"] == "baseline"
    assert document["dataset"] == str(qa) and "FastV convention" in document["flops_formula"]
    baseline, fastv = document["profiles"]
    assert baseline["correct"] == [True, True, False] and baseline["accuracy"] == pytest.approx(2 / 3)
    assert baseline["retention"] == 1.0 and baseline["agreement"] == 1.0 and baseline["prefill_flops_ratio"] == 1.0
    assert baseline["visual_tokens"] == {"input": 16.0, "layer_averaged": 16.0}
    assert fastv["visual_tokens"] == {"input": 16.0, "layer_averaged": 12.0} and fastv["prefill_flops_ratio"] < 1.0
    assert fastv["retention"] == pytest.approx(fastv["accuracy"] / baseline["accuracy"])
    agreeing = sum(a.strip().lower() == b.strip().lower() for a, b in zip(fastv["predictions"], baseline["predictions"]))
    assert fastv["agreement"] == pytest.approx(agreeing / 3)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    table = runner.invoke(app, [*TINY, "--data", str(qa), "--profile", "baseline", "--profile", "fastv"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "66.7%" in table.stdout and "100.0%" in table.stdout and "16.0 (12.0)" in table.stdout


def test_easy_vqa_dataset_sample_is_seeded():
    args = [*TINY, "--dataset", "easy-vqa", "--split", "test", "--limit", "2", "--seed", "3", "--json"]
    first, second = (json.loads(runner.invoke(app, args).stdout) for _ in range(2))
    assert first["samples"] == 2 and first["dataset"].startswith("easy-vqa test (2 of ")
    assert first["dataset_sha256"] == second["dataset_sha256"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ('{"image": "red.png", "prompt": "a", "answer": "b"}\nnot json\n', "line 2: not valid JSON"),
        ('{"image": "red.png", "prompt": "a"}\n', 'line 1: expected {"image": "...", "prompt": "...", "answer"'),
        ('{"image": "red.png", "prompt": "a", "answer": []}\n', "line 1: expected"),
        ('{"image": "gone.png", "prompt": "a", "answer": "b"}\n', "gone.png: no such file"),
        ("\n", "no samples"),
    ],
)
def test_bad_data_exits_3(tmp_path, content, message):
    good_png(tmp_path / "red.png")
    path = tmp_path / "qa.jsonl"
    if content is not None:
        path.write_text(content)
    result = runner.invoke(app, [*TINY, "--data", str(path)])
    assert result.exit_code == 3, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_data_or_dataset_but_not_both(qa):
    assert runner.invoke(app, TINY).exit_code == 2
    assert runner.invoke(app, [*TINY, "--data", str(qa), "--dataset", "easy-vqa"]).exit_code == 2


def test_short_answers_and_descriptions_are_batched_apart(monkeypatch):
    """A batch decodes as long as its longest answer: scenes' one-word answers are never batched
    with descriptions, and each batch gets its own cap (the answers still come back in order)."""
    from tokentrim_cli import evaluation, generation
    from tokentrim_cli.benchmarks import SCENES_DESCRIBE_TOKENS, SCENES_SHORT_TOKENS, load_scenes
    from tokentrim_cli.model import load_llava
    from tokentrim_cli.profiles import load_profile

    calls = []
    real = generation.answer_batch

    def spy(loaded, profile, requests, *, max_new_tokens):
        calls.append((max_new_tokens, [prompt for _, prompt in requests]))
        return real(loaded, profile, requests, max_new_tokens=2)  # short: the test is about batching

    monkeypatch.setattr(generation, "answer_batch", spy)
    evalset = load_scenes(limit=14, seed=1)
    kinds = {s.prompt: s.category for s in evalset.samples}
    assert "describe" in kinds.values() and len(set(kinds.values())) > 2
    report = evaluation.evaluate(load_llava("random:tiny", device="cpu"), [load_profile("baseline")], evalset, batch_size=4)
    for cap, prompts in calls:
        describe = {kinds[p] == "describe" for p in prompts}
        assert len(describe) == 1 and cap == (SCENES_DESCRIBE_TOKENS if describe.pop() else SCENES_SHORT_TOKENS)
    assert [r.id for r in report.rows[0].records] == [s.id for s in evalset.samples]

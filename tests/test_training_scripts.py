"""Training scripts: the demo model's drawn questions and mixes, old runs replay; the default model's
answer labels and training record."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

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


# ---- the default model's scripts (scripts/train_scenes_model.py, scripts/record_training.py) ----------


def parsed_log(tmp_path: Path, text: str) -> dict:
    """record_training.parse of a training log with these lines."""
    record = pytest.importorskip("record_training")
    log = tmp_path / "run.log"
    log.write_text(text)
    return record.parse(log)


def test_the_training_record_is_rebuilt_from_a_log(tmp_path):
    run = parsed_log(
        tmp_path,
        '[23:50:00] arguments: {"out": "runs/a", "init": "None", "projector_steps": "2", "lora_steps": "4", "seed": "0", "log": "a.log"}\n'
        "[23:50:01] stage 1: projector (554,112 parameters), 2 steps\n"
        "[23:55:00] step 2/2 loss 1.2500 lr 1.00e-03 5.0 min\n"
        '[23:56:00] held-out after step 2: {"color": 0.5, "short": 0.25}\n'
        "[23:56:01] stage 2: projector + LoRA (5,438,592 parameters), 4 steps\n"
        "[00:05:00] step 2/4 loss 0.5000 lr 3.00e-04 15.0 min\n"
        "[00:10:00] time budget of 20.0 min reached at step 3\n"
        "[00:10:00] done in 20.0 min; next --seed-offset 24\n",
    )
    assert run["command"] == "python scripts/train_scenes_model.py --out runs/a --projector-steps 2 --lora-steps 4 --seed 0"
    assert run["minutes"] == 20.0  # across midnight
    # stage 2 did 3 steps: the time budget's line says so; its last logged step is 2
    assert [s["steps_done"] for s in run["stages"]] == [2, 3] and run["stages"][1]["steps_planned"] == 4
    assert run["stages"][0]["held_out"] == [{"step": 2, "color": 0.5, "short": 0.25}]
    assert run["stopped"] == "time budget of 20.0 min reached at step 3; done in 20.0 min; next --seed-offset 24"
    assert run["stages"][1]["log"] == [{"step": 2, "loss": 0.5, "lr": 3e-4, "minutes": 15.0}]


def test_the_training_record_keeps_the_count_probes_loss(tmp_path):
    run = parsed_log(
        tmp_path,
        '[10:00:00] arguments: {"out": "runs/a", "lora_steps": "20", "count_probe_layer": "20", "log": "a.log"}\n'
        "[10:00:01] stage 2: LoRA of layers 14 and up (3,000 parameters), 20 steps\n"
        "[10:05:00] step 10/20 loss 1.1000 count probe loss 0.9000 right 0.625 lr 3.00e-04 5.0 min\n"
        "[10:10:00] step 20/20 loss 0.2000 lr 3.00e-05 10.0 min\n"
        "[10:15:00] step 30/20 loss 1.3000 count probe loss 0.8000 right 0.700 anchor probe loss 0.4000 right 0.910 "
        "lr 2.00e-05 15.0 min\n"
        "[10:20:00] step 40/20 loss 1.2000 anchor probe loss 0.3000 right 0.950 lr 1.00e-05 20.0 min\n"
        "[10:25:00] step 50/20 loss 1.0000 anchor probe loss 0.2000 right 0.960 tally probe loss 0.1500 right 0.810 "
        "lr 1.00e-05 25.0 min\n",
    )
    assert run["stages"][0]["log"] == [
        {"step": 10, "loss": 1.1, "lr": 3e-4, "minutes": 5.0, "count_probe_loss": 0.9, "count_probe_right": 0.625},
        {"step": 20, "loss": 0.2, "lr": 3e-5, "minutes": 10.0},
        {"step": 30, "loss": 1.3, "lr": 2e-5, "minutes": 15.0, "count_probe_loss": 0.8, "count_probe_right": 0.7,
         "anchor_probe_loss": 0.4, "anchor_probe_right": 0.91},
        {"step": 40, "loss": 1.2, "lr": 1e-5, "minutes": 20.0, "anchor_probe_loss": 0.3, "anchor_probe_right": 0.95},
        {"step": 50, "loss": 1.0, "lr": 1e-5, "minutes": 25.0, "anchor_probe_loss": 0.2, "anchor_probe_right": 0.96,
         "tally_probe_loss": 0.15, "tally_probe_right": 0.81},
    ]


def test_a_run_can_widen_the_adapter_it_continues(tmp_path):
    """load_trained into a LoRA of a higher rank (and another alpha) computes what the saved
    adapter computed: the same logits as the model it was saved from; a lower rank is refused."""
    import torch

    train_scenes = pytest.importorskip("train_scenes_model")
    pytest.importorskip("peft")
    from tokentrim_cli.model import build_random

    def with_lora(rank, alpha):
        model, _ = build_random("tiny", seed=0)
        train_scenes.add_lora(model, rank, alpha)
        return model.eval()

    saved = with_lora(4, 8.0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in saved.named_parameters():
            if "lora_" in name:  # B starts at zero: give the adapter something to carry
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    train_scenes.save_trained(saved, tmp_path / "r4", 4, 8.0)
    ids = torch.randint(5, 100, (1, 12), generator=generator)
    with torch.no_grad():
        same = with_lora(4, 8.0)  # the saved adapter (bf16 on disk) loaded at its own rank
        train_scenes.load_trained(same, tmp_path / "r4")
        before = same.model.language_model(input_ids=ids).last_hidden_state
        plain = with_lora(4, 8.0).model.language_model(input_ids=ids).last_hidden_state
        assert not torch.allclose(before, plain, atol=1e-3)  # the adapter changes the output
        wide = with_lora(8, 4.0)
        train_scenes.load_trained(wide, tmp_path / "r4")
        after = wide.model.language_model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    with pytest.raises(SystemExit, match="rank 4, more than --rank 2"):
        train_scenes.load_trained(with_lora(2, 4.0), tmp_path / "r4")


def test_training_from_a_layer_up_stops_the_gradients_there():
    """--train-from-layer K: only the adapter of layers K and up trains; the projector and the lower
    layers' adapter get no gradient (backpropagation stops at layer K); K = 0 trains the projector
    and the whole adapter, and a K past the last layer trains nothing."""
    import torch

    train_scenes = pytest.importorskip("train_scenes_model")
    pytest.importorskip("peft")
    from tokentrim_cli.model import build_random

    model, _ = build_random("tiny", seed=0)
    train_scenes.add_lora(model, 4, 8.0)
    layers = model.config.text_config.num_hidden_layers
    names = {id(p): n for n, p in model.named_parameters()}
    everything = train_scenes.stage_two_parameters(model, 0)
    assert {names[id(p)] for p in everything} == {n for n, _ in model.named_parameters() if "lora_" in n or "multi_modal_projector" in n}
    assert train_scenes.stage_two_parameters(model, layers) == []
    first = layers - 1
    chosen = train_scenes.stage_two_parameters(model, first)
    assert chosen and all(f"layers.{first}." in names[id(p)] and "lora_" in names[id(p)] for p in chosen)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # B starts at zero, and then A's gradient would be zero too
                parameter.normal_(0, 0.1)
    pixels = torch.randn(1, 3, model.config.vision_config.image_size, model.config.vision_config.image_size)
    image_token = model.config.image_token_id
    tokens = model.config.vision_config.image_size // model.config.vision_config.patch_size
    ids = torch.tensor([[1] + [image_token] * (tokens * tokens) + [5, 6, 7]])
    model(input_ids=ids, pixel_values=pixels).logits[0, -1].sum().backward()
    for name, parameter in model.named_parameters():
        trained = any(parameter is p for p in chosen)
        assert (parameter.grad is not None) == trained, name
        if trained:
            assert parameter.grad.abs().sum() > 0, name


def test_a_log_started_on_another_day_gets_its_own_date():
    record = pytest.importorskip("record_training")
    assert record.log_dates(["run12.log=2026-12-02"], ["run11.log", "run12.log"]) == {"run12.log": "2026-12-02"}
    with pytest.raises(SystemExit, match="not one of the logs"):
        record.log_dates(["run13.log=2026-12-02"], ["run11.log", "run12.log"])
    with pytest.raises(SystemExit, match="YYYY-MM-DD"):
        record.log_dates(["run12.log=12/02"], ["run12.log"])


def test_appending_keeps_the_earlier_record_and_refuses_a_log_twice():
    record = pytest.importorskip("record_training")
    earlier = {"runs": [{"log": "run2.log", "minutes": 30.0}], "not_adopted": [{"log": "run8.log", "minutes": 40.0}]}
    runs, not_adopted = record.appended(earlier, [{"log": "run20.log", "minutes": 27.0}], [{"log": "run19.log", "minutes": 33.0}])
    assert [r["log"] for r in runs] == ["run2.log", "run20.log"]
    assert [r["log"] for r in not_adopted] == ["run8.log", "run19.log"]
    assert record.appended({}, [{"log": "run2.log"}], []) == ([{"log": "run2.log"}], [])
    with pytest.raises(SystemExit, match="run8.log is already recorded"):
        record.appended(earlier, [{"log": "run8.log"}], [])


def test_appended_entries_carry_their_own_versions_and_the_earlier_ones_keep_theirs():
    record = pytest.importorskip("record_training")
    then = {"torch": "2.12.0", "cpu": "x86_64"}
    now = {"torch": "2.13.0", "cpu": "AMD EPYC 9R14", "cpu_capability": "AVX512"}
    earlier = {"runs": [{"log": "run2.log", "minutes": 30.0}], "versions": then}
    document = record.record(earlier, [], [{"log": "run30.log", "minutes": 45.0}], now)
    assert document["versions"] == then  # the runs recorded without their own versions are not re-dated
    assert document["not_adopted"] == [{"log": "run30.log", "minutes": 45.0, "versions": now}]
    assert "versions" not in document["runs"][0]
    assert document["total_minutes"] == 30.0  # a not-adopted run's minutes are not the shipped weights'
    fresh = record.record({}, [{"log": "run1.log", "minutes": 12.0}], [], now)
    assert fresh["versions"] == now and fresh["runs"][0]["versions"] == now
    with pytest.raises(SystemExit, match="no runs"):
        record.record({}, [], [{"log": "run8.log", "minutes": 1.0}], now)


def test_adopting_moves_a_lineage_of_not_adopted_runs_into_the_shipped_runs():
    record = pytest.importorskip("record_training")

    def run(name, init):
        return {"log": name, "arguments": {"init": init}, "minutes": 10.0}

    earlier = {
        "runs": [run("run11.log", "tokentrim_cli/scenes_model")],
        "not_adopted": [run("run22.log", "/work/runs/run21"), run("run23.log", "tokentrim_cli/scenes_model"),
                        run("run24.log", "/work/runs/run23"), run("run25.log", "benchmarks/curriculum/run24")],
        "versions": {"torch": "2.12.0"},
    }  # fmt: skip
    after = record.adopted(earlier, ["run23.log", "run24.log", "run25.log"])
    assert [r["log"] for r in after["runs"]] == ["run11.log", "run23.log", "run24.log", "run25.log"]
    assert [r["log"] for r in after["not_adopted"]] == ["run22.log"]
    assert after["versions"] == earlier["versions"]
    with pytest.raises(SystemExit, match="run25.log: it started from benchmarks/curriculum/run24, not from run23"):
        record.adopted(earlier, ["run23.log", "run25.log"])  # a lesson left out: not the shipped lineage
    with pytest.raises(SystemExit, match="run22.log: it started from /work/runs/run21, not from scenes_model"):
        record.adopted(earlier, ["run22.log"])
    with pytest.raises(SystemExit, match="run11.log: not a recorded not-adopted run"):
        record.adopted(earlier, ["run11.log"])
    # a soup's branches, each from the shipped folder: adopted with their soup, never as a lineage alone
    branches = earlier | {"not_adopted": [run("run56.log", "tokentrim_cli/scenes_model"),
                                          run("run57.log", "tokentrim_cli/scenes_model"), run("run58.log", "runs/run55")]}  # fmt: skip
    after = record.adopted(branches, ["run56.log", "run57.log"], branches=True)
    assert [r["log"] for r in after["runs"]] == ["run11.log", "run56.log", "run57.log"]
    with pytest.raises(SystemExit, match="run57.log: it started from tokentrim_cli/scenes_model, not from run56"):
        record.adopted(branches, ["run56.log", "run57.log"])
    with pytest.raises(SystemExit, match="run58.log: it started from runs/run55, not from run57 or scenes_model"):
        record.adopted(branches, ["run56.log", "run57.log", "run58.log"], branches=True)


def test_a_soup_of_recorded_runs_is_recorded_apart_with_the_command_that_rebuilds_it():
    record = pytest.importorskip("record_training")
    earlier = {"runs": [{"log": "run49.log", "minutes": 45.0}],
               "not_adopted": [{"log": "run50.log", "minutes": 53.0}, {"log": "run52.log", "minutes": 48.6}]}  # fmt: skip
    soup = record.soup_entry("soup50-52=run50.log,run52.log", 16, "2026-12-04", earlier)
    assert soup == {"name": "soup50-52", "of": ["run50.log", "run52.log"], "rank": 16, "date": "2026-12-04",
                    "command": "python scripts/interpolate_trained.py runs/run50 runs/run52 --mean --rank 16 --out runs/soup50-52"}  # fmt: skip
    document = record.record(earlier | {"soups": [soup]}, [], [], {"torch": "2.13.0"})
    assert document["soups"] == [soup]
    assert document["total_minutes"] == 45.0  # a soup trains nothing: the shipped minutes do not move
    assert "soups" not in record.record(earlier, [], [], {"torch": "2.13.0"})
    with pytest.raises(SystemExit, match="run51.log is not a recorded run"):
        record.soup_entry("soup50-51=run50.log,run51.log", 16, "2026-12-04", earlier)
    with pytest.raises(SystemExit, match="two or more"):
        record.soup_entry("soup50=run50.log", 16, "2026-12-04", earlier)
    with pytest.raises(SystemExit, match="soup50-52 is already recorded"):
        record.soup_entry("soup50-52=run50.log,run52.log", 16, "2026-12-04", earlier | {"soups": [soup]})
    with pytest.raises(SystemExit, match="run50.log is not among the shipped weights' runs"):
        record.soup_adopted(earlier | {"soups": [soup]}, "soup50-52")  # its runs not adopted with it
    with pytest.raises(SystemExit, match="soup49-50: not a recorded soup"):
        record.soup_adopted(earlier | {"soups": [soup]}, "soup49-50")
    shipped = {"runs": [*earlier["runs"], *earlier["not_adopted"]], "soups": [soup | {"shipped": True}, soup | {"name": "old"}]}
    after = record.soup_adopted(shipped, "soup50-52")
    assert [entry["shipped"] for entry in after["soups"]] == [True, False]
    # runs adopted after the soup's: the shipped weights would not be the soup any more
    later = shipped | {"runs": [*shipped["runs"], {"log": "run53.log", "minutes": 43.3}]}
    with pytest.raises(SystemExit, match="must be the last of the shipped weights' runs .the last 2 are run52.log, run53.log"):
        record.soup_adopted(later, "soup50-52")


def test_a_soup_rank_without_a_soup_is_refused(tmp_path, monkeypatch, capsys):
    record = pytest.importorskip("record_training")
    output = tmp_path / "training.json"
    output.write_text(json.dumps({"runs": [{"log": "run49.log", "minutes": 45.0}]}), encoding="utf-8")
    monkeypatch.setattr(sys, "argv", ["record_training.py", "--append", "--soup-rank", "16", "--output", str(output)])
    with pytest.raises(SystemExit) as raised:
        record.main()
    assert raised.value.code == 2
    assert "--soup-rank is the rank of the soup given with --soup" in capsys.readouterr().err
    assert json.loads(output.read_text(encoding="utf-8")) == {"runs": [{"log": "run49.log", "minutes": 45.0}]}


def test_a_soups_branches_are_adopted_with_it_from_the_command_line(tmp_path, monkeypatch):
    """--adopt run56.log run57.log --adopt-soup soup56-57: two runs that each started from the shipped
    folder ship as their soup; the same --adopt without --adopt-soup is refused and writes nothing."""
    record = pytest.importorskip("record_training")
    monkeypatch.setattr(record, "versions", lambda: {"torch": "2.13.0"})

    def run(name):
        return {"log": name, "arguments": {"init": "tokentrim_cli/scenes_model"}, "minutes": 34.0}

    before = {"runs": [{"log": "run52.log", "minutes": 48.6}], "not_adopted": [run("run56.log"), run("run57.log")],
              "soups": [{"name": "soup56-57", "of": ["run56.log", "run57.log"], "rank": 16}]}  # fmt: skip
    output = tmp_path / "training.json"
    output.write_text(json.dumps(before), encoding="utf-8")
    adopt = ["record_training.py", "--append", "--adopt", "run56.log", "run57.log", "--output", str(output)]
    monkeypatch.setattr(sys, "argv", adopt)
    with pytest.raises(SystemExit, match="run57.log: it started from tokentrim_cli/scenes_model, not from run56"):
        record.main()
    assert json.loads(output.read_text(encoding="utf-8")) == before
    monkeypatch.setattr(sys, "argv", [*adopt, "--adopt-soup", "soup56-57"])
    record.main()
    after = json.loads(output.read_text(encoding="utf-8"))
    assert [r["log"] for r in after["runs"]] == ["run52.log", "run56.log", "run57.log"]
    assert "not_adopted" not in after and after["soups"][0]["shipped"] is True
    assert after["total_minutes"] == 116.6


def test_a_logged_flag_becomes_a_flag_in_the_rebuilt_command():
    record = pytest.importorskip("record_training")
    logged = {"out": "runs/b", "distinct": "True", "init": "None", "type_weights": "{'spatial': 10.0, 'position': 6.0}"}
    assert record.command(logged) == "python scripts/train_scenes_model.py --out runs/b --distinct --type-weights spatial=10,position=6"
    assert "--distinct" not in record.command({"out": "runs/b", "distinct": "False"})


def test_training_labels_cover_the_answers_only():
    from tokentrim_cli import assembly

    if not all(__import__("importlib").util.find_spec(c.module) for c in assembly.CARRIERS):
        pytest.skip(f"needs the carrier packages ({assembly.INSTALL_COMMAND})")
    train_scenes = pytest.importorskip("train_scenes_model")
    _, _, tokenizer = assembly.smollm2(assembly.verified_carrier(assembly.TEXT_CARRIER))
    tokenizer.chat_template = assembly.CHAT_TEMPLATE
    messages = [{"role": "user", "content": [{"type": "text", "text": "What color is the star?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "The star is red."}]},
                {"role": "user", "content": [{"type": "text", "text": "How many circles are there?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "2"}]}]  # fmt: skip
    import torch

    ids = torch.tensor([tokenizer(tokenizer.apply_chat_template(messages, tokenize=False))["input_ids"]])
    labels = train_scenes.answer_labels(ids, tokenizer)
    learned = tokenizer.decode([t for t, l in zip(ids[0].tolist(), labels[0].tolist()) if l != -100])
    assert learned == "The star is red.<|im_end|>2<|im_end|>"


def test_alignment_targets_cover_each_object():
    train_scenes = pytest.importorskip("train_scenes_model")
    from tokentrim_cli.scenes import SceneObject

    big = SceneObject("square", "red", "large", x=100.0, y=100.0, radius=30.0)
    small = SceneObject("star", "blue", "small", x=300.0, y=20.0, radius=13.0)
    owner = train_scenes.patch_objects([big, small], grid=24, patch=14.0)
    covered = {i: [(k // 24, k % 24) for k, o in enumerate(owner) if o == i] for i in (0, 1)}
    # patch centres within 22.5 px of (100, 100): rows/cols 5..8 around the centre patch (7, 7)
    assert (7, 7) in covered[0] and all(abs(r * 14 + 7 - 100) < 23 and abs(c * 14 + 7 - 100) < 23 for r, c in covered[0])
    assert (1, 21) in covered[1]  # the patch under the small object's centre, however small it is
    assert owner.count(-1) == 24 * 24 - len(covered[0]) - len(covered[1])


def test_type_weights_change_the_question_mix():
    train_scenes = pytest.importorskip("train_scenes_model")
    import argparse

    weights = train_scenes.parse_type_weights("count_color=5, spatial=0")
    assert weights["count_color"] == 5 and weights["spatial"] == 0 and weights["shape"] == train_scenes.TYPE_WEIGHTS["shape"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown question type 'colour'"):
        train_scenes.parse_type_weights("colour=2")
    only_counts = {kind: 0.0 for kind in train_scenes.TYPE_WEIGHTS} | {"count_shape": 1.0}
    _, messages = train_scenes.conversation(7, 6, 1.0, random.Random(0), only_counts)
    prompts = [m["content"][-1]["text"] for m in messages if m["role"] == "user"]
    assert len(prompts) == 6 and all("How many" in p for p in prompts)


def test_a_logged_question_mix_becomes_its_command_line_form():
    record = pytest.importorskip("record_training")
    train_scenes = pytest.importorskip("train_scenes_model")

    logged = str(train_scenes.parse_type_weights("count_color=5,spatial=6"))  # how the training log writes it
    line = record.command({"out": "runs/b", "type_weights": logged})
    assert line.startswith("python scripts/train_scenes_model.py --out runs/b --type-weights count_color=5,count_shape=3,")
    assert train_scenes.parse_type_weights(line.split("--type-weights ")[1]) == train_scenes.parse_type_weights("count_color=5,spatial=6")
    for relations in ("left", "right,below"):  # --relations, logged as a tuple
        line = record.command({"relations": str(train_scenes.parse_relations(relations))})
        assert line == f"python scripts/train_scenes_model.py --relations {relations}"


def as_recorded_runs_drew(seed: int, narrow: float, small: float = 0.0, few: float = 0.0):
    """A training picture's objects as the recorded runs (5-55) drew them with these narrow, small and
    few shares, written out here apart from training_scene."""
    from tokentrim_cli import scenes

    choose = random.Random(f"narrow-{seed}")
    shapes, colors = scenes.SHAPES, tuple(scenes.COLORS)
    if choose.random() < narrow:
        colors = tuple(choose.sample(tuple(scenes.COLORS), choose.randint(2, 3)))
        shapes = tuple(choose.sample(scenes.SHAPES, choose.randint(2, 3)))
    sizes = ("small",) if random.Random(f"small-{seed}").random() < small else ("small", "large")
    counts = (2, 3) if random.Random(f"few-{seed}").random() < few else (3, 8)
    return scenes.place_objects(random.Random(seed), shapes, colors, sizes, counts)


def test_narrowed_training_scenes_make_counts_past_one_common():
    train_scenes = pytest.importorskip("train_scenes_model")
    from tokentrim_cli import scenes

    seeds = [scenes.TRAIN_SEED + n for n in range(60)]
    plain = train_scenes.training_scene(seeds[0], train_scenes.PictureMix(0.0))  # share 0: the scene as every earlier run drew it
    assert plain[1] == scenes.scene(seeds[0])[1] and plain[0].tobytes() == scenes.scene(seeds[0])[0].tobytes()
    narrowed = [train_scenes.training_scene(seed, train_scenes.PictureMix(1.0))[1] for seed in seeds]
    for objects in narrowed:
        assert len({o.color for o in objects}) <= 3 and len({o.shape for o in objects}) <= 3
        assert scenes.MIN_OBJECTS <= len(objects) <= scenes.MAX_OBJECTS
    # recounted here: of the colours in a picture (what a count question asks about), how many
    # appear more than once
    def repeated(scenes_objects):
        counts = [n for objects in scenes_objects for n in Counter(o.color for o in objects).values()]
        return sum(n >= 2 for n in counts) / len(counts)

    assert repeated(narrowed) > 0.6
    assert repeated([scenes.place_objects(random.Random(seed)) for seed in seeds]) < 0.35
    half = [train_scenes.training_scene(seed, train_scenes.PictureMix(0.5))[1] for seed in seeds]
    share = sum(a != scenes.place_objects(random.Random(seed)) for a, seed in zip(half, seeds)) / len(seeds)
    assert 0.35 < share < 0.65 and half == [train_scenes.training_scene(seed, train_scenes.PictureMix(0.5))[1] for seed in seeds]


def test_small_only_training_scenes():
    """--small-share: that share of the pictures holds small objects alone, drawn independently of
    the narrowed share (both can apply); share 0 leaves every picture as the earlier runs drew it."""
    train_scenes = pytest.importorskip("train_scenes_model")
    from tokentrim_cli import scenes

    seeds = [scenes.TRAIN_SEED + n for n in range(80)]

    narrowed = [train_scenes.training_scene(seed, train_scenes.PictureMix(0.3, 0.0))[1] for seed in seeds]
    assert narrowed == [as_recorded_runs_drew(seed, 0.3) for seed in seeds]
    small = [train_scenes.training_scene(seed, train_scenes.PictureMix(0.0, 1.0))[1] for seed in seeds]
    assert all(o.size == "small" and o.radius <= scenes.SIZES["small"] * 1.1 for objects in small for o in objects)
    assert all(scenes.MIN_OBJECTS <= len(objects) <= scenes.MAX_OBJECTS for objects in small)
    assert sum(len(objects) for objects in small) / len(small) > 5  # small objects leave room for all of them
    both = [train_scenes.training_scene(seed, train_scenes.PictureMix(1.0, 1.0))[1] for seed in seeds]
    assert all(len({o.color for o in objects}) <= 3 and {o.size for o in objects} == {"small"} for objects in both)
    half = [train_scenes.training_scene(seed, train_scenes.PictureMix(0.0, 0.5))[1] for seed in seeds]
    only_small = [all(o.size == "small" for o in objects) for objects in half]
    plain = [objects == scenes.place_objects(random.Random(seed)) for objects, seed in zip(half, seeds)]
    assert 0.3 < sum(only_small) / len(seeds) < 0.7
    assert all(p or s for p, s in zip(plain, only_small))  # a picture is either unchanged or all small


def test_few_object_training_scenes():
    """--few-share: that share of the pictures holds two or three objects, drawn independently of the
    other shares; share 0 leaves every picture as the earlier runs drew it."""
    train_scenes = pytest.importorskip("train_scenes_model")
    from tokentrim_cli import scenes

    seeds = [scenes.TRAIN_SEED + n for n in range(80)]
    assert [train_scenes.training_scene(seed, train_scenes.PictureMix(0.0, 0.0, 0.0))[1] for seed in seeds] == [
        scenes.place_objects(random.Random(seed)) for seed in seeds
    ]
    few = [train_scenes.training_scene(seed, train_scenes.PictureMix(0.0, 0.0, 1.0))[1] for seed in seeds]
    assert all(len(objects) in (2, 3) for objects in few)
    assert {len(objects) for objects in few} == {2, 3}
    both = [train_scenes.training_scene(seed, train_scenes.PictureMix(1.0, 1.0, 1.0))[1] for seed in seeds]
    assert all(len(objects) in (2, 3) and {o.size for o in objects} == {"small"} for objects in both)
    half = [train_scenes.training_scene(seed, train_scenes.PictureMix(0.3, 0.0, 0.5))[1] for seed in seeds]
    narrowed_only = [train_scenes.training_scene(seed, train_scenes.PictureMix(0.3, 0.0, 0.0))[1] for seed in seeds]
    changed = [a != b for a, b in zip(half, narrowed_only)]
    assert 0.3 < sum(changed) / len(seeds) < 0.7
    assert all(len(objects) <= 3 for objects, c in zip(half, changed) if c)  # changed only by having fewer objects


def test_mixed_size_training_scenes():
    """--mixed-share: that share of the pictures has a shape and a colour each held by a large and a
    small object, made by changing shapes and colours only (sizes and places as placed), and the
    picture is drawn with the changed objects; share 0 leaves every picture as the earlier runs drew it."""
    train_scenes = pytest.importorskip("train_scenes_model")
    from tokentrim_cli import scenes

    seeds = [scenes.TRAIN_SEED + n for n in range(80)]

    unchanged = [train_scenes.training_scene(seed, train_scenes.PictureMix(0.3, 0.2, 0.1, 0.0, 0.0))[1] for seed in seeds]
    assert unchanged == [as_recorded_runs_drew(seed, 0.3, 0.2, 0.1) for seed in seeds]  # mixed and varied at 0

    def held_by_both_sizes(objects, attribute):
        return any({o.size for o in objects if getattr(o, attribute) == value} == {"large", "small"}
                   for value in {getattr(o, attribute) for o in objects})  # fmt: skip

    checked = 0
    for seed in seeds[:40]:
        placed = scenes.place_objects(random.Random(seed))
        image, objects = train_scenes.training_scene(seed, train_scenes.PictureMix(0.0, 0.0, 0.0, 1.0))
        assert [(o.size, o.x, o.y, o.radius) for o in objects] == [(o.size, o.x, o.y, o.radius) for o in placed]
        if {o.size for o in placed} != {"large", "small"}:
            assert objects == placed
            continue
        checked += 1
        assert held_by_both_sizes(objects, "shape") and held_by_both_sizes(objects, "color")
        assert sum(a != b for a, b in zip(objects, placed)) <= 2  # at most two small objects changed
        for o in objects:  # each object's centre shows its (possibly new) colour, through the noise
            pixel = image.getpixel((round(o.x), round(o.y)))
            assert max(abs(a - b) for a, b in zip(pixel, scenes.COLORS[o.color])) < 45, (seed, o, pixel)
    assert checked >= 30
    half = [train_scenes.training_scene(seed, train_scenes.PictureMix(0.0, 0.0, 0.0, 0.5))[1] for seed in seeds]
    changed = [objects != scenes.place_objects(random.Random(seed)) for objects, seed in zip(half, seeds)]
    assert 0.2 < sum(changed) / len(seeds) < 0.7


def test_varied_size_training_scenes():
    """--varied-share: that share of the pictures draw each object's radius over VARIED_SPREAD, wider
    than the evaluation's and never letting a small object reach a large one's size, and the picture
    is drawn at those radii; share 0 leaves every picture as the earlier runs drew it."""
    train_scenes = pytest.importorskip("train_scenes_model")
    from tokentrim_cli import scenes

    seeds = [scenes.TRAIN_SEED + n for n in range(80)]
    low, high = train_scenes.VARIED_SPREAD
    assert scenes.SIZES["small"] * high < scenes.SIZES["large"] * low  # the size names stay right
    varied = [train_scenes.training_scene(seed, train_scenes.PictureMix(varied=1.0)) for seed in seeds]
    radii = [(o.size, o.radius / scenes.SIZES[o.size]) for _, objects in varied for o in objects]
    assert all(low <= factor <= high for _, factor in radii)
    assert sum(not 0.9 <= factor <= 1.1 for _, factor in radii) > 0.6 * len(radii)  # the evaluation's spread
    assert {size for size, _ in radii} == {"small", "large"}
    wide = 0
    for image, objects in varied:  # a circle's colour reaches 0.8 of its radius out from its centre
        for o in objects:
            if o.shape != "circle":
                continue
            pixel = image.getpixel((round(o.x + 0.8 * o.radius), round(o.y)))
            assert max(abs(a - b) for a, b in zip(pixel, scenes.COLORS[o.color])) < 45, (o, pixel)
            wide += o.radius > scenes.SIZES["large"] * 1.1 / 0.8  # beyond any radius the evaluation draws
    assert wide >= 3
    half = [train_scenes.training_scene(seed, train_scenes.PictureMix(varied=0.5))[1] for seed in seeds]
    changed = [objects != scenes.place_objects(random.Random(seed)) for objects, seed in zip(half, seeds)]
    assert 0.3 < sum(changed) / len(seeds) < 0.7
    for objects, seed, differs in zip(half, seeds, changed):
        if differs:
            assert all(low <= o.radius / scenes.SIZES[o.size] <= high for o in objects)


def test_mixed_count_questions_ask_about_both_sizes():
    """The training weight count_mixed: the evaluation's count question, in its words, about a shape
    or colour held by a large and a small object; the subject and the answer are recomputed here from
    the object list, and a picture without such a shape or colour gets None."""
    train_scenes = pytest.importorskip("train_scenes_model")
    from tokentrim_cli import scenes

    rng = random.Random(3)
    kinds = Counter()
    for n in range(120):
        objects = train_scenes.training_scene(scenes.TRAIN_SEED + n, train_scenes.PictureMix(0.5, 0.0, 0.0, 0.5))[1]
        question = train_scenes.mixed_count_question(objects, rng)
        mixed = {(a, getattr(o, a)) for o in objects for a in ("shape", "color")
                 if {p.size for p in objects if getattr(p, a) == getattr(o, a)} == {"large", "small"}}  # fmt: skip
        if not mixed:
            assert question is None
            continue
        counted = question.text.removeprefix("How many ").removesuffix(" are there?")
        if question.type == "count_color":
            subject = ("color", counted.removesuffix(" objects"))
        else:
            subject = ("shape", next(shape for shape, plural in scenes.PLURALS.items() if plural == counted))
        assert subject in mixed, (question, mixed)
        assert question.answer == str(sum(getattr(o, subject[0]) == subject[1] for o in objects))
        assert question.type in ("count_shape", "count_color") and question.answer in question.sentence
        assert question.prompt.endswith(scenes.SHORT_ANSWER_SUFFIX)
        kinds[question.type] += 1
    assert kinds["count_shape"] >= 15 and kinds["count_color"] >= 15


def test_position_questions_have_the_right_answers():
    """The training-only position question, checked from the object list: the named object is found
    by its words and its centre compared with the middle of the picture here, not in the script."""
    train_scenes = pytest.importorskip("train_scenes_model")
    from tokentrim_cli import scenes

    rng = random.Random(11)
    asked = Counter()
    for seed in range(150):
        _, objects = scenes.scene(scenes.TRAIN_SEED + seed)
        question = train_scenes.position_question(objects, rng)
        if question is None:
            continue
        words = question.text.rstrip("?").split()
        name = words[2 : words.index("on" if "left" in words else "at")]
        matches = [o for o in objects if o.phrase.split()[-len(name) :] == name]
        assert len(matches) == 1, question.text  # the name picks out one object
        (o,) = matches
        centre = o.x if "left" in words else o.y
        assert abs(centre - 168) >= scenes.RELATION_GAP  # never a borderline object
        expected = ("left" if centre < 168 else "right") if "left" in words else ("top" if centre < 168 else "bottom")
        assert question.answer == expected and expected in question.sentence
        asked[question.answer] += 1
    assert min(asked[a] for a in ("left", "right", "top", "bottom")) >= 15  # all four answers are asked


def test_compare_questions_name_the_object_further_in_that_direction():
    """The training-only comparison, checked from the object list: both named objects are found by
    their words, and the answer is the one whose centre lies further in the asked direction (image
    y grows downwards), by at least RELATION_GAP."""
    train_scenes = pytest.importorskip("train_scenes_model")
    from tokentrim_cli import scenes

    def find(name, objects):
        matches = [o for o in objects if o.phrase.split()[-len(name.split()) :] == name.split()]
        assert len(matches) == 1, name
        return matches[0]

    direction = {"further left": ("x", -1), "further right": ("x", 1), "higher": ("y", -1), "lower": ("y", 1)}
    rng = random.Random(5)
    asked, answer_named_first = Counter(), Counter()
    for seed in range(150):
        _, objects = scenes.scene(scenes.TRAIN_SEED + seed)
        question = train_scenes.compare_question(objects, rng)
        if question is None:
            continue
        words, _, names = question.text.rstrip("?").removeprefix("Which is ").partition(", the ")
        first, second = names.split(" or the ")
        axis, sign = direction[words]
        a, b = find(first, objects), find(second, objects)
        delta = (getattr(a, axis) - getattr(b, axis)) * sign
        assert abs(delta) >= scenes.RELATION_GAP, question.text  # never a borderline pair
        assert question.answer == (first if delta > 0 else second), question.text
        assert question.sentence.startswith(f"The {question.answer} is {words} than the ")
        asked[words] += 1
        answer_named_first[question.answer == first] += 1
    assert min(asked.values()) >= 20 and len(asked) == 4  # every direction is asked
    assert min(answer_named_first[True], answer_named_first[False]) >= 40  # the answer is not always named first


def test_size_count_questions_count_one_shape_of_one_size():
    """The training-only count by size, checked from the object list: the size and the shape are
    read back from the question's words and the objects counted here, not in the script."""
    train_scenes = pytest.importorskip("train_scenes_model")
    from tokentrim_cli import scenes

    shape_of = {plural: shape for shape, plural in scenes.PLURALS.items()}
    rng = random.Random(3)
    answers, sizes, narrower = Counter(), Counter(), 0
    for seed in range(200):
        _, objects = scenes.scene(scenes.TRAIN_SEED + seed)
        question = train_scenes.size_count_question(objects, rng)
        size, plural = question.text.removeprefix("How many ").removesuffix(" are there?").split()
        shape = shape_of[plural]
        expected = sum(o.size == size and o.shape == shape for o in objects)
        assert question.type == "count_size" and question.answer == str(expected), question.text
        assert question.sentence == (f"There are no {size} {plural}." if expected == 0 else
                                     f"There is 1 {size} {shape}." if expected == 1 else
                                     f"There are {expected} {size} {plural}.")  # fmt: skip
        # what it adds to a shape's count: fewer than the shape's objects where the other size is there too
        narrower += expected < sum(o.shape == shape for o in objects)
        answers[min(expected, 2)] += 1
        sizes[size] += 1
    assert min(answers.values()) >= 15 and min(sizes.values()) >= 70  # 0, 1 and 2+ asked; both sizes
    assert narrower >= 30



def test_shape_colors_questions_list_every_object_of_the_shape_left_to_right():
    """The training-only "What colors are the stars?", checked from the object list: the shape is
    read back from the question's words, and the answer is that shape's objects' colours, left to
    right by centre, worked out here (a colour repeated when two of them share it)."""
    train_scenes = pytest.importorskip("train_scenes_model")
    from tokentrim_cli import scenes

    shape_of = {plural: shape for shape, plural in scenes.PLURALS.items()}
    rng = random.Random(5)
    lengths, repeats = Counter(), 0
    for seed in range(200):
        _, objects = scenes.scene(scenes.TRAIN_SEED + seed)
        question = train_scenes.shape_colors_question(objects, rng)
        shape = shape_of[question.text.removeprefix("What colors are the ").removesuffix("?")]
        mine = sorted((o for o in objects if o.shape == shape), key=lambda o: o.x)
        words = [o.color for o in mine]
        expected = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
        assert question.type == "shape_colors" and question.answer == expected, question.text
        assert question.sentence == (f"The {shape} is {expected}." if len(words) == 1 else f"The {scenes.PLURALS[shape]} are {expected}.")
        lengths[min(len(words), 3)] += 1
        repeats += len(set(words)) < len(words)
    assert lengths[1] >= 50 and lengths[2] >= 20 and lengths[3] >= 3  # one, two and more objects asked about
    assert repeats >= 1


def test_distinct_sequences_ask_no_question_twice_and_old_mixes_replay():
    train_scenes = pytest.importorskip("train_scenes_model")

    weights = train_scenes.parse_type_weights("spatial=10,position=6")
    for seed in range(10):
        _, messages = train_scenes.conversation(seed, 14, 0.6, random.Random(seed), weights, train_scenes.PictureMix(0.3),
                                                distinct=True)
        prompts = [m["content"][-1]["text"].split("\n")[0] for m in messages if m["role"] == "user"]
        assert len(prompts) == 14 and len(set(prompts)) == 14
    # The training-only questions are in TYPE_WEIGHTS with weight 0 by default: the committed runs' draws do not move.
    old = {k: v for k, v in train_scenes.TYPE_WEIGHTS.items() if k not in ("position", "compare", "count_size", "shape_colors")}
    mix = train_scenes.PictureMix(0.3)
    _, with_position = train_scenes.conversation(5, 8, 0.7, random.Random(1), dict(train_scenes.TYPE_WEIGHTS), mix)
    _, without = train_scenes.conversation(5, 8, 0.7, random.Random(1), old, mix)
    assert with_position == without


def test_a_later_range_of_held_out_questions_is_the_same_questions_and_none_of_the_first():
    train_scenes = pytest.importorskip("train_scenes_model")

    def asked(questions):
        return [(seed, q.type, q.text, q.answer) for seed, q in questions]

    later = train_scenes.holdout_questions(30, first=20)
    assert [seed for seed, _ in later] == list(range(train_scenes.HOLDOUT_SEED + 20, train_scenes.HOLDOUT_SEED + 50))
    assert asked(later) == asked(train_scenes.holdout_questions(50)[20:])
    assert not {seed for seed, _ in later} & {seed for seed, _ in train_scenes.holdout_questions(20)}


def test_the_position_probe_draws_fixed_questions_off_every_other_seed_space():
    train_scenes = pytest.importorskip("train_scenes_model")
    compare = pytest.importorskip("compare_trained")
    from tokentrim_cli import scenes

    first, again = compare.position_questions(12), compare.position_questions(12)
    assert [(s, q.text, q.answer) for s, q in first] == [(s, q.text, q.answer) for s, q in again]
    assert {q.type for _, q in first} == {"position", "spatial", "compare"}
    # not the evaluation, calibration, training, alignment or held-out (140 questions) pictures
    for seed, _ in first:
        assert scenes.EVAL_SEED + scenes.EVAL_PICTURES <= seed and scenes.CALIBRATION_SEED + 100 <= seed < scenes.TRAIN_SEED
        assert not train_scenes.HOLDOUT_SEED <= seed < train_scenes.HOLDOUT_SEED + 140


def test_training_on_some_relations_asks_only_those_and_all_four_replay():
    """--relations left: every spatial question in the training sequences asks "to the left of", with
    right answers (recomputed from the object list here, with this test's own reading of the
    question); all four relations draw exactly as scenes.make_question does."""
    train_scenes = pytest.importorskip("train_scenes_model")
    from tokentrim_cli import scenes

    assert train_scenes.parse_relations("above, left") == ("left", "above")
    for bad in ("lft", ""):
        with pytest.raises(Exception, match="relations are some of"):
            train_scenes.parse_relations(bad)
    weights = train_scenes.parse_type_weights("count_color=0,count_shape=0,color=0,shape=0,exist=0,describe=0,spatial=1")
    answers = []
    for seed in range(40):
        _, messages = train_scenes.conversation(seed, 4, 1.0, random.Random(seed), weights, relations=("left",))
        objects = scenes.scene_objects(seed)  # the picture conversation() drew (no share given)
        names = {name: o for o, name in scenes.named_objects(objects)}
        for ask, reply in zip(messages[::2], messages[1::2]):
            text = ask["content"][-1]["text"].split("\n")[0]
            first, second = text.removeprefix("Is the ").removesuffix("?").split(" to the left of the ")
            a, b = names[first], names[second]
            assert abs(a.x - b.x) >= scenes.RELATION_GAP
            answers.append(reply["content"][0]["text"])
            assert answers[-1] == ("yes" if a.x < b.x else "no"), text
    assert 0.3 < answers.count("yes") / len(answers) < 0.7
    for seed in range(30):  # the default: the same questions as before the option existed
        objects = scenes.scene_objects(seed)
        assert scenes.spatial_question(objects, random.Random(seed)) == scenes.make_question("spatial", objects, random.Random(seed))


def test_weighted_relations_ask_each_relation_its_share_with_right_answers():
    """--relations left,above=3: a quarter of the spatial questions ask "to the left of" and three
    quarters "above" (counted here from the questions' own words), each answered right by this
    test's reading of the objects; the logged weights give back the same command line."""
    train_scenes = pytest.importorskip("train_scenes_model")
    record = pytest.importorskip("record_training")
    from tokentrim_cli import scenes

    assert train_scenes.parse_relations("above=3, left") == {"left": 1.0, "above": 3.0}
    assert train_scenes.parse_relations("left,above") == ("left", "above")  # no weight: the recorded runs' form
    for bad in ("above=0", "above=-1", "above=x", "left,left=2", "up=2", "above=inf"):
        with pytest.raises(Exception, match="relations are some of"):
            train_scenes.parse_relations(bad)
    logged = str(train_scenes.parse_relations("left,above=3"))
    line = record.command({"relations": logged})
    assert line == "python scripts/train_scenes_model.py --relations left=1,above=3"
    assert train_scenes.parse_relations(line.split("--relations ")[1]) == {"left": 1.0, "above": 3.0}

    weights = train_scenes.parse_type_weights("count_color=0,count_shape=0,color=0,shape=0,exist=0,describe=0,spatial=1")
    asked = {"left": 0, "above": 0}
    for seed in range(150):
        _, messages = train_scenes.conversation(seed, 4, 1.0, random.Random(seed), weights,
                                                relations={"left": 1.0, "above": 3.0})  # fmt: skip
        objects = scenes.scene_objects(seed)
        names = {name: o for o, name in scenes.named_objects(objects)}
        for ask, reply in zip(messages[::2], messages[1::2]):
            text = ask["content"][-1]["text"].split("\n")[0].removeprefix("Is the ").removesuffix("?")
            relation = "left" if " to the left of the " in text else "above"
            first, second = text.split(" to the left of the " if relation == "left" else " above the ")
            a, b = names[first], names[second]
            holds = a.x < b.x if relation == "left" else a.y < b.y  # image y grows downwards
            assert abs(a.x - b.x if relation == "left" else a.y - b.y) >= scenes.RELATION_GAP
            assert reply["content"][0]["text"] == ("yes" if holds else "no"), text
            asked[relation] += 1
    share = asked["above"] / (asked["left"] + asked["above"])
    assert 0.68 < share < 0.82, asked  # 3 of 4 (about 600 questions: a standard error of 1.8 points)


def test_the_relation_probe_asks_each_relation_on_held_out_pictures():
    train_scenes = pytest.importorskip("train_scenes_model")
    compare = pytest.importorskip("compare_trained")
    from tokentrim_cli import scenes

    questions = compare.relation_questions(20)
    assert {r for _, r, _ in questions} == set(scenes.RELATIONS)
    for seed, relation, question in questions:
        assert f" {scenes.RELATIONS[relation][0]} the " in question.text
        assert not train_scenes.HOLDOUT_SEED <= seed < train_scenes.HOLDOUT_SEED + 1000
        assert seed >= scenes.EVAL_SEED + scenes.EVAL_PICTURES and seed < scenes.TRAIN_SEED
    assert [(s, q.text) for s, _, q in questions] == [(s, q.text) for s, _, q in compare.relation_questions(20)]


def test_bf16_training_is_refused_on_a_cpu_that_emulates_it(monkeypatch, fake_cpu):
    train_scenes = pytest.importorskip("train_scenes_model")
    import torch

    fake_cpu()  # AVX2 alone
    with pytest.raises(SystemExit, match="no native bfloat16 arithmetic .*: use --precision fp32"):
        train_scenes.check_precision("bf16")
    train_scenes.check_precision("fp32")
    fake_cpu(amx_tile=True)  # a CPU with AMX
    train_scenes.check_precision("bf16")

    monkeypatch.setattr(train_scenes, "PRECISION", "fp32")
    with train_scenes.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    monkeypatch.setattr(train_scenes, "PRECISION", "bf16")
    with train_scenes.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_no_held_out_questions_is_an_empty_check():
    train_scenes = pytest.importorskip("train_scenes_model")
    assert train_scenes.holdout_check(None, None, []) == {}  # --holdout 0: nothing asked, no model run


def test_committed_curriculum_checkpoints_continue_like_the_shipped_weights():
    """benchmarks/curriculum/<run>/ (experiments' weights, committed so that the next lesson can start
    from them on any machine: `--init benchmarks/curriculum/<run>`) hold the shipped folder's three
    files with the same tensors' names, shapes and dtypes and the same adapter settings (alpha apart:
    each folder's scaling is its own), and are runs that training.json records (not adopted, or
    adopted when their weights became the shipped ones), or soups it records of such runs."""
    from safetensors import safe_open

    from tokentrim_cli import assembly

    record = pytest.importorskip("record_training")
    root = Path(__file__).resolve().parent.parent
    folders = sorted(p for p in (root / "benchmarks" / "curriculum").iterdir() if p.is_dir())
    assert folders, "no committed curriculum checkpoint"
    training = json.loads((assembly.TRAINED_DIR / "training.json").read_text())
    recorded = record.recorded_logs(training)
    soups = {soup["name"] + ".log": soup["of"] for soup in training.get("soups", [])}  # rebuilt from recorded runs
    for parts in soups.values():
        assert set(parts) <= recorded, parts
    recorded |= set(soups)

    def layout(path: Path) -> dict:
        with safe_open(str(path), "pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}

    for folder in folders:
        assert folder.name + ".log" in recorded, folder.name
        config = json.loads((folder / assembly.ADAPTER_CONFIG).read_text())
        shipped = json.loads((assembly.TRAINED_DIR / assembly.ADAPTER_CONFIG).read_text())
        if folder.name + ".log" in soups:  # a soup folds each run's alpha/rank into B: written at scaling 1
            assert config["alpha"] == config["rank"]
        # alpha may differ (a soup's, or the shipped folder's once a soup ships): --init and the
        # assembly both scale each folder's adapter by its own alpha/rank
        assert {k: v for k, v in config.items() if k != "alpha"} == {k: v for k, v in shipped.items() if k != "alpha"}
        for name in (assembly.ADAPTER_FILE, assembly.PROJECTOR_FILE):
            assert layout(folder / name) == layout(assembly.TRAINED_DIR / name), (folder.name, name)


def test_the_training_record_names_the_shipped_weights():
    """training.json says what ships: either the last run's weights, whose adapter settings are the
    shipped adapter.json's, or the one soup marked shipped, the mean of the last runs recorded,
    written back at scaling 1 (alpha = rank), as interpolate_trained.py --mean --rank writes it."""
    from tokentrim_cli import assembly

    training = json.loads((assembly.TRAINED_DIR / "training.json").read_text())
    config = json.loads((assembly.TRAINED_DIR / assembly.ADAPTER_CONFIG).read_text())
    runs = [run["log"] for run in training["runs"]]
    shipped = [soup for soup in training.get("soups", []) if soup.get("shipped")]
    assert len(shipped) <= 1, shipped
    if shipped:
        parts = shipped[0]["of"]
        assert runs[-len(parts):] == parts, (parts, runs[-len(parts):])
        assert config["alpha"] == config["rank"] == shipped[0]["rank"]
    else:
        last = training["runs"][-1]["arguments"]
        assert (float(last["alpha"]), int(last["rank"])) == (config["alpha"], config["rank"])
    assert training["total_minutes"] == round(sum(run["minutes"] for run in training["runs"]), 1)


def test_independent_turns_are_each_the_question_asked_alone(tiny, monkeypatch):
    """--independent-turns (run35): in the packed row every turn's hidden states equal those of a
    forward of that question alone with its picture (the 4-D mask and the position ids are right,
    padding included), each turn's tokens are the single-turn encoding's, and its labels are the
    single-turn labels at the same tokens. The tiny model's template is not ChatML, so the labels
    are the last three tokens of each single-turn encoding here."""
    train_scenes = pytest.importorskip("train_scenes_model")
    from tokentrim_cli import scenes

    model, processor = tiny
    monkeypatch.setattr(train_scenes, "answer_labels", lambda ids, tokenizer: torch.where(
        torch.arange(ids.shape[1]) >= ids.shape[1] - 3, ids, torch.full_like(ids, -100)))  # fmt: skip
    weights = train_scenes.parse_type_weights("count_color=3,count_shape=3,describe=0")
    seeds = [scenes.TRAIN_SEED + 40, scenes.TRAIN_SEED + 41]
    batch = train_scenes.independent_batch(processor, seeds, 3, 0.5, random.Random(2), weights, train_scenes.PictureMix(0.5), True)
    rng = random.Random(2)
    with torch.no_grad():
        packed = model.model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                             attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]).last_hidden_state  # fmt: skip
        lengths = []
        for row, seed in enumerate(seeds):
            image, messages = train_scenes.conversation(seed, 3, 0.5, rng, weights, train_scenes.PictureMix(0.5), True)
            at = 0
            for turn in range(3):
                alone = [{"role": "user", "content": [{"type": "image"}, messages[2 * turn]["content"][-1]]},
                         messages[2 * turn + 1]]  # fmt: skip
                encoded = processor(images=[image], text=[processor.apply_chat_template(alone)], return_tensors="pt")
                ids = encoded["input_ids"][0]
                start = int((ids == processor.tokenizer.convert_tokens_to_ids(processor.image_token)).nonzero().max()) + 1
                if turn == 0:
                    at = start
                    assert torch.equal(batch["input_ids"][row, :start], ids[:start])
                span = slice(at, at + len(ids) - start)
                assert torch.equal(batch["input_ids"][row, span], ids[start:])
                assert torch.equal(batch["position_ids"][row, span], torch.arange(start, len(ids)))
                labelled = batch["labels"][row, span] != -100
                assert labelled.sum() == 3 and labelled[-3:].all()
                reference = model.model(**encoded).last_hidden_state[0]
                torch.testing.assert_close(packed[row, :start], reference[:start], atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(packed[row, span], reference[start:], atol=1e-5, rtol=1e-4)
                at = span.stop
            lengths.append(at)
    assert lengths[0] != lengths[1] and max(lengths) == batch["input_ids"].shape[1]  # one row is padded
    short = lengths.index(min(lengths))
    assert (batch["labels"][short, min(lengths) :] == -100).all()


def test_segment_mask_by_hand():
    train_scenes = pytest.importorskip("train_scenes_model")
    segment = torch.tensor([[0, 0, 1, 1, 2, -1]])
    allowed = [[1, 0, 0, 0, 0, 0],
               [1, 1, 0, 0, 0, 0],
               [1, 1, 1, 0, 0, 0],
               [1, 1, 1, 1, 0, 0],
               [1, 1, 0, 0, 1, 0],   # turn 2 sees the shared start and itself, not turn 1
               [1, 1, 0, 0, 0, 1]]   # padding: the start and itself  # fmt: skip
    assert train_scenes.segment_mask(segment).tolist() == [[[[bool(v) for v in row] for row in allowed]]]


def test_count_turns_mark_the_counted_word_and_the_true_count(tiny):
    """--count-probe-layer (run38): every count turn of a packed row, and no other, gives the place of
    the counted phrase's last token ("... red objects", "... stars") and the count's class (0, 1, 2,
    3 or more), recounted here from the picture's objects."""
    train_scenes = pytest.importorskip("train_scenes_model")
    from tokentrim_cli import scenes

    _, processor = tiny
    weights = train_scenes.parse_type_weights("count_color=4,count_shape=4,color=1,describe=0")
    seeds = [scenes.TRAIN_SEED + 70, scenes.TRAIN_SEED + 71]
    batch = train_scenes.independent_batch(processor, seeds, 6, 0.5, random.Random(3), weights, train_scenes.PictureMix(0.5), True)
    rng = random.Random(3)
    expected = []
    for row, seed in enumerate(seeds):
        _, messages = train_scenes.conversation(seed, 6, 0.5, rng, weights, train_scenes.PictureMix(0.5), True)
        _, objects = train_scenes.training_scene(seed, train_scenes.PictureMix(0.5))
        for turn in range(6):
            words = messages[2 * turn]["content"][-1]["text"].split()
            if words[:2] != ["How", "many"]:
                continue
            if words[3] == "objects":  # "How many red objects are there?"
                phrase, count = f"{words[2]} objects", sum(o.color == words[2] for o in objects)
            else:  # "How many stars are there?"
                phrase, count = words[2], sum(scenes.PLURALS[o.shape] == words[2] for o in objects)
            expected.append((row, phrase, min(count, 3)))
    assert len(expected) >= 4 and {c for _, _, c in expected} > {1}
    assert batch["count_row"].tolist() == [row for row, _, _ in expected]
    assert batch["count_class"].tolist() == [c for _, _, c in expected]
    for (row, phrase, _), at in zip(expected, batch["count_at"].tolist()):
        read = processor.tokenizer.decode(batch["input_ids"][row, : at + 1])
        assert read.endswith(f"How many {phrase}"), read[-40:]


def assert_gradient_reaches_the_adapter_below(model, layer: int) -> None:
    """Every adapter weight of the decoder layers below `layer` has a gradient, and none above."""
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            reached = parameter.grad is not None and parameter.grad.abs().sum() > 0
            assert reached == (int(name.split("layers.")[1].split(".")[0]) < layer), name


def adapted_tiny_model(train_scenes):
    """The tiny random model with a LoRA adapter whose projector and every adapter train, B drawn
    away from zero (at zero, A's gradient would be zero too): what the probe tests backpropagate."""
    from tokentrim_cli.model import build_random

    model, processor = build_random("tiny", seed=0)
    train_scenes.add_lora(model, 4, 8.0)
    train_scenes.stage_two_parameters(model, 0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    return model, processor


def one_answer_count_batch(train_scenes, processor, seeds: list[int], turns: int) -> dict:
    """Count turns asked alone about each seed's picture, with one answer token labelled, so that
    the answers' loss is defined."""
    weights = train_scenes.parse_type_weights("count_color=1,count_shape=1,color=0,shape=0,exist=0,spatial=0,describe=0")
    batch = train_scenes.independent_batch(processor, seeds, turns, 1.0, random.Random(0), weights)
    batch["labels"][:] = -100
    batch["labels"][0, -1] = batch["input_ids"][0, -1]
    return batch


def marked_count_batch(train_scenes, processor, seeds: list[int], turns: int) -> tuple[dict, int]:
    """one_answer_count_batch with what visual_anchors gives every visual token (the probes that
    read the picture need it), and the image token."""
    batch = one_answer_count_batch(train_scenes, processor, seeds, turns)
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return batch | train_scenes.visual_anchors(batch["input_ids"], image_token, batch["objects"]), image_token


def residual_streams(model, batch: dict):
    """The decoder's hidden states on `batch`, without gradients: [k] is the stream after k layers."""
    with torch.no_grad():
        return model.model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                           attention_mask=batch["attention_mask"], position_ids=batch["position_ids"],
                           output_hidden_states=True).hidden_states  # fmt: skip


def added_probe_loss(train_scenes, model, batch: dict, probe):
    """answer_loss with `probe` alone, whose total must be the answers' loss plus the probe's at
    its weight; the probe's loss is then backpropagated alone. Returns (probe's loss, right)."""
    plain, [] = train_scenes.answer_loss(model, batch)
    total, [(loss, right)] = train_scenes.answer_loss(model, batch, probe)
    torch.testing.assert_close(total, plain + probe.weight * loss, atol=1e-5, rtol=1e-5)
    model.zero_grad()
    loss.backward()
    return loss, right


def layer_normed(states):
    """Layer normalisation without affine parameters, written out (what the probes read)."""
    centred = states - states.mean(-1, keepdim=True)
    return centred / (centred.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()


def test_the_count_probe_trains_the_adapter_below_its_layer_only(tiny):
    """The count probe's loss reads the residual stream after `layer` decoder layers at the counted
    word: its gradient reaches the adapter of the layers below and none above; it is the
    cross-entropy of the probe on that token's layer-normalised state (written out here)."""
    train_scenes = pytest.importorskip("train_scenes_model")
    pytest.importorskip("peft")
    from tokentrim_cli import scenes

    model, processor = adapted_tiny_model(train_scenes)
    layers = model.config.text_config.num_hidden_layers
    probe = train_scenes.CountProbe(model.config.text_config.hidden_size, 1, 1.0)
    with torch.no_grad():
        probe.head.weight.normal_(0, 1.0)
    batch = one_answer_count_batch(train_scenes, processor, [scenes.TRAIN_SEED + 5], 3)
    _, [(probe_loss, _)] = train_scenes.answer_loss(model, batch, probe)
    probe_loss.backward()
    assert 1 < layers
    assert_gradient_reaches_the_adapter_below(model, 1)
    states = residual_streams(model, batch)[1][0, batch["count_at"]]
    with torch.no_grad():
        reference = torch.nn.functional.cross_entropy(layer_normed(states) @ probe.head.weight.T + probe.head.bias, batch["count_class"])
    torch.testing.assert_close(probe_loss, reference, atol=1e-5, rtol=1e-5)


def test_object_anchors_mark_each_objects_first_patch(tiny):
    """--anchor-probe-layer (run43): one anchor per object, its first covered patch in row-major
    order (found here from the disc each object covers: within 0.75 of its radius, or the patch
    under its centre), and every visual token of a batch row in order, with its mark."""
    train_scenes = pytest.importorskip("train_scenes_model")
    from tokentrim_cli import scenes

    large = scenes.SceneObject("square", "red", "large", 100, 100, 30)
    small = scenes.SceneObject("star", "blue", "small", 250, 251, 14)
    marks = train_scenes.object_anchors([small, large], 24)  # listed out of order: the marks do not care
    covered = [p for p in range(576) if ((p % 24) * 14 + 7 - 100) ** 2 + ((p // 24) * 14 + 7 - 100) ** 2 < 22.5**2]
    small_patches = [p for p in range(576) if ((p % 24) * 14 + 7 - 250) ** 2 + ((p // 24) * 14 + 7 - 251) ** 2 < 10.5**2]
    small_patches.append((251 // 14) * 24 + 250 // 14)
    assert [p for p, m in enumerate(marks) if m] == sorted([min(covered), min(small_patches)])
    assert min(covered) != covered[len(covered) // 2]  # a large object's first patch is not its middle

    _, processor = tiny
    weights = train_scenes.parse_type_weights("count_color=1,count_shape=1,color=0,shape=0,exist=0,spatial=0,describe=0")
    seeds = [scenes.TRAIN_SEED + 80, scenes.TRAIN_SEED + 81]
    batch = train_scenes.independent_batch(processor, seeds, 2, 1.0, random.Random(0), weights, train_scenes.PictureMix(0.5))
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    drawn = [train_scenes.training_scene(seed, train_scenes.PictureMix(0.5))[1] for seed in seeds]
    found = train_scenes.visual_anchors(batch["input_ids"], image_token, drawn)
    for row, objects in enumerate(drawn):
        places = (batch["input_ids"][row] == image_token).nonzero().squeeze(1)
        grid = int(len(places) ** 0.5)
        assert grid * grid == len(places)
        mine = found["visual_row"] == row
        assert found["visual_at"][mine].tolist() == places.tolist()
        assert found["anchor"][mine].tolist() == train_scenes.object_anchors(objects, grid)
        assert 1 <= int(found["anchor"][mine].sum()) <= len(objects)
    with pytest.raises(ValueError, match="not a square grid"):
        train_scenes.visual_anchors(torch.full((1, 10), image_token), image_token, drawn[:1])


def test_the_anchor_probe_is_a_balanced_logistic_loss_below_its_layer(tiny):
    """The anchor probe reads every visual token after `layer` decoder layers: its loss is the mean
    of the logistic loss over anchors and over the rest (written out here), its gradient reaches
    the adapter of the layers below only, and with a count probe both losses are added at their
    weights."""
    train_scenes = pytest.importorskip("train_scenes_model")
    pytest.importorskip("peft")
    from tokentrim_cli import scenes

    model, processor = adapted_tiny_model(train_scenes)
    anchor = train_scenes.AnchorProbe(model.config.text_config.hidden_size, 1, 0.5)
    count = train_scenes.CountProbe(model.config.text_config.hidden_size, 1, 2.0)
    with torch.no_grad():
        anchor.head.weight.normal_(0, 1.0)
        count.head.weight.normal_(0, 1.0)
    batch, image_token = marked_count_batch(train_scenes, processor, [scenes.TRAIN_SEED + 5], 3)
    plain, [] = train_scenes.answer_loss(model, batch)
    total, [(anchor_loss, right), (count_loss, _)] = train_scenes.answer_loss(model, batch, anchor, count)
    torch.testing.assert_close(total, plain + 0.5 * anchor_loss + 2.0 * count_loss, atol=1e-5, rtol=1e-5)
    model.zero_grad()
    anchor_loss.backward()
    assert_gradient_reaches_the_adapter_below(model, 1)
    states = residual_streams(model, batch)[1][0]
    with torch.no_grad():
        visual = states[batch["input_ids"][0] == image_token]
        logits = layer_normed(visual) @ anchor.head.weight[0] + anchor.head.bias
        marks = batch["anchor"]
        positive = torch.nn.functional.softplus(-logits[marks]).mean()  # -log sigmoid
        negative = torch.nn.functional.softplus(logits[~marks]).mean()  # -log (1 - sigmoid)
        said = logits > 0
        balanced = 0.5 * (said[marks].float().mean() + (~said[~marks]).float().mean())
    assert 0 < int(marks.sum()) < len(marks)
    torch.testing.assert_close(anchor_loss.detach(), (positive + negative) / 2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(right, balanced, atol=1e-6, rtol=1e-6)


def test_object_tallies_count_each_shape_and_colour_at_first_patches(tiny):
    """--tally-probe-layer (run45): per patch, the count so far of each shape and each colour,
    worked out here from the anchors (each object's first patch), and the last patch's tallies
    are the picture's counts, recomputed from the object list; the batch carries them in the
    order of its visual tokens."""
    train_scenes = pytest.importorskip("train_scenes_model")
    from tokentrim_cli import scenes

    objects = [scenes.SceneObject("star", "blue", "small", 250, 251, 14),
               scenes.SceneObject("square", "red", "large", 100, 100, 30),
               scenes.SceneObject("star", "red", "large", 260, 60, 30)]  # fmt: skip
    tallies = train_scenes.object_tallies(objects, 24)
    kinds = [*scenes.SHAPES, *scenes.COLORS]
    assert len(tallies) == 576 and all(len(row) == 14 for row in tallies)
    anchors = [p for p, m in enumerate(train_scenes.object_anchors(objects, 24)) if m]
    assert len(anchors) == 3
    owner = train_scenes.patch_objects(objects, 24, 14)
    for place in (0, *anchors, *(a - 1 for a in anchors), 575):
        begun = [objects[owner[a]] for a in anchors if a <= place]
        assert tallies[place] == [sum(o.shape == k or o.color == k for o in begun) for k in kinds], place
    assert tallies[-1][kinds.index("star")] == 2 and tallies[-1][kinds.index("red")] == 2
    assert tallies[-1][kinds.index("circle")] == 0 and tallies[-1][kinds.index("blue")] == 1

    _, processor = tiny
    weights = train_scenes.parse_type_weights("count_color=1,count_shape=1,color=0,shape=0,exist=0,spatial=0,describe=0")
    seeds = [scenes.TRAIN_SEED + 80, scenes.TRAIN_SEED + 81]
    batch = train_scenes.independent_batch(processor, seeds, 2, 1.0, random.Random(0), weights, train_scenes.PictureMix(0.5))
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    found = train_scenes.visual_anchors(batch["input_ids"], image_token, batch["objects"])
    for row, drawn in enumerate(batch["objects"]):
        mine = found["visual_row"] == row
        grid = int(int(mine.sum()) ** 0.5)
        assert found["tally"][mine].tolist() == train_scenes.object_tallies(drawn, grid)
        last = found["tally"][mine][-1]
        visible = {owner_index for owner_index in train_scenes.patch_objects(drawn, grid, scenes.SIZE / grid) if owner_index >= 0}
        assert last.tolist() == [sum(drawn[i].shape == k or drawn[i].color == k for i in visible) for k in kinds]


def test_the_tally_probe_is_a_squared_error_below_its_layer(tiny):
    """The tally probe reads every visual token after `layer` decoder layers: its loss is the mean
    squared error over the 14 running counts (written out here), `right` the share of the last
    visual token's counts that round right in each row, and its gradient reaches the adapter of
    the layers below only."""
    train_scenes = pytest.importorskip("train_scenes_model")
    pytest.importorskip("peft")
    from tokentrim_cli import scenes

    model, processor = adapted_tiny_model(train_scenes)
    tally = train_scenes.TallyProbe(model.config.text_config.hidden_size, 1, 0.5)
    with torch.no_grad():
        tally.head.weight.normal_(0, 1.0)
        tally.head.bias.fill_(1.0)
    batch, image_token = marked_count_batch(train_scenes, processor, [scenes.TRAIN_SEED + 5, scenes.TRAIN_SEED + 6], 2)
    tally_loss, right = added_probe_loss(train_scenes, model, batch, tally)
    assert_gradient_reaches_the_adapter_below(model, 1)
    states = residual_streams(model, batch)[1]
    with torch.no_grad():
        errors, last_right = [], []
        for row, drawn in enumerate(batch["objects"]):
            visual = states[row][batch["input_ids"][row] == image_token]
            said = layer_normed(visual) @ tally.head.weight.T + tally.head.bias
            truth = torch.tensor(train_scenes.object_tallies(drawn, int(len(visual) ** 0.5)), dtype=torch.float32)
            errors.append((said - truth) ** 2)
            last_right.append(said[-1].round() == truth[-1])
    torch.testing.assert_close(tally_loss.detach(), torch.cat(errors).mean(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(right, torch.cat(last_right).float().mean(), atol=1e-6, rtol=1e-6)


def test_object_ordinals_number_each_shape_and_colour_at_first_patches(tiny):
    """--ordinal-probe-layer (run46): at each object's first patch, which of its shape and which of
    its colour it is in row-major order (1 first, capped at 4), worked out here by sorting the
    objects by their first patch; 0 elsewhere. The largest shape ordinal is the shape's count,
    recomputed from the object list; the batch carries the ordinals in the order of its tokens."""
    train_scenes = pytest.importorskip("train_scenes_model")
    from tokentrim_cli import scenes

    objects = [scenes.SceneObject("star", "blue", "small", 250, 251, 14),
               scenes.SceneObject("square", "red", "large", 100, 100, 30),
               scenes.SceneObject("star", "red", "large", 260, 60, 30),
               scenes.SceneObject("star", "green", "small", 60, 280, 14),
               scenes.SceneObject("star", "red", "small", 180, 200, 14),
               scenes.SceneObject("star", "red", "small", 300, 320, 14),
               scenes.SceneObject("star", "red", "small", 40, 180, 14)]  # fmt: skip
    ordinals = train_scenes.object_ordinals(objects, 24)
    owner = train_scenes.patch_objects(objects, 24, 14)
    anchors = [p for p, m in enumerate(train_scenes.object_anchors(objects, 24)) if m]
    assert len(ordinals) == 576 and len(anchors) == len(objects)
    in_order = [objects[owner[a]] for a in anchors]
    for k, place in enumerate(anchors):
        mine = in_order[k]
        shape_place = sum(o.shape == mine.shape for o in in_order[: k + 1])
        color_place = sum(o.color == mine.color for o in in_order[: k + 1])
        assert ordinals[place] == (min(shape_place, 4), min(color_place, 4)), place
    assert all(ordinals[p] == (0, 0) for p in range(576) if p not in anchors)
    assert max(ordinals[a][0] for a in anchors if objects[owner[a]].shape == "star") == 4  # six stars, capped
    assert max(ordinals[a][1] for a in anchors if objects[owner[a]].color == "red") == 4  # five red, capped
    assert [ordinals[a][0] for a in anchors if objects[owner[a]].shape == "square"] == [1]  # the only square

    _, processor = tiny
    weights = train_scenes.parse_type_weights("count_color=1,count_shape=1,color=0,shape=0,exist=0,spatial=0,describe=0")
    seeds = [scenes.TRAIN_SEED + 80, scenes.TRAIN_SEED + 81]
    batch = train_scenes.independent_batch(processor, seeds, 2, 1.0, random.Random(0), weights, train_scenes.PictureMix(0.5))
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    found = train_scenes.visual_anchors(batch["input_ids"], image_token, batch["objects"])
    for row, drawn in enumerate(batch["objects"]):
        mine = found["visual_row"] == row
        grid = int(int(mine.sum()) ** 0.5)
        assert [tuple(o) for o in found["ordinal"][mine].tolist()] == train_scenes.object_ordinals(drawn, grid)
        assert ((found["ordinal"][mine][:, 0] > 0) == found["anchor"][mine]).all()
        visible = {i for i in train_scenes.patch_objects(drawn, grid, scenes.SIZE / grid) if i >= 0}
        for shape in {drawn[i].shape for i in visible}:
            true_count = sum(drawn[i].shape == shape for i in visible)
            of_shape = [o[0] for o, i in zip(found["ordinal"][mine].tolist(),
                                             train_scenes.patch_objects(drawn, grid, scenes.SIZE / grid))
                        if o[0] and drawn[i].shape == shape]  # fmt: skip
            assert max(of_shape) == min(true_count, 4)


def test_the_ordinal_probe_is_a_class_balanced_cross_entropy_at_first_patches(tiny):
    """The ordinal probe reads the first patches only, after `layer` decoder layers: its loss is
    the mean over shape and colour of the cross-entropy averaged per true class (written out here),
    `right` the matching balanced accuracy, and its gradient reaches the adapter of the layers
    below only."""
    train_scenes = pytest.importorskip("train_scenes_model")
    pytest.importorskip("peft")
    from tokentrim_cli import scenes

    model, processor = adapted_tiny_model(train_scenes)
    ordinal = train_scenes.OrdinalProbe(model.config.text_config.hidden_size, 1, 0.5)
    with torch.no_grad():
        ordinal.head.weight.normal_(0, 1.0)
        ordinal.head.bias.normal_(0, 1.0)
    seeds = [scenes.TRAIN_SEED + 5, scenes.TRAIN_SEED + 6, scenes.TRAIN_SEED + 7, scenes.TRAIN_SEED + 8]
    batch, image_token = marked_count_batch(train_scenes, processor, seeds, 2)
    ordinal_loss, right = added_probe_loss(train_scenes, model, batch, ordinal)
    assert_gradient_reaches_the_adapter_below(model, 1)
    states = residual_streams(model, batch)[1]
    with torch.no_grad():
        said, truth = [], []
        for row, drawn in enumerate(batch["objects"]):
            visual = states[row][batch["input_ids"][row] == image_token]
            places = train_scenes.object_ordinals(drawn, int(len(visual) ** 0.5))
            for token, (shape_place, color_place) in zip(visual, places):
                if shape_place:
                    said.append(layer_normed(token[None])[0] @ ordinal.head.weight.T + ordinal.head.bias)
                    truth.append((shape_place - 1, color_place - 1))
        said, truth = torch.stack(said), torch.tensor(truth)
        losses, balanced = [], []
        for part in range(2):
            logits, classes = said[:, 4 * part: 4 * part + 4], truth[:, part]
            per_class_loss, per_class_right = [], []
            for c in sorted(set(classes.tolist())):
                chosen = classes == c
                per_class_loss.append(-logits[chosen].log_softmax(-1)[:, c].mean())
                per_class_right.append((logits[chosen].argmax(-1) == c).float().mean())
            losses.append(sum(per_class_loss) / len(per_class_loss))
            balanced.append(sum(per_class_right) / len(per_class_right))
    assert len(set(truth[:, 0].tolist())) > 1 or len(set(truth[:, 1].tolist())) > 1  # more than the first of each
    torch.testing.assert_close(ordinal_loss.detach(), (losses[0] + losses[1]) / 2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(right, (balanced[0] + balanced[1]) / 2, atol=1e-6, rtol=1e-6)


def test_counted_kind_reads_what_a_count_question_counts():
    train_scenes = pytest.importorskip("train_scenes_model")
    from tokentrim_cli import scenes

    rng = random.Random(3)
    objects = scenes.scene_objects(11)
    for _ in range(20):
        for kind in ("count_color", "count_shape"):
            question = scenes.make_question(kind, objects, rng)
            counted, value = train_scenes.counted_kind(question)
            assert counted == kind.removeprefix("count_")
            assert str(sum(getattr(o, counted) == value for o in objects)) == question.answer


def test_the_gather_probe_supervises_one_heads_attention_at_the_counted_word(tiny):
    """--gather-probe-layer (run47): the probe's attention is head H's of decoder layer L, as the
    layer itself computes it (eager attention's weights, read from the model); its loss is the mean
    over count turns of -log attention averaged over the row's first token and the first patch of
    every counted object (worked out here from the pictures' objects and the questions' words);
    `right` is the attention's share on those; its gradient reaches the adapters below L and L's
    own query and key projections, and nothing else."""
    train_scenes = pytest.importorskip("train_scenes_model")
    pytest.importorskip("peft")
    from tokentrim_cli import scenes

    model, processor = adapted_tiny_model(train_scenes)
    language = model.model.language_model
    layer, head = 1, 1  # head 1 shares kv head 0 with head 0 (4 heads, 2 kv heads)
    gather = train_scenes.GatherProbe(language, layer, head, 0.25)
    with pytest.raises(ValueError, match="heads"):
        train_scenes.GatherProbe(language, layer, language.config.num_attention_heads, 0.25)
    seeds = [scenes.TRAIN_SEED + 5, scenes.TRAIN_SEED + 6]
    batch, image_token = marked_count_batch(train_scenes, processor, seeds, 3)
    gather_loss, right = added_probe_loss(train_scenes, model, batch, gather)
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            at = int(name.split("layers.")[1].split(".")[0])
            reached = parameter.grad is not None and parameter.grad.abs().sum() > 0
            assert reached == (at < layer or (at == layer and ("q_proj" in name or "k_proj" in name))), name

    with torch.no_grad():
        said = gather.attention(residual_streams(model, batch), batch).exp()
    model.set_attn_implementation("eager")  # eager attention adds a mask to the scores: give it 0 / -inf, not booleans
    blocked = torch.finfo(torch.float32).min
    additive = torch.zeros(batch["attention_mask"].shape).masked_fill(~batch["attention_mask"], blocked)
    with torch.no_grad():
        weights = model.model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                              attention_mask=additive, position_ids=batch["position_ids"],
                              output_attentions=True).attentions[layer]  # fmt: skip
    plurals = {plural: shape for shape, plural in scenes.PLURALS.items()}
    losses, shares, turn = [], [], 0
    for row, drawn in enumerate(batch["objects"]):
        places = (batch["input_ids"][row] == image_token).nonzero().squeeze(1)
        grid = int(len(places) ** 0.5)
        firsts = [i for i, m in enumerate(train_scenes.object_anchors(drawn, grid)) if m]
        owner = train_scenes.patch_objects(drawn, grid, scenes.SIZE / grid)
        for at in batch["count_at"][batch["count_row"] == row].tolist():
            words = processor.tokenizer.decode(batch["input_ids"][row, : at + 1]).rsplit("How many ", 1)[1].split()
            if words[-1] == "objects":
                counted = [i for i in firsts if drawn[owner[i]].color == words[-2]]
            else:
                counted = [i for i in firsts if drawn[owner[i]].shape == plurals[words[-1]]]
            targets = [0] + [int(places[i]) for i in counted]
            attended = weights[row, head, at]
            losses.append(-attended[targets].log().mean())
            shares.append(attended[targets].sum())
            turn += 1
    assert turn == len(batch["count_at"]) >= 4
    assert any(len(t) > 1 for t in [gather.targets(batch)[k].nonzero() for k in range(turn)])
    expected = weights[batch["count_row"], head, batch["count_at"]]
    torch.testing.assert_close(said, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gather_loss.detach(), torch.stack(losses).mean(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(right, torch.stack(shares).mean(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("flags, message", [
    (["--count-probe-layer", "20"], "needs --independent-turns"),
    (["--count-probe-layer", "10", "--independent-turns", "--train-from-layer", "14", "--projector-steps", "0"],
     "reads below the layers trained"),
    (["--anchor-probe-layer", "10", "--train-from-layer", "14", "--projector-steps", "0"],
     "reads below the layers trained"),
    (["--tally-probe-layer", "12", "--train-from-layer", "14", "--projector-steps", "0"],
     "reads below the layers trained"),
    (["--ordinal-probe-layer", "14", "--train-from-layer", "14", "--projector-steps", "0"],
     "reads below the layers trained"),
    (["--gather-probe-layer", "12"], "needs --independent-turns"),
    (["--gather-probe-layer", "-1", "--independent-turns"], "decoder layers count from 0"),
    (["--gather-probe-layer", "12", "--independent-turns", "--train-from-layer", "14", "--projector-steps", "0"],
     "is below the layers trained"),
])  # fmt: skip
def test_a_count_probe_that_could_not_train_anything_is_refused(flags, message):
    """Refused before any model is built: exit 2 and the reason on one line."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "train_scenes_model.py"
    done = subprocess.run([sys.executable, str(script), *flags], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr.strip().splitlines()[-1], done.stderr


def test_interpolated_weights_merge_to_the_interpolation_of_the_two_decoders(tmp_path, monkeypatch, capsys):
    """scripts/interpolate_trained.py: the output folder, merged as assembly merges the shipped
    weights, gives W0 + (1 - w) dW_first + w dW_second in every adapted layer (each dW worked out
    here from its own folder, with its own alpha/rank) and the interpolated projector; a soup of
    three (--mean) gives the mean of the three, and --rank R the best rank-R approximation of it;
    bad requests are refused with exit 2 and leave nothing behind."""
    train_scenes = pytest.importorskip("train_scenes_model")
    pytest.importorskip("peft")
    interpolate_trained = pytest.importorskip("interpolate_trained")
    from safetensors.torch import load_file

    from tokentrim_cli import assembly
    from tokentrim_cli.model import build_random

    def trained_folder(name, rank, alpha, seed):
        model, _ = build_random("tiny", seed=0)
        train_scenes.add_lora(model, rank, alpha)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter_name, parameter in model.named_parameters():
                if "lora_" in parameter_name or "multi_modal_projector" in parameter_name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
        train_scenes.save_trained(model, tmp_path / name, rank, alpha)
        return tmp_path / name

    first, second = trained_folder("first", 4, 8.0, seed=1), trained_folder("second", 2, 2.0, seed=2)

    def merged(folder):
        model, _ = build_random("tiny", seed=0)
        assembly.merge_trained(model, folder)
        return {name: parameter.detach() for name, parameter in model.named_parameters()}

    base = {name: parameter.detach() for name, parameter in build_random("tiny", seed=0)[0].named_parameters()}

    def delta(folder, scaling):
        tensors = load_file(folder / assembly.ADAPTER_FILE)
        return {f"model.language_model.{key.removesuffix('.lora_A')}.weight":
                scaling * tensors[key.replace("lora_A", "lora_B")].float() @ tensors[key].float()
                for key in tensors if key.endswith(".lora_A")}  # fmt: skip

    deltas = delta(first, 8.0 / 4), delta(second, 2.0 / 2)
    projectors = load_file(first / assembly.PROJECTOR_FILE), load_file(second / assembly.PROJECTOR_FILE)
    # At 0.5 every factor is a power of two and nothing is rounded in bf16 (float sums in another order
    # only); at 0.3 the stacked B is rounded to bf16 (2^-8 relative) as the training script stores it.
    for weight, tolerance in ((0.5, 1e-6), (0.3, 1e-2)):
        out = tmp_path / f"mix-{weight}"
        monkeypatch.setattr(sys, "argv", ["interpolate_trained.py", str(first), str(second), "--weight", str(weight), "--out", str(out)])
        interpolate_trained.main()
        assert json.loads((out / assembly.ADAPTER_CONFIG).read_text())["rank"] == 6
        mixed = merged(out)
        assert deltas[0] and deltas[0].keys() <= mixed.keys() and deltas[0].keys() == deltas[1].keys()
        for name, parameter in mixed.items():
            if name in deltas[0]:
                expected = base[name] + (1 - weight) * deltas[0][name] + weight * deltas[1][name]
                torch.testing.assert_close(parameter, expected, atol=tolerance * float(expected.abs().max()), rtol=0)
            elif "multi_modal_projector" in name:
                key = name.removeprefix("model.multi_modal_projector.")
                torch.testing.assert_close(parameter, (1 - weight) * projectors[0][key] + weight * projectors[1][key])
            else:
                torch.testing.assert_close(parameter, base[name], atol=0, rtol=0)

    # A uniform soup of three folders (each with its own rank and alpha) merges to the mean of the
    # three updates; refactorised to a rank that holds the whole mixture, it merges to the same.
    third = trained_folder("third", 3, 12.0, seed=3)
    deltas = (*deltas, delta(third, 12.0 / 3))
    projectors = (*projectors, load_file(third / assembly.PROJECTOR_FILE))
    for flags in ([], ["--rank", "9"]):
        out = tmp_path / f"soup{flags}"
        monkeypatch.setattr(sys, "argv", ["interpolate_trained.py", str(first), str(second), str(third), "--mean", *flags, "--out", str(out)])
        interpolate_trained.main()
        assert json.loads((out / assembly.ADAPTER_CONFIG).read_text())["rank"] == 9
        mixed = merged(out)
        for name in deltas[0]:
            expected = base[name] + sum(d[name] for d in deltas) / 3
            torch.testing.assert_close(mixed[name], expected, atol=1e-2 * float(expected.abs().max()), rtol=0)
        for key in projectors[0]:
            soup = sum(p[key] for p in projectors) / 3
            torch.testing.assert_close(mixed[f"model.multi_modal_projector.{key}"], soup)

    # Refactorised to rank 2, each layer's update is the best rank-2 approximation of the mean
    # (Eckart-Young): its error is exactly the singular values beyond the second, and its rank 2.
    out = tmp_path / "soup-rank2"
    monkeypatch.setattr(sys, "argv", ["interpolate_trained.py", str(first), str(second), str(third), "--mean", "--rank", "2", "--out", str(out)])
    interpolate_trained.main()
    assert "of the mixed updates' squared norm left out" in capsys.readouterr().out
    mixed = merged(out)
    for name in deltas[0]:
        mean = sum(d[name] for d in deltas) / 3
        update = mixed[name] - base[name]
        tail = torch.linalg.svdvals(mean.double())[2:].square().sum().sqrt()
        assert abs(float((update.double() - mean.double()).norm()) - float(tail)) <= 2e-2 * float(mean.norm())
        assert int(torch.linalg.matrix_rank(update.double(), rtol=1e-6)) <= 2

    other = tmp_path / "other"  # the first folder's weights, its adapter on other layers' kinds
    other.mkdir()
    for path in assembly.trained_files(first):
        (other / path.name).write_bytes(path.read_bytes())
    config = json.loads((first / assembly.ADAPTER_CONFIG).read_text())
    (other / assembly.ADAPTER_CONFIG).write_text(json.dumps({**config, "targets": ["q_proj"]}))
    new = tmp_path / "new"
    for folders, flags, message in (
        ((first, second), ["--weight", "1.5", "--out", new], "--weight must lie in [0, 1], got 1.5"),
        ((first, second), ["--weight", "0.5", "--out", tmp_path / "mix-0.5"], "exists; choose a new folder"),
        ((other, second), ["--weight", "0.5", "--out", new], "the adapters differ in targets"),
        ((first, second, third), ["--weight", "0.5", "--out", new], "--weight mixes two folders, got 3"),
        ((first,), ["--mean", "--out", new], "give two or more folders to mix"),
        ((first, second), ["--mean", "--rank", "0", "--out", new], "--rank must be at least 1, got 0"),
        ((tmp_path / "absent", second), ["--weight", "0.5", "--out", new], "lacks projector.safetensors"),
    ):
        monkeypatch.setattr(sys, "argv", ["interpolate_trained.py", *map(str, folders), *map(str, flags)])
        with pytest.raises(SystemExit) as refused:
            interpolate_trained.main()
        assert refused.value.code == 2
        assert message in capsys.readouterr().err
        assert not new.exists() and not (tmp_path / "new.partial").exists()

"""Bad input that used to crash, hang or exit 1 (issue 16): each gets its documented exit code."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from images import good_png
from PIL import Image
from typer.testing import CliRunner

from tokentrim_cli import inputs, metrics
from tokentrim_cli.cli import app
from tokentrim_cli.errors import InputError
from tokentrim_cli.model import build_random

runner = CliRunner()
TINY = ["-m", "random:tiny"]


def invoke(*args, input=None):
    return runner.invoke(app, list(args), input=input)


def tokentrim(*args, **kwargs):
    return subprocess.run([shutil.which("tokentrim"), *args], capture_output=True, text=True, timeout=300, **kwargs)


def assert_clean(result, code):
    text = result.stderr
    assert result.exit_code == code if hasattr(result, "exit_code") else result.returncode == code, text
    assert "Traceback" not in text and "unexpected internal error" not in text


# ---- model directories --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    model, processor = build_random("tiny", seed=0)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # truncated tensor data
        lambda data: data[:7],  # truncated header length
        lambda data: b"",  # empty file
        lambda data: data[:8] + b"{not json" + data[17:],  # corrupt header
    ],
)
def test_damaged_safetensors_exit_4(saved_tiny, tmp_path, damage):
    folder = tmp_path / "model"
    shutil.copytree(saved_tiny, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    result = invoke("chat", "-m", str(folder), "-p", "hi")
    assert_clean(result, 4)
    assert "cannot load" in result.stderr


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickled_checkpoint_is_refused_with_exit_4(saved_tiny, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(saved_tiny, folder)
    (folder / "model.safetensors").unlink()
    with open(folder / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"x": _Boom()}, handle)
    result = invoke("chat", "-m", str(folder), "-p", "hi")
    assert_clean(result, 4)
    assert "pickle" in result.stderr and "pwned" not in result.stdout


# ---- options --------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["tpu", "gpu", "cuda:x"])
def test_bad_device_is_a_usage_error(device):
    result = invoke("chat", *TINY, "--device", device, "-p", "hi")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "is not auto, cpu, cuda or cuda:N" in result.stderr


def test_a_huge_seed_is_a_usage_error():
    assert invoke("chat", *TINY, "--seed", str(2**70), "-p", "hi").exit_code == 2
    assert invoke("chat", *TINY, "--seed", "-1", "-p", "hi").exit_code == 2


def test_an_empty_prompt_is_a_usage_error():
    result = invoke("chat", *TINY, "-p", "  ")
    assert result.exit_code == 2 and "empty" in result.stderr


def test_max_new_tokens_is_capped_at_the_context(tmp_path):
    result = invoke("chat", *TINY, "-p", "hi", "-n", "100000", "--temperature", "0")
    assert result.exit_code == 0, result.stderr
    assert "--max-new-tokens 100000 capped at" in result.stderr


def test_profile_batch_too_large_for_cpu_memory_exits_5(monkeypatch):
    monkeypatch.setattr(metrics, "available_memory", lambda: 64 * 2**20)
    result = invoke("profile", *TINY, "--profile", "fastv", "--batch-size", "100000", "--runs", "1", "--warmup", "0")
    assert_clean(result, 5)
    assert "the largest batch that fits" in result.stderr


# ---- output targets are checked before the work, and written together -----------------------------


@pytest.mark.parametrize("make_plot", [lambda d: d, lambda d: d / "kl.xyz", lambda d: d / "kl"])
def test_bad_plot_targets_fail_before_any_work(tmp_path, make_plot):
    plot = make_plot(tmp_path)
    out = tmp_path / "out.toml"
    result = invoke("calibrate", *TINY, "--samples", "2", "--min-layer", "1", "-o", str(out), "--plot", str(plot))
    assert_clean(result, 3)
    assert "Loaded" not in result.stderr and not out.exists()


def test_a_read_only_folder_fails_before_any_work(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    result = invoke("calibrate", *TINY, "--samples", "2", "-o", str(folder / "x.toml"))
    assert_clean(result, 3)


def test_a_failing_plot_leaves_no_profile(tmp_path, monkeypatch):
    from tokentrim_cli import render

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(render, "plot_kl_curve", broken)
    out = tmp_path / "out.toml"
    result = invoke("calibrate", *TINY, "--samples", "2", "--min-layer", "1", "-o", str(out), "--plot", str(tmp_path / "kl.png"))
    assert_clean(result, 3)
    assert not out.exists() and os.listdir(tmp_path) == []


def test_empty_output_path_is_a_usage_error(tmp_path):
    assert invoke("calibrate", *TINY, "-o", "").exit_code == 2


def test_a_data_path_with_a_newline_writes_a_valid_profile(tmp_path):
    good_png(tmp_path / "a.png")
    data = tmp_path / "odd\nname.jsonl"
    data.write_text(json.dumps({"image": "a.png", "prompt": "What?"}) + "\n")
    out = tmp_path / "out.toml"
    result = invoke("calibrate", *TINY, "--data", str(data), "--min-layer", "1", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    assert invoke("profiles", "validate", str(out)).exit_code == 0


def test_nothing_is_written_inside_the_package(tmp_path):
    from importlib import resources

    target = resources.files("tokentrim_cli") / "profiles" / "mine.toml"
    result = invoke("calibrate", *TINY, "--samples", "2", "-o", str(target))
    assert_clean(result, 3)
    assert "inside the installed package" in result.stderr and not Path(str(target)).exists()


def test_default_calibration_output_goes_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good_png(tmp_path / "a.png")
    (tmp_path / "d.jsonl").write_text(json.dumps({"image": "a.png", "prompt": "What?"}) + "\n")
    result = invoke("calibrate", *TINY, "--data", "d.jsonl", "--min-layer", "1")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "profiles" / "vtw-random-tiny.toml").is_file()


# ---- data files -----------------------------------------------------------------------------------


def eval_data(tmp_path, records, name="qa.jsonl", text=None):
    good_png(tmp_path / "red.png")
    path = tmp_path / name
    path.write_text(text if text is not None else "".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def run_eval(path, *extra):
    return invoke("eval", *TINY, "--data", str(path), "--max-new-tokens", "2", *extra)


def test_special_files_as_images_are_refused_not_read(tmp_path):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    for image in ("/dev/zero", str(fifo), str(tmp_path)):
        path = eval_data(tmp_path, [{"image": image, "prompt": "q", "answer": "a"}])
        started = time.monotonic()
        result = run_eval(path)
        assert_clean(result, 3)
        assert "line 1" in result.stderr and time.monotonic() - started < 60


def test_extreme_aspect_ratios_are_refused(tmp_path):
    Image.new("L", (200_000, 1)).save(tmp_path / "wide.png")
    with pytest.raises(InputError, match="aspect ratio"):
        inputs.load_image(str(tmp_path / "wide.png"))


def test_a_huge_jsonl_line_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "MAX_JSONL_LINE_BYTES", 1000)
    path = eval_data(tmp_path, [], text=json.dumps({"image": "red.png", "prompt": "x" * 5000, "answer": "a"}) + "\n")
    result = run_eval(path)
    assert_clean(result, 3)
    assert "line 1: longer than" in result.stderr


def test_deeply_nested_json_is_refused(tmp_path):
    path = eval_data(tmp_path, [], text="[" * 100_000 + "]" * 100_000 + "\n")
    result = run_eval(path)
    assert_clean(result, 3)
    assert "line 1" in result.stderr


def test_byte_order_mark_line_separator_and_text_only_samples(tmp_path):
    records = [{"image": "red.png", "prompt": "colour\u2028name?", "answer": "x"}, {"prompt": "no picture", "answer": "y"}]
    path = eval_data(tmp_path, [], text="\ufeff" + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    result = run_eval(path, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["samples"] == 2


def test_an_empty_image_field_says_so(tmp_path):
    path = eval_data(tmp_path, [{"image": "", "prompt": "q", "answer": "a"}])
    result = run_eval(path)
    assert_clean(result, 3)
    assert 'line 1: "image" is empty' in result.stderr


def test_missing_images_name_their_line(tmp_path):
    path = eval_data(tmp_path, [{"image": "red.png", "prompt": "q", "answer": "a"}, {"image": "gone.png", "prompt": "q", "answer": "a"}])
    result = run_eval(path)
    assert_clean(result, 3)
    assert "line 2:" in result.stderr and "gone.png" in result.stderr


def test_eval_samples_hold_no_decoded_pictures(tmp_path):
    from tokentrim_cli.evaluation import load_jsonl

    path = eval_data(tmp_path, [{"image": "red.png", "prompt": "q", "answer": "a"}] * 5)
    evalset = load_jsonl(str(path))
    assert all(isinstance(s.image, inputs.ImageRef) and s.image.data is None for s in evalset.samples)


# ---- profiles ------------------------------------------------------------------------------------

GOOD = 'schema_version = 1\nname = "ok"\nmethod = "fastv"\n'


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[applies_to]\narchitectures = 5\n", "'architectures' must be a list of strings"),
        ("", None),
    ],
)
def test_validate_rejects_what_use_would_reject(tmp_path, extra, message):
    path = tmp_path / "p.toml"
    path.write_text(GOOD + extra)
    result = invoke("profiles", "validate", str(path))
    if message is None:
        assert result.exit_code == 0
    else:
        assert result.exit_code == 3 and message in result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('schema_version = 1\nname = "r"\nmethod = "random"\n[params]\nseed = 1000000000000000000000000\n', "'seed' must be in"),
        ('schema_version = 1\nname = "m"\nmethod = "mustdrop"\n[params]\nmerge_window = 1000000\n', "'merge_window' must be in"),
        ('schema_version = 1\nname = "m"\nmethod = "mustdrop"\n[params]\nmerge_after_vision_layer = 999\n', "'merge_after_vision_layer' must be in"),
        ('schema_version = true\nname = "m"\nmethod = "none"\n', "schema_version True is not supported"),
        ("x = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ],
)
def test_meaningless_or_crashing_profiles_are_refused(tmp_path, text, message):
    path = tmp_path / "p.toml"
    path.write_text(text)
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    result = invoke("profiles", "validate", str(path), str(good))
    assert result.exit_code == 3 and message in result.stderr, result.stderr
    assert f"ok: {good}" in result.stdout  # the bad file does not stop the check of the others


def test_one_bad_profile_does_not_hide_the_others(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "broken.toml").write_text("not = [valid")
    (tmp_path / "profiles" / "latin.toml").write_bytes(b'name = "caf\xe9"\n')
    result = invoke("profiles", "list")
    assert result.exit_code == 0
    assert "fastv" in result.stdout and "broken.toml" in result.stderr and "latin.toml" in result.stderr
    by_name = invoke("chat", *TINY, "--profile", "latin", "-p", "hi")
    assert_clean(by_name, 3)
    assert "not UTF-8" in by_name.stderr


# ---- interrupts --------------------------------------------------------------------------------------


def _spawn(*args, **kwargs):
    return subprocess.Popen([shutil.which("tokentrim"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_sigterm_ends_like_ctrl_c_with_exit_143(tmp_path):
    # A long answer (random weights rarely say </s>; the length is capped at the context).
    process = _spawn("chat", *TINY, "-p", "hi", "-n", "100000", cwd=tmp_path)
    # Signal once the model is loaded, not after a fixed delay: the ~4,000-token answer takes ~3 s
    # here, and a signal that lands after the command's own handler is gone kills it with -15.
    loaded = process.stderr.readline()
    assert loaded.startswith("Loaded"), loaded
    time.sleep(1.0)
    if process.poll() is not None:
        pytest.skip("the answer ended before the signal")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "Terminated." in stderr and "Traceback" not in stderr
    assert os.listdir(tmp_path) == []


def test_sigint_during_imports_exits_130_without_a_traceback(tmp_path):
    process = _spawn("profiles", "list", cwd=tmp_path)
    time.sleep(0.15)  # inside the imports of typer, rich and the CLI
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the command finished before the signal arrived")
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr


def test_save_expands_the_home_directory(tmp_path, monkeypatch):
    from tokentrim_cli.files import write_text_atomic

    monkeypatch.setenv("HOME", str(tmp_path))
    write_text_atomic("~/chat.json", "{}")
    assert (tmp_path / "chat.json").is_file() and not Path("~").exists()


def test_sys_executable_runs_the_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "tokentrim_cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("tokentrim ")

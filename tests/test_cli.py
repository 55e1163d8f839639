"""The command line: output discipline, JSON schema, and every error path with its exit code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from images import bomb_png, good_png, truncated_jpeg
from typer.testing import CliRunner

from tokentrim_cli.cli import app

runner = CliRunner()
TINY = ["-m", "random:tiny"]


def invoke(*args, input=None, env=None):
    return runner.invoke(app, list(args), input=input, env=env)


@pytest.fixture
def red(tmp_path):
    return str(good_png(tmp_path / "red.png"))


def test_help_lists_commands_with_examples():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("chat", "profiles", "env"):
        assert command in result.stdout
    assert "tokentrim chat --image cat.jpg" in result.stdout
    assert invoke("chat", "--help").stdout.count("tokentrim chat") >= 3


def test_no_arguments_prints_help():
    result = invoke()
    assert "Usage" in result.stdout + result.stderr


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("tokentrim ")


def test_one_shot_text_streams_answer_and_summarises_on_stderr(red):
    result = invoke("chat", *TINY, "-i", red, "-p", "What colour?", "--max-new-tokens", "5", "-v")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.endswith("\n") and "Loaded" not in result.stdout
    assert f"{red} 40x30 -> 16 visual tokens -> 16 in -> 16 kept (layer-avg 16.0)" in result.stderr
    assert "stopped at --max-new-tokens" in result.stderr
    assert "visual tokens per layer: [16, 16, 16, 16]" in result.stderr


def test_one_shot_json_schema(red):
    result = invoke("chat", *TINY, "-i", red, "-p", "What colour?", "--max-tokens", "4", "--json", "--profile", "fastv")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    for key in ("text", "model", "profile", "finish_reason", "visual_tokens", "kv_tokens_per_layer", "timing", "versions"):
        assert key in document
    assert document["model"] == "random:tiny" and document["profile"] == "fastv"
    assert document["finish_reason"] in ("stop", "length")
    assert document["visual_tokens"]["input"] == 16
    assert document["visual_tokens"]["per_layer"] == [16, 16, 8, 8]
    assert document["visual_tokens"]["layer_averaged"] == 12.0
    assert len(document["kv_tokens_per_layer"]) == 4
    assert document["kv_tokens_per_layer"][0] - document["kv_tokens_per_layer"][2] == 8
    for key in ("load_s", "ttft_s", "decode_tokens_per_s"):
        assert document["timing"][key] >= 0
    assert document["versions"]["transformers"] and document["versions"]["torch"]
    assert result.stderr == ""


@pytest.mark.parametrize("quantize", ["8bit", "4bit"])
def test_quantized_decoder_runs_on_cpu(red, quantize):
    result = invoke("chat", *TINY, "--quantize", quantize, "-i", red, "-p", "hi", "--max-new-tokens", "3", "--json", "--profile", "fastv")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["visual_tokens"]["per_layer"] == [16, 16, 8, 8]


def test_prompt_from_stdin(red):
    result = invoke("chat", *TINY, "-i", red, "--max-new-tokens", "2", "--json", input="Describe it.\n")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["new_tokens"] <= 2


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
        (lambda p: p.write_text("hello"), "not an image file"),
        (truncated_jpeg, "corrupt or truncated image"),
        (bomb_png, "refused as a decompression bomb"),
    ],
)
def test_bad_image_exits_3_with_one_line(tmp_path, make, reason):
    path = tmp_path / "bad.png"
    make(path)
    result = invoke("chat", *TINY, "-i", str(path), "-p", "hi")
    assert result.exit_code == 3
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"Error: {path}: ") and reason in first
    assert "Traceback" not in result.stderr and "Loaded" not in result.stderr  # failed before the model loaded


def test_missing_image_exits_2_before_loading(tmp_path):
    result = invoke("chat", "-m", "random:does-not-matter", "-i", str(tmp_path / "nope.png"), "-p", "hi")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: image not found: {tmp_path / 'nope.png'}"


def test_unknown_profile_exits_3_listing_known(red):
    result = invoke("chat", *TINY, "-i", red, "-p", "hi", "--profile", "fastvv")
    assert result.exit_code == 3
    from tokentrim_cli.profiles import available_profiles

    known = ", ".join(sorted(available_profiles()))  # computed; tests run with no user profiles around
    assert f"unknown profile 'fastvv' (did you mean 'fastv'?); known: {known}" in result.stderr


def test_profile_that_does_not_fit_exits_3(red):
    result = invoke("chat", *TINY, "-i", red, "-p", "hi", "--profile", "vtw")
    assert result.exit_code == 3
    assert "'layer' must be in [1, 4] for this model, got 16" in result.stderr


@pytest.mark.parametrize("model", ["random:nope", "definitely/not-a-model"])
def test_unknown_model_exits_4(red, model):
    result = invoke("chat", "-m", model, "--offline", "-i", red, "-p", "hi")
    assert result.exit_code == 4, result.stderr
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr


def test_not_a_llava_model_exits_4(red, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    result = invoke("chat", "-m", str(tmp_path), "-i", red, "-p", "hi")
    assert result.exit_code == 4
    assert "is a 'bert' model, not a LLaVA-family model" in result.stderr


def test_cuda_asked_without_cuda_exits_6(red):
    result = invoke("chat", *TINY, "--device", "cuda", "-i", red, "-p", "hi")
    assert result.exit_code == 6 and "CUDA is not available" in result.stderr


def test_bad_enum_value_is_a_usage_error(red):
    assert invoke("chat", *TINY, "--dtype", "float8", "-i", red, "-p", "hi").exit_code == 2


def test_profiles_list_show_validate(tmp_path):
    listed = invoke("profiles", "list", env={"COLUMNS": "120"})
    assert listed.exit_code == 0 and all(name in listed.stdout for name in ("baseline", "fastv", "vtw"))
    rows = {cells[0]: cells[1:] for line in listed.stdout.splitlines() if line.startswith("│")
            for cells in [[c.strip() for c in line.split("│")[1:-1]]]}  # fmt: skip
    assert rows["divprune-64"] == ["divprune", "vision", "no", "no"]  # attention-free, question-agnostic
    assert rows["fastv"] == ["fastv", "prefill", "yes", "yes"]
    assert rows["st3"] == ["st3", "prefill + decode", "yes", "yes"]
    assert rows["mustdrop"] == ["mustdrop", "vision + prefill + decode", "yes", "yes"]
    shown = invoke("profiles", "show", "fastv")
    assert shown.exit_code == 0 and 'method = "fastv"' in shown.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('schema_version = 1\nname = "x"\nmethod = "fastv"\n[params]\ndrop_rate = 0.5\n')
    result = invoke("profiles", "validate", "fastv", str(bad))
    assert result.exit_code == 3
    assert "ok: " in result.stdout
    assert f"invalid: {bad}: [params] unknown key 'drop_rate' (did you mean 'drop_ratio'?)" in result.stderr


def test_env_json_lists_shapes():
    result = invoke("env", "--json")
    assert result.exit_code == 0
    facts = json.loads(result.stdout)
    assert {"random:tiny", "random:cpu-576", "random:llava-1.5-7b", "random:llava-1.5-13b"} <= set(facts["random_shapes"])


def test_out_of_memory_exits_5_with_remedies(red, monkeypatch):
    from tokentrim_cli import generation

    class OutOfMemoryError(RuntimeError):  # what torch.cuda raises, by name
        pass

    def exhausted(*args, **kwargs):
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(generation, "generate", exhausted)
    result = invoke("chat", *TINY, "-i", red, "-p", "hi")
    assert result.exit_code == 5
    assert result.stderr.splitlines()[-2:] == [
        "Error: out of memory: CUDA out of memory. Tried to allocate 2.00 GiB",
        "Hint: try --quantize 4bit, a stronger trimming profile, or fewer images",
    ]


def test_traceback_only_with_debug(red, monkeypatch):
    monkeypatch.setenv("TOKENTRIM_DEBUG", "1")
    result = invoke("chat", *TINY, "-i", red, "-p", "hi", "--profile", "vtw")
    assert result.exit_code == 3 and "Traceback" in result.stderr


def test_help_does_not_import_torch():
    code = "import sys; from tokentrim_cli.cli import app; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)

"""random:<shape> models: exact architectures, reproducible across processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tokentrim_cli.model import SHAPES, build_random


def test_llava_7b_shape_is_exact():
    model, processor = build_random("llava-1.5-7b", device="meta")
    parameters = sum(p.numel() for p in model.parameters())
    assert 7.0e9 < parameters < 7.1e9  # 7.06B, as llava-hf/llava-1.5-7b-hf
    text = model.config.text_config
    assert (text.num_hidden_layers, text.hidden_size, text.intermediate_size, text.vocab_size) == (32, 4096, 11008, 32064)
    assert model.config.image_token_id == 32000 == processor.tokenizer.convert_tokens_to_ids("<image>")
    vision = model.config.vision_config
    assert (vision.image_size, vision.patch_size, vision.num_hidden_layers) == (336, 14, 24)


@pytest.mark.parametrize("name", ["tiny", "cpu-576", "llava-1.5-7b-narrow"])
def test_visual_token_counts(name):
    shape = SHAPES[name]
    assert (shape.image_size // shape.patch_size) ** 2 == {"tiny": 16, "cpu-576": 576, "llava-1.5-7b-narrow": 576}[name]


def test_tokenizer_ids_do_not_depend_on_the_process():
    # The byte alphabet comes as a set: its order once followed the process's hash seed.
    code = "from tokentrim_cli.model import build_random; print(build_random('tiny')[1].tokenizer('hello?')['input_ids'])"
    outputs = {
        subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONHASHSEED=seed), capture_output=True,
                       text=True, check=True).stdout  # fmt: skip
        for seed in ("1", "2")
    }
    assert len(outputs) == 1


def test_16_bit_floats_on_a_cpu_that_emulates_them_get_a_warning(fake_cpu):
    from tokentrim_cli.model import slow_cpu_dtype_warning

    fake_cpu()  # AVX2 alone, as the 2-core EPYC where bfloat16 ran 190x slower than float32
    assert "no native bfloat16 arithmetic (no AVX512-BF16 or AMX)" in slow_cpu_dtype_warning("bfloat16", "cpu")
    assert "no native float16 arithmetic (no AVX512)" in slow_cpu_dtype_warning("float16", "cpu")
    assert "--dtype" in slow_cpu_dtype_warning("bfloat16", "cpu,cuda:0")  # layers offloaded to the CPU
    for dtype, device in (("float32", "cpu"), ("bfloat16", "cuda:0"), ("float16", "cuda:0,cuda:1")):
        assert slow_cpu_dtype_warning(dtype, device) is None


@pytest.mark.parametrize("features, dtype", [({"avx512_bf16": True}, "bfloat16"), ({"amx_tile": True}, "bfloat16"),
                                             ({"avx512": True}, "float16"), ({"amx_fp16": True}, "float16")])  # fmt: skip
def test_a_cpu_with_native_16_bit_arithmetic_gets_no_warning(fake_cpu, features, dtype):
    from tokentrim_cli.model import slow_cpu_dtype_warning

    fake_cpu(**features)
    assert slow_cpu_dtype_warning(dtype, "cpu") is None
    fake_cpu(machine="aarch64")  # no claim about CPUs torch's x86 checks do not describe
    assert slow_cpu_dtype_warning(dtype, "cpu") is None


def test_the_cli_says_why_a_bfloat16_run_on_such_a_cpu_is_slow(fake_cpu):
    from typer.testing import CliRunner

    from tokentrim_cli.cli import app

    fake_cpu()
    args = ["chat", "-m", "random:tiny", "-p", "Hi", "-n", "2", "--quiet"]
    result = CliRunner().invoke(app, [*args, "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.stderr
    assert "Warning: this CPU has no native bfloat16 arithmetic" in result.stderr  # under --quiet too
    assert "Warning" not in CliRunner().invoke(app, args).stderr  # auto: float32 on CPU

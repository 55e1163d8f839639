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

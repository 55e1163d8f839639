"""The pure arithmetic of reports: FLOPs, KV bytes, budgets, statistics."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS, make_inputs

from tokentrim_cli.engine import Trimmer
from tokentrim_cli.methods import VTW
from tokentrim_cli.methods.vtw import VTWConfig
from tokentrim_cli.metrics import Stats, kv_bytes, layer_averaged_budget, layer_flops, percentile, prefill_flops


def test_layer_flops_formula():
    # 4nd^2 + 2n^2d + 2ndm with n=2, d=3, m=5
    assert layer_flops(2, hidden=3, intermediate=5) == 4 * 2 * 9 + 2 * 4 * 3 + 2 * 2 * 3 * 5


def test_vtw_on_llava_7b_shape_matches_published_ratio():
    # 576 visual + 100 text tokens; VTW K=16 withdraws the image for 16 of 32 layers: ~55% (methods.md §1.5)
    full = prefill_flops([676] * 32, hidden=4096, intermediate=11008)
    vtw = prefill_flops([676] * 16 + [100] * 16, hidden=4096, intermediate=11008)
    assert 0.55 <= vtw / full <= 0.58


def test_kv_bytes_llava_7b_fp16_is_half_a_mebibyte_per_token():
    assert kv_bytes([1] * 32, kv_heads=32, head_dim=128, bytes_per_element=2) == 512 * 1024


def test_budgets_and_statistics():
    assert layer_averaged_budget([576, 576, 288, 288]) == 432
    assert percentile([1, 2, 3, 4, 5], 10) == pytest.approx(1.4)
    assert percentile([5.0], 90) == 5.0
    stats = Stats.of([3.0, 1.0, 2.0, 10.0])
    assert stats.median == 2.5 and stats.n == 4 and stats.p10 == pytest.approx(1.3)


def test_measured_kv_bytes_agree_with_the_formula(tiny):
    model, processor = tiny
    inputs = make_inputs(processor, [(PROMPTS[0], 1)])
    with torch.no_grad(), Trimmer(model, VTW(VTWConfig(layer=2))) as trimmer:
        model(**inputs, use_cache=True)
    cache = trimmer.last_cache
    text = model.config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    expected = kv_bytes(cache.lengths(), kv_heads=text.num_key_value_heads, head_dim=head_dim, bytes_per_element=4)
    assert cache.nbytes() == expected
    trace = cache.meta.prefills[-1]
    assert trace.kv_after_prefill == cache.lengths()
    assert trace.tokens_per_layer[0][2:] == [trace.tokens_per_layer[0][0] - 16] * 2

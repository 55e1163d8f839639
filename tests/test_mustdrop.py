"""MustDrop: window merge, key set and dual threshold as pure functions; the vision stage against
stock CLIP; prefill filter and output-aware cache against the masked-attention oracle."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import PROMPTS, make_inputs
from oracle import NEVER, MaskedReference
from test_engine import STEPS, check_batched_equals_per_sample, generate

from tokentrim_cli.engine import Trimmer
from tokentrim_cli.engine.vision import VisionRunner
from tokentrim_cli.errors import UnsupportedError
from tokentrim_cli.methods.base import VisionInputs
from tokentrim_cli.methods.mustdrop import MustDrop, MustDropConfig, dual_threshold_drop, key_set, window_merge

SAMPLES = [(PROMPTS[0], 1), (PROMPTS[1], 2)]


# ---- pure helpers on hand-made tensors ----------------------------------------------------------


def test_window_merge_merges_similar_tiles_into_their_last_token():
    side, dim = 6, 4
    tokens = torch.randn(side * side, dim, generator=torch.Generator().manual_seed(0))
    top_left = [0, 1, 2, 6, 7, 8, 12, 13, 14]
    tokens[top_left] = torch.tensor([1.0, 2.0, 0.0, 0.0]) * torch.arange(1, 10.0)[:, None]  # parallel: cosine 1
    merged, keep = window_merge(tokens, side=side, window=3, threshold=0.8)
    assert keep.sum() == side * side - 8
    assert not keep[top_left[:-1]].any() and keep[14]
    torch.testing.assert_close(merged[14], tokens[top_left].mean(0))
    untouched = keep.clone()
    untouched[14] = False
    torch.testing.assert_close(merged[untouched], tokens[untouched])


def test_window_merge_leaves_grid_remainders_alone():
    tokens = torch.ones(16, 3)  # 4x4 grid: one full 3x3 tile, the last row and column are left alone
    _, keep = window_merge(tokens, side=4, window=3, threshold=0.999)
    assert keep.sum() == 16 - 8 and keep[[3, 7, 11, 12, 13, 14, 15]].all()
    _, keep = window_merge(tokens, side=4, window=3, threshold=1.01)
    assert keep.all()


def test_key_set_is_the_top_share():
    scores = torch.tensor([0.1, 0.9, 0.3, 0.9, 0.0, 0.2, 0.5, 0.4, 0.6, 0.7, 0.05, 0.15, 0.25])
    assert key_set(scores, 0.08).tolist() == [1, 3]  # ceil(0.08 * 13) = 2; ties go to the lower position
    assert key_set(scores, 1.0).tolist() == list(range(13))
    assert key_set(scores, 0.0).tolist() == []


def test_dual_threshold_needs_both_tests_to_say_unimportant():
    attention = torch.tensor([[0.30, 0.001, 0.004, 0.0005], [0.30, 0.001, 0.0001, 0.0005]])  # (R=2, n=4)
    protected = torch.tensor([False, False, False, True])
    drop = dual_threshold_drop(attention, protected, global_threshold=0.01, individual_threshold=0.003)
    # token 1: low sum and low max -> dropped; token 2: low sum but one high row -> kept;
    # token 3: would go, but it is in the key set; token 0: high everywhere.
    assert drop.tolist() == [False, True, False, False]
    assert not dual_threshold_drop(attention[:0], protected, global_threshold=1, individual_threshold=1).any()


# ---- the vision stage ---------------------------------------------------------------------------


def vision_output(model, inputs, config):
    stock_kwargs = dict(vision_feature_layer=model.config.vision_feature_layer,
                        vision_feature_select_strategy=model.config.vision_feature_select_strategy)  # fmt: skip
    stock = model.model.get_image_features(pixel_values=inputs["pixel_values"], **stock_kwargs).pooler_output
    with torch.no_grad():
        runner = VisionRunner(model.model, inputs["pixel_values"], feature_layer=model.config.vision_feature_layer,
                              select_strategy=model.config.vision_feature_select_strategy)  # fmt: skip
        ours = MustDrop(config).on_vision(VisionInputs(runner, lambda: list(stock)))
    return list(stock), ours


def test_vision_stage_without_merging_reproduces_stock_features(tiny):
    model, processor = tiny
    inputs = make_inputs(processor, SAMPLES)
    with torch.no_grad():
        stock, ours = vision_output(model, inputs, MustDropConfig(merge_threshold=2.0))
    assert len(ours.features) == len(stock) == 3
    for a, b, keep, protected in zip(ours.features, stock, ours.keep, ours.protected):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        assert keep.all() and protected.sum() == 2  # ceil(0.08 * 16)


def test_vision_stage_merge_matches_a_hand_run_of_clip(tiny):
    model, processor = tiny
    inputs = make_inputs(processor, SAMPLES[:1])
    tower = model.model.vision_tower
    with torch.no_grad():
        _, ours = vision_output(model, inputs, MustDropConfig(merge_threshold=-1.0))  # every full tile merges
        hidden = tower.pre_layrnorm(tower.embeddings(inputs["pixel_values"]))
        hidden = tower.encoder.layers[0](hidden, None)  # the feature layer (-2 of 2) is layer 0's output
        patches = hidden[0, 1:]
        tile = [0, 1, 2, 4, 5, 6, 8, 9, 10]
        expected = patches.clone()
        expected[10] = patches[tile].mean(0)
        projected = model.model.multi_modal_projector(expected)
    keep = ours.keep[0]
    assert keep.tolist() == [i not in tile[:-1] for i in range(16)]
    torch.testing.assert_close(ours.features[0][keep], projected[keep], atol=1e-6, rtol=1e-5)


def test_vision_stage_refuses_a_next_model(tiny_next):
    model, _ = tiny_next
    with pytest.raises(UnsupportedError, match="vision stage, supported on LLaVA-1.5-style models only"):
        Trimmer(model, MustDrop(MustDropConfig(filter_layers=(1,)))).install()


# ---- prefill filter + output-aware cache == oracle ----------------------------------------------


def embeds_with(model, inputs, vision) -> torch.Tensor:
    """inputs_embeds with MustDrop's features in the image slots (what the engine's LM sees)."""
    embeds = model.get_input_embeddings()(inputs["input_ids"]).clone()
    slots = inputs["input_ids"] == model.config.image_token_id
    embeds[slots] = torch.cat(vision.features).to(embeds.dtype)
    return embeds


def mustdrop_reference(model, inputs, config, *, compact=False):
    """hidden_from per layer, with every choice made on stock eager attention (earlier drops masked)."""
    num_layers = len(model.model.language_model.layers)
    with torch.no_grad():
        _, vision = vision_output(model, inputs, config)
    ids = inputs["input_ids"]
    slots = ids == model.config.image_token_id
    batch, length = ids.shape
    total = length + STEPS
    merged_away = torch.zeros(batch, total, dtype=torch.bool)
    merged_away[:, :length][slots] = ~torch.cat(vision.keep)
    protected = torch.zeros(batch, length, dtype=torch.bool)
    protected[slots] = torch.cat(vision.protected)
    hidden = [merged_away.clone() for _ in range(num_layers)]
    alive = slots & ~merged_away[:, :length]
    last_filter = {}
    for layer in config.filter_layers:
        attention = MaskedReference(model, hidden, compact=compact).attentions(
            {"inputs_embeds": embeds_with(model, inputs, vision), "attention_mask": inputs["attention_mask"]}
        )[layer].float().mean(1)  # (B, T, T)
        for b in range(batch):
            last_image = int(slots[b].nonzero().max())
            rows = [t for t in range(last_image + 1, length) if inputs["attention_mask"][b, t]]
            candidates = alive[b].nonzero().squeeze(1)
            scores = attention[b][rows][:, candidates]
            received, strongest = scores.sum(0), scores.max(0).values
            gone = (received < config.global_threshold * received.sum()) & (strongest < config.individual_threshold)
            gone = candidates[gone & ~protected[b, candidates]]
            alive[b, gone] = False
            for later in range(layer + 1, num_layers):
                hidden[later][b, gone] = True
            for token in gone.tolist():
                last_filter[(b, token)] = layer
    hidden_from = [torch.where(h, 0, NEVER) for h in hidden]
    # Output-aware cache: from the first decode step on, layers from the first filter layer up to
    # the one that dropped a token no longer hold it.
    for (b, token), layer in last_filter.items():
        for earlier in range(config.filter_layers[0], layer + 1):
            hidden_from[earlier][b, token] = 1
    return hidden_from, vision


STRONG = MustDropConfig(merge_threshold=-1.0, key_fraction=0.25, filter_layers=(0, 1), global_threshold=0.15, individual_threshold=0.5)


@pytest.mark.parametrize("policy", ["keep", "compact"])
def test_mustdrop_matches_oracle(tiny, policy):
    model, processor = tiny
    inputs = make_inputs(processor, SAMPLES)
    hidden_from, vision = mustdrop_reference(model, inputs, STRONG, compact=policy == "compact")
    trimmer = Trimmer(model, MustDrop(STRONG), position_policy=policy)
    ours = generate(model, inputs, trimmer)
    tokens = ours.sequences[:, inputs["input_ids"].shape[1] :]
    reference = MaskedReference(model, hidden_from, compact=policy == "compact")
    oracle_inputs = {"inputs_embeds": embeds_with(model, inputs, vision), "attention_mask": inputs["attention_mask"]}
    expected = reference.step_logits(oracle_inputs, tokens[:, :STEPS])
    for step, (a, b) in enumerate(zip(ours.logits, expected)):
        torch.testing.assert_close(a.float(), b, atol=1e-4, rtol=1e-4, msg=f"step {step}")
    cache = trimmer.last_cache
    trace = cache.meta.prefills[-1]
    n_images = torch.tensor([n for _, n in SAMPLES])
    assert trace.visual_input == (n_images * 8).tolist()  # each 4x4 image merged its one 3x3 tile
    survivors = [row[-1] for row in trace.visual_per_layer]
    # Output-aware cache: from the first filter layer on, every layer holds only the survivors.
    assert [row[STRONG.filter_layers[0] :] for row in cache.visual_lengths()] == [[n] * 4 for n in survivors]
    assert all(row[-1] < row[0] for row in trace.visual_per_layer)  # the filter really dropped tokens


def test_neutral_mustdrop_is_a_noop(tiny):
    model, processor = tiny
    inputs = make_inputs(processor, SAMPLES)
    stock = generate(model, inputs)
    ours = generate(model, inputs, Trimmer(model, MustDrop(MustDropConfig.neutral(4))))
    assert torch.equal(stock.sequences, ours.sequences)
    for a, b in zip(stock.logits, ours.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)  # the vision stage recomputes CLIP its own way


def test_mustdrop_batched_equals_per_sample(tiny):
    model, processor = tiny
    check_batched_equals_per_sample(model, processor, SAMPLES, MustDrop(STRONG))


def test_vision_tower_without_cls_falls_back_and_warns():
    """SigLIP has no CLS token: the key set comes from the mean attention each patch receives."""
    import transformers

    from tokentrim_cli.model import LLAVA_CHAT_TEMPLATE, _byte_tokenizer

    tokenizer = _byte_tokenizer(None, LLAVA_CHAT_TEMPLATE)
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    config = transformers.LlavaConfig(
        vision_config=transformers.SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
        ),
        text_config=transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=image_token + 64),  # fmt: skip
        image_token_index=image_token, vision_feature_layer=-1, vision_feature_select_strategy="full",
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        stock = list(model.model.get_image_features(pixel_values=pixels, vision_feature_layer=-1,
                                                    vision_feature_select_strategy="full").pooler_output)  # fmt: skip
        with pytest.warns(UserWarning, match="no CLS token"):
            runner = VisionRunner(model.model, pixels, feature_layer=-1, select_strategy="full")
            ours = MustDrop(MustDropConfig(merge_threshold=2.0, filter_layers=(1,))).on_vision(VisionInputs(runner, lambda: stock))
    for a, b, protected in zip(ours.features, stock, ours.protected):
        assert a.shape == b.shape == (16, 64)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert protected.sum() == 2  # ceil(0.08 * 16)


def test_vision_stage_key_set_from_stock_eager_attention(tiny):
    """The key set is the top CLS-attended post-merge patches in the layer that reads the features,
    from stock CLIP eager attention weights on a merge written out here (not the method's helpers)."""
    model, processor = tiny
    inputs = make_inputs(processor, SAMPLES[:1])
    config = MustDropConfig(merge_threshold=-1.0, key_fraction=0.25)  # the one full 3x3 tile merges
    tower = model.model.vision_tower
    tile = [0, 1, 2, 4, 5, 6, 8, 9, 10]  # 4x4 grid, window 3: patches of the first tile, merged into 10
    survivors = [i for i in range(16) if i not in tile[:-1]]
    tower.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            hidden = tower.encoder.layers[0](tower.pre_layrnorm(tower.embeddings(inputs["pixel_values"])), None)
            patches = hidden[0, 1:].clone()
            patches[10] = hidden[0, 1:][tile].mean(0)
            merged = torch.cat([hidden[0, :1], patches[survivors]])[None]
            reader = tower.encoder.layers[1]  # feature layer -2 of 2 layers: layer 1 reads it
            _, weights = reader.self_attn(reader.layer_norm1(merged))
    finally:
        tower.set_attn_implementation("sdpa")
    cls_row = weights[0].float().mean(0)[0, 1:]  # head mean, over the survivors
    count = math.ceil(0.25 * len(survivors))
    order = sorted(range(len(survivors)), key=lambda i: (-float(cls_row[i]), i))[:count]
    expected = sorted(survivors[i] for i in order)
    _, ours = vision_output(model, inputs, config)
    assert ours.protected[0].nonzero().squeeze(1).tolist() == expected
    assert ours.keep[0].nonzero().squeeze(1).tolist() == survivors


def test_merged_first_is_the_reference_layout(tiny):
    """merged_first packs each image's tokens into its first placeholders, merged tokens first, and
    the whole run still equals the masked oracle (compact positions, as the reference)."""
    model, processor = tiny
    inputs = make_inputs(processor, SAMPLES)
    config = dataclasses.replace(STRONG, merged_first=True)
    _, vision = vision_output(model, inputs, config)
    for keep in vision.keep:
        assert keep.tolist() == [True] * 8 + [False] * 8  # 16 patches, one tile of 9 merged into 1
    hidden_from, vision = mustdrop_reference(model, inputs, config, compact=True)
    trimmer = Trimmer(model, MustDrop(config), position_policy="compact")
    ours = generate(model, inputs, trimmer)
    tokens = ours.sequences[:, inputs["input_ids"].shape[1] :]
    oracle_inputs = {"inputs_embeds": embeds_with(model, inputs, vision), "attention_mask": inputs["attention_mask"]}
    expected = MaskedReference(model, hidden_from, compact=True).step_logits(oracle_inputs, tokens[:, :STEPS])
    for step, (a, b) in enumerate(zip(ours.logits, expected)):
        torch.testing.assert_close(a.float(), b, atol=1e-4, rtol=1e-4, msg=f"step {step}")


def test_budget_in_the_references_convention():
    """MustDrop's code averages the visual tokens each layer holds *after* its own pruning."""
    from tokentrim_cli.generation import Trace

    trace = Trace(visual_before=[8], visual_input=[8], visual_per_layer=[[8, 8, 4, 4, 2]], tokens_per_layer=[[9] * 5],
                  kv_after_prefill=[9] * 5, kv_end=[9] * 5, kv_bytes_end=0)  # fmt: skip
    assert trace.layer_averaged == [26 / 5]
    assert trace.layer_averaged_after_pruning == [(8 + 4 + 4 + 2 + 2) / 5]

"""VisionZip, DART, DivPrune, CDPruner, PyramidDrop: each against an independent reference written here.

Selections are checked on hand-made tensors against plain re-statements of the official algorithms;
whole runs are checked by "dropping equals masking": the tokens each method should keep are chosen
here from stock transformers' own tensors (input embeddings, hidden states, eager attention), and
stock transformers with exactly those keys hidden must give the engine's logits.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import PROMPTS, make_inputs
from oracle import MaskedReference
from test_engine import STEPS, check_against_oracle, check_batched_equals_per_sample, generate

from tokentrim_cli.engine import Trimmer
from tokentrim_cli.engine.vision import VisionRunner
from tokentrim_cli.methods import CDPruner, DART, DivPrune, PyramidDrop, VisionZip
from tokentrim_cli.methods.base import VisionInputs, image_runs, scaled_budget
from tokentrim_cli.methods.cdpruner import CDPrunerConfig, conditional_kernel, dpp_greedy_map, relevance_scores
from tokentrim_cli.methods.dart import DARTConfig, dart_select, pivot_shares
from tokentrim_cli.methods.divprune import DivPruneConfig, max_min_diverse
from tokentrim_cli.methods.pyramiddrop import PyramidDropConfig, stage_keep
from tokentrim_cli.methods.visionzip import VisionZipConfig, contextual_merge

SAMPLES = [(PROMPTS[0], 1), (PROMPTS[1], 2)]  # left-padded batch, one sample with two images


# ---- selections on hand-made tensors ----------------------------------------------------------------


def reference_divprune(features: torch.Tensor, count: int) -> list[int]:
    """The official loop, restated: the distance matrix, the second-smallest of each column first,
    then the column minimum over the picked rows."""
    unit = features / features.norm(dim=1, keepdim=True)
    distance = 1.0 - unit @ unit.T
    picked = []
    for i in range(count):
        if i == 0:
            scores = distance.topk(2, dim=0, largest=False).values[1]
        else:
            scores = distance[picked].min(dim=0).values
            scores[picked] = -1.0
        picked.append(int(scores.argmax()))
    return sorted(picked)


def test_divprune_matches_the_official_loop():
    generator = torch.Generator().manual_seed(0)
    for n, count in ((16, 5), (40, 12), (9, 9)):
        features = torch.randn(n, 8, generator=generator)
        assert max_min_diverse(features, count).tolist() == reference_divprune(features, count)
    # Three near-duplicates and one outlier: the outlier first, then one of the cluster, never two.
    features = torch.tensor([[1.0, 0.0], [1.0, 0.01], [1.0, -0.01], [0.0, 1.0]])
    assert max_min_diverse(features, 2).tolist() in ([0, 3], [1, 3], [2, 3])


def reference_dpp(kernel: torch.Tensor, count: int) -> list[int]:
    """Greedy MAP by brute force: each step adds the item that maximises det(L_S)."""
    picked: list[int] = []
    for _ in range(count):
        best, best_det = None, -math.inf
        for j in range(kernel.shape[0]):
            if j in picked:
                continue
            subset = picked + [j]
            det = float(torch.linalg.det(kernel[subset][:, subset].double()))
            if det > best_det + 1e-12:
                best, best_det = j, det
        picked.append(best)
    return sorted(picked)


def test_cdpruner_dpp_matches_brute_force_greedy():
    generator = torch.Generator().manual_seed(1)
    for n, count in ((10, 4), (14, 6)):
        features = torch.randn(n, 12, generator=generator)
        relevance = torch.rand(n, generator=generator) + 0.1
        kernel = conditional_kernel(features, relevance)
        assert dpp_greedy_map(kernel, count).tolist() == reference_dpp(kernel, count)


def test_cdpruner_relevance_is_the_official_negated_min_max():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [1.0, 0.2]])
    cos = torch.nn.functional.normalize(image, dim=1) @ torch.nn.functional.normalize(text, dim=1).T
    negated = -cos.mean(1)
    expected = (negated - negated.min() + 1e-6) / (negated.max() - negated.min())
    torch.testing.assert_close(relevance_scores(image, text, negated=True), expected)
    assert relevance_scores(image, text, negated=False).argmax() == 0  # the paper's sign favours the aligned token


def reference_dart(run, text, key_norm, normed, budget, image_pivots, text_pivots) -> list[int]:
    """The official selection restated with plain Python lists (pivots taken in token order)."""
    run, text = run.tolist(), text.tolist()
    image_piv = sorted(sorted(run, key=lambda t: (-float(key_norm[t]), t))[:image_pivots])
    text_piv = sorted(text, key=lambda t: (-float(key_norm[t]), t))[:text_pivots]
    pivots = sorted(image_piv + text_piv)
    extra = budget - len(image_piv)
    shares = [extra // len(pivots) + (i < extra % len(pivots)) for i in range(len(pivots))]
    pool = [t for t in run if t not in image_piv]
    kept = list(image_piv)
    unit = torch.nn.functional.normalize(normed.float(), dim=-1)
    for pivot, share in zip(pivots, shares):
        ranked = sorted(pool, key=lambda t: (float(unit[t] @ unit[pivot]), t))[:share]
        kept += ranked
        pool = [t for t in pool if t not in ranked]
    return sorted(kept)


def test_dart_selection_matches_the_restated_official_code():
    generator = torch.Generator().manual_seed(2)
    n = 40
    normed = torch.randn(n, 6, generator=generator)
    key_norm = torch.rand(n, generator=generator)
    run, text = torch.arange(3, 30), torch.arange(31, 40)
    for budget in (5, 12, 20, 27):
        ours = dart_select(run, text, key_norm, normed, budget, 4, 4).tolist()
        assert ours == reference_dart(run, text, key_norm, normed, budget, 4, 4)
        assert len(ours) == budget  # the budget is exact
    assert pivot_shares(13, 8) == [2, 2, 2, 2, 2, 1, 1, 1]


def test_visionzip_contextual_merge_by_hand():
    hidden = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0], [5.0, 0.0], [6.0, 0.0]])
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0], [1.0, -0.1], [-1.0, 0.0]])
    # 2 targets at stride 6 // 2 = 3: patches 0 and 3; 2 and 4 join 0 (keys near (1, 0)), 1 joins 3;
    # 5 (key (-1, 0)) is most similar to 3's (0.1, 1): cosine -0.1 against 0's -1.
    merged = contextual_merge(hidden, keys, 2)
    torch.testing.assert_close(merged, torch.tensor([[1.0 + (3.0 + 5.0) / 2, 0.0], [4.0 + (2.0 + 6.0) / 2, 0.0]]))


def test_pyramiddrop_keeps_the_truncated_powers():
    assert [stage_keep(576, k, 0.5) for k in (1, 2, 3)] == [288, 144, 72]
    assert [stage_keep(576, k, 0.28) for k in (1, 2, 3)] == [161, 45, 12]  # int() truncation, as the official
    assert stage_keep(3, 3, 0.1) == 1


def test_budgets_scale_per_image():
    assert scaled_budget(64, 576) == 64 and scaled_budget(128, 2880) == 640  # NeXT: the papers' 640
    assert scaled_budget(64, 16) == 2 and scaled_budget(576, 52) == 52 and scaled_budget(1, 16) == 1
    runs = image_runs(torch.tensor([False, True, True, False, True, False, True, True, True]))
    assert [r.tolist() for r in runs] == [[1, 2], [4], [6, 7, 8]]


# ---- whole runs against stock transformers -------------------------------------------------------


def _image_embeds(model, inputs) -> torch.Tensor:
    """The language model's input embeddings, image features in their slots (stock's masked_scatter)."""
    with torch.no_grad():
        embeds = model.get_input_embeddings()(inputs["input_ids"]).clone()
        features = model.model.get_image_features(
            pixel_values=inputs["pixel_values"], vision_feature_layer=model.config.vision_feature_layer,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        ).pooler_output  # fmt: skip
    slots = inputs["input_ids"] == model.config.image_token_id
    embeds[slots] = torch.cat(list(features)).to(embeds.dtype)
    return embeds


def dropped_before_layer0(model, inputs, select) -> torch.Tensor:
    """Which visual tokens a pre-LLM method drops: `select(features (n, D), other_rows) -> kept
    indices` per image, on the input embeddings computed here."""
    embeds = _image_embeds(model, inputs)
    ids = inputs["input_ids"]
    visual = ids == model.config.image_token_id
    hidden = torch.zeros(ids.shape[0], ids.shape[1] + STEPS, dtype=torch.bool)
    for b in range(ids.shape[0]):
        real = inputs["attention_mask"][b].bool()
        runs = image_runs(visual[b] & real)
        last = int(runs[-1][-1])
        instruction = embeds[b, (torch.arange(ids.shape[1]) > last) & real & ~visual[b]]
        for run in runs:
            kept = run[select(embeds[b, run], instruction)]
            hidden[b, run] = True
            hidden[b, kept] = False
    return hidden


@pytest.mark.parametrize("policy", ["compact", "keep"])
def test_divprune_matches_oracle(tiny, policy):
    model, processor = tiny
    inputs = make_inputs(processor, SAMPLES)
    config = DivPruneConfig(budget=200)  # 6 of each 16-token image
    hidden = dropped_before_layer0(
        model, inputs, lambda f, _: torch.tensor(reference_divprune(f, scaled_budget(config.budget, f.shape[0])))
    )
    trimmer = Trimmer(model, DivPrune(config), position_policy=policy)
    cache = check_against_oracle(model, inputs, trimmer, {0: hidden}, compact=policy == "compact")
    assert cache.meta.prefills[-1].visual_input == [6, 12]


def test_cdpruner_matches_oracle(tiny):
    model, processor = tiny
    inputs = make_inputs(processor, SAMPLES)
    config = CDPrunerConfig(budget=300)  # 8 of each 16-token image

    def select(features, instruction):
        unit_i = torch.nn.functional.normalize(features.float(), dim=1)
        unit_t = torch.nn.functional.normalize(instruction.float(), dim=1)
        relevance = -(unit_i @ unit_t.T).mean(1)
        relevance = (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())
        kernel = relevance[:, None] * (unit_i @ unit_i.T) * relevance[None, :]
        return torch.tensor(reference_dpp(kernel, scaled_budget(config.budget, features.shape[0])))

    hidden = dropped_before_layer0(model, inputs, select)
    cache = check_against_oracle(model, inputs, Trimmer(model, CDPruner(config), position_policy="compact"), {0: hidden}, compact=True)
    assert cache.meta.prefills[-1].visual_input == [8, 16]


def test_dart_matches_oracle(tiny):
    """Pivots from layer K-1's keys (recomputed here from stock hidden states: input norm, key
    projection, RoPE), similarity on layer K-1's output under the final norm."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model, processor = tiny
    inputs = make_inputs(processor, SAMPLES)
    config = DARTConfig(layer=2, budget=250)  # 7 of each 16-token image
    lm = model.model.language_model
    with torch.no_grad():
        states = model(**inputs, output_hidden_states=True).hidden_states  # [embeddings, layer 0 out, ...]
        layer_in, layer_out = states[config.layer - 1], states[config.layer]
        positions = (inputs["attention_mask"].long().cumsum(1) - 1).clamp(min=0)
        cos, sin = lm.rotary_emb(layer_in, positions)
        attention = lm.layers[config.layer - 1].self_attn
        keys = attention.k_proj(lm.layers[config.layer - 1].input_layernorm(layer_in))
        keys = keys.view(*keys.shape[:2], -1, attention.head_dim).transpose(1, 2)
        _, keys = apply_rotary_pos_emb(keys, keys, cos, sin)
        key_norm = keys.transpose(1, 2).flatten(2).abs().sum(-1)  # (B, T)
        normed = lm.norm(layer_out)
    ids = inputs["input_ids"]
    visual = ids == model.config.image_token_id
    hidden = torch.zeros(ids.shape[0], ids.shape[1] + STEPS, dtype=torch.bool)
    for b in range(ids.shape[0]):
        real = inputs["attention_mask"][b].bool()
        runs = image_runs(visual[b] & real)
        text = ((torch.arange(ids.shape[1]) > int(runs[-1][-1])) & real & ~visual[b]).nonzero().squeeze(1)
        for run in runs:
            kept = reference_dart(run, text, key_norm[b], normed[b], scaled_budget(config.budget, run.numel()), 4, 4)
            hidden[b, run] = True
            hidden[b, kept] = False
    cache = check_against_oracle(model, inputs, Trimmer(model, DART(config)), {config.layer: hidden})
    assert [row[config.layer] for row in cache.meta.prefills[-1].visual_per_layer] == [7, 14]


def test_pyramiddrop_matches_oracle(tiny):
    """Each stage ranks by the last prompt token's attention in the boundary layer itself, recomputed
    here from stock eager attention with the earlier stages' drops hidden (compact positions)."""
    model, processor = tiny
    inputs = make_inputs(processor, SAMPLES)
    config = PyramidDropConfig(stages=(1, 3), ratio=0.5)
    ids = inputs["input_ids"]
    visual = ids == model.config.image_token_id
    num_layers = len(model.model.language_model.layers)
    hidden = [torch.zeros(ids.shape[0], ids.shape[1], dtype=torch.bool) for _ in range(num_layers)]
    initial = [[run.numel() for run in image_runs(visual[b])] for b in range(ids.shape[0])]
    for stage, layer in enumerate(config.stages, start=1):
        attention = MaskedReference(model, hidden, compact=True).attentions(inputs)[layer].float().mean(1)[:, -1]
        for b in range(ids.shape[0]):
            alive = visual[b] & ~hidden[layer][b]
            for image, n in zip(image_runs(visual[b]), initial[b]):
                run = image[alive[image]]  # this image's tokens still there
                keep = run[attention[b, run].topk(stage_keep(n, stage, config.ratio)).indices]
                gone = run[~torch.isin(run, keep)]
                for later in range(layer, num_layers):
                    hidden[later][b, gone] = True
    hidden_from = {0: torch.zeros(ids.shape[0], ids.shape[1] + STEPS, dtype=torch.bool)}
    for layer in config.stages:
        hidden_from[layer] = torch.cat([hidden[layer], torch.zeros(ids.shape[0], STEPS, dtype=torch.bool)], 1)
    trimmer = Trimmer(model, PyramidDrop(config), position_policy="compact")
    cache = check_against_oracle(model, inputs, trimmer, hidden_from, compact=True)
    assert cache.meta.prefills[-1].visual_per_layer == [[16, 8, 8, 4], [32, 16, 16, 8]]


# ---- VisionZip: the vision stage against the tower's stock eager attention ------------------------


def visionzip_reference(model, pixel_values, config: VisionZipConfig) -> list[torch.Tensor]:
    """Per image, the projected [CLS, dominant, contextual] features, from the tower run by stock
    transformers with eager attention (output_attentions) and the merge written out here."""
    tower = model.model.vision_tower
    previous = tower.config._attn_implementation
    tower.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = tower(pixel_values, output_hidden_states=True, output_attentions=True)
    finally:
        tower.set_attn_implementation(previous)
    feature_index = len(out.hidden_states) - 2  # feature layer -2
    layer = feature_index - 1
    cls_row = out.attentions[layer][:, :, 0, 1:].sum(1)  # (B, P): summed over heads
    features = out.hidden_states[feature_index]
    block = tower.encoder.layers[layer]
    with torch.no_grad():
        keys = block.self_attn.k_proj(block.layer_norm1(out.hidden_states[layer]))
    keys = keys.view(*keys.shape[:2], -1, block.self_attn.head_dim).mean(2)  # head mean
    results = []
    patches = features.shape[1] - 1
    for b in range(features.shape[0]):
        dominant = scaled_budget(config.dominant, patches) - 1
        contextual = round(config.contextual * patches / 576)
        top = sorted(cls_row[b].topk(dominant).indices.tolist())
        chosen = [0] + [t + 1 for t in top]
        rest = [t for t in range(1, patches + 1) if t not in chosen]
        step = max(1, len(rest) // contextual)
        targets = rest[::step][:contextual]
        members = [t for t in rest if t not in targets]
        unit = torch.nn.functional.normalize(keys[b], dim=-1)
        merged = []
        for target in targets:
            mine = [m for m in members if int((unit[m] @ unit[targets].T).argmax()) == targets.index(target)]
            extra = features[b, mine].mean(0) if mine else torch.zeros_like(features[b, target])
            merged.append(features[b, target] + extra)
        tokens = torch.cat([features[b, chosen], torch.stack(merged)])
        with torch.no_grad():
            results.append(model.model.multi_modal_projector(tokens))
    return results


def test_visionzip_vision_stage_matches_stock_eager_attention(tiny):
    model, processor = tiny
    inputs = make_inputs(processor, SAMPLES)
    config = VisionZipConfig(dominant=216, contextual=144)  # of 16 patches: CLS + 5 dominant, 4 contextual
    expected = visionzip_reference(model, inputs["pixel_values"], config)
    runner = VisionRunner(model.model, inputs["pixel_values"], feature_layer=model.config.vision_feature_layer,
                          select_strategy=model.config.vision_feature_select_strategy)  # fmt: skip
    with torch.no_grad():
        ours = VisionZip(config).on_vision(VisionInputs(runner, lambda: None))
    for features, keep, reference in zip(ours.features, ours.keep, expected):
        assert keep.tolist() == [True] * 10 + [False] * 6  # the image's first 10 placeholders
        torch.testing.assert_close(features[:10], reference, atol=1e-5, rtol=1e-5)


def test_visionzip_end_to_end_matches_oracle(tiny):
    """The engine's run equals stock transformers fed the reference features in each image's first
    placeholders, the other placeholders hidden from layer 0, positions compact."""
    model, processor = tiny
    inputs = make_inputs(processor, SAMPLES)
    config = VisionZipConfig(dominant=216, contextual=144)
    expected = visionzip_reference(model, inputs["pixel_values"], config)
    ids = inputs["input_ids"]
    slots = ids == model.config.image_token_id
    embeds = model.get_input_embeddings()(ids).detach().clone()
    hidden = torch.zeros(ids.shape[0], ids.shape[1] + STEPS, dtype=torch.bool)
    image = 0
    for b in range(ids.shape[0]):
        for run in image_runs(slots[b]):
            embeds[b, run[:10]] = expected[image].to(embeds.dtype)
            hidden[b, run[10:]] = True
            image += 1
    trimmer = Trimmer(model, VisionZip(config), position_policy="compact")
    ours = generate(model, inputs, trimmer)
    tokens = ours.sequences[:, ids.shape[1] :]
    num_layers = len(model.model.language_model.layers)
    reference = MaskedReference(model, [hidden] * num_layers, compact=True).step_logits(
        {"inputs_embeds": embeds, "attention_mask": inputs["attention_mask"]}, tokens[:, :STEPS]
    )
    for step, (a, b) in enumerate(zip(ours.logits, reference)):
        torch.testing.assert_close(a.float(), b, atol=1e-4, rtol=1e-4, msg=f"step {step}")
    assert trimmer.last_cache.meta.prefills[-1].visual_input == [10, 20]


def test_visionzip_refuses_llava_next(tiny_next):
    model, _ = tiny_next
    from tokentrim_cli.errors import UnsupportedError

    with pytest.raises(UnsupportedError, match="LLaVA-1.5-style models only"):
        Trimmer(model, VisionZip(VisionZipConfig())).install()


# ---- LLaVA-NeXT: per-image budgets over crops and newline tokens, order kept ---------------------


@pytest.mark.parametrize("method", [DivPrune(DivPruneConfig(budget=128)), CDPruner(CDPrunerConfig(budget=128)),
                                    DART(DARTConfig(layer=1, budget=128))])  # fmt: skip
def test_next_crops_keep_their_order_and_budget(tiny_next, method):
    """On LLaVA-NeXT an image is one run of visual tokens (base crop, crops, newline tokens): the
    budget counts all of them, and the kept tokens stay in the run's order (ascending positions)."""
    model, processor = tiny_next
    inputs = make_inputs(processor, SAMPLES)
    kept_positions = []

    class Spy(type(method)):
        def before_layer(self, state):
            keep = super().before_layer(state)
            if keep is not None:
                kept_positions.append([k.tolist() for k in keep])
            return keep

    spy = Spy(method.config)
    trimmer = Trimmer(model, spy)
    generate(model, inputs, trimmer)
    visual = inputs["input_ids"] == model.config.image_token_id
    runs = [[run.numel() for run in image_runs(visual[b] & inputs["attention_mask"][b].bool())] for b in range(2)]
    layer = getattr(method.config, "layer", 0)
    expected = [sum(scaled_budget(128, n) for n in row) for row in runs]
    assert [row[layer] for row in trimmer.last_cache.meta.prefills[-1].visual_per_layer] == expected
    assert all(row == sorted(row) for row in kept_positions[0])


@pytest.mark.parametrize("method", [DivPrune(DivPruneConfig(budget=200)), CDPruner(CDPrunerConfig(budget=200)),
                                    DART(DARTConfig(layer=1, budget=200)),
                                    PyramidDrop(PyramidDropConfig(stages=(1, 2), ratio=0.5)),
                                    VisionZip(VisionZipConfig(dominant=216, contextual=144))])  # fmt: skip
def test_batched_equals_per_sample(tiny, method):
    model, processor = tiny
    check_batched_equals_per_sample(model, processor, SAMPLES, method)

"""The rest of the method contract (vision stage, end-of-prefill rewrite, decode eviction) against the oracle.

ST3 and MustDrop build on these hooks; here small test methods drive them so the engine's side is
proven independently of any one method's selection rule.
"""

from __future__ import annotations

import torch
from conftest import PROMPTS, make_inputs
from oracle import NEVER, MaskedReference
from test_engine import STEPS, check_against_oracle, generate, visual_mask

from tokentrim_cli.engine import Trimmer
from tokentrim_cli.methods.base import Method, NoTrimming, VisionOutput

SAMPLES = [(PROMPTS[0], 1), (PROMPTS[1], 2)]


class DropOddSlots(Method):
    """Vision stage: keep the stock features, drop odd slots, protect slot 0 of each image."""

    name = "drop-odd-slots"
    config_cls = NoTrimming.Config

    def __init__(self, drop_unprotected_after: int | None = None):
        super().__init__(NoTrimming.Config())
        self.drop_unprotected_after = drop_unprotected_after

    def on_vision(self, vision):
        features = vision.stock_features()
        keep = [torch.arange(f.shape[0]) % 2 == 0 for f in features]
        protected = [torch.arange(f.shape[0]) == 0 for f in features]
        return VisionOutput(features=features, keep=keep, protected=protected)

    def after_layer(self, state):
        if state.layer != self.drop_unprotected_after:
            return None
        keep = state.valid & (~state.is_visual | state.protected)
        return [row.nonzero().squeeze(1) for row in keep]


def per_image_slots(model, inputs) -> torch.Tensor:
    per_image = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    ids = inputs["input_ids"]
    visual = ids == model.config.image_token_id
    order = visual.long().cumsum(1) - 1
    return torch.where(visual, order % per_image, -1)


def pad_steps(mask: torch.Tensor) -> torch.Tensor:
    return torch.cat([mask, torch.zeros(mask.shape[0], STEPS, dtype=mask.dtype)], 1)


def test_vision_stage_drops_and_protects(tiny):
    model, processor = tiny
    inputs = make_inputs(processor, SAMPLES)
    slots = per_image_slots(model, inputs)
    odd = pad_steps((slots >= 0) & (slots % 2 == 1))
    unprotected = pad_steps(slots > 0)
    cache = check_against_oracle(model, inputs, Trimmer(model, DropOddSlots(drop_unprotected_after=1)), {0: odd, 2: unprotected})
    n_images = torch.tensor([n for _, n in SAMPLES])
    assert [row[2:] for row in cache.visual_lengths()] == [[int(n)] * 2 for n in n_images]
    per_image = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    assert cache.meta.prefills[-1].visual_input == [int(n) * per_image // 2 for n in n_images]


class KeepFirstVisualAtEnd(Method):
    """End of prefill: layers >= 2 keep only each sample's first visual entry (and all text)."""

    name = "keep-first-visual"
    config_cls = NoTrimming.Config

    def __init__(self):
        super().__init__(NoTrimming.Config())

    def on_prefill_end(self, layers):
        edits = {}
        for state in layers[2:]:
            visual = state.is_visual & state.valid
            first = visual & (visual.long().cumsum(1) == 1)
            edits[state.layer] = [row.nonzero().squeeze(1) for row in (state.valid & ~state.is_visual) | first]
        return edits


def test_prefill_end_rewrite_matches_oracle(any_tiny):
    model, processor = any_tiny
    inputs = make_inputs(processor, SAMPLES)
    visual = visual_mask(model, inputs, steps=0)
    first = visual & (visual.long().cumsum(1) == 1)
    hidden_from = torch.where(pad_steps(visual & ~first), 1, NEVER)  # visible in prefill, gone from step 1
    cache = check_against_oracle(model, inputs, Trimmer(model, KeepFirstVisualAtEnd()), {2: hidden_from})
    assert [row[2:] for row in cache.visual_lengths()] == [[1, 1], [1, 1]]


class EvictLeastAttendedVisual(Method):
    """Decode: every step, layers >= 1 evict the visual entry the new token attends to least."""

    name = "evict-least-attended"
    config_cls = NoTrimming.Config

    def __init__(self):
        super().__init__(NoTrimming.Config())
        self.step = {}
        self.evicted = []  # (decode step, layer, sample, token_index)

    def decode_score_request(self, state):
        return state.layer >= 1

    def on_decode_layer(self, state):
        step = self.step[state.layer] = self.step.get(state.layer, 0) + 1
        assert step == state.decode_step
        torch.testing.assert_close(state.attention_sum[:, -1], state.attention[:, 0, -1])  # the new entry
        keep = []
        for b in range(state.batch_size):
            candidates = (state.is_visual[b] & state.valid[b]).nonzero().squeeze(1)
            scores = state.attention[b, 0, candidates]
            assert torch.isclose(state.attention[b, 0].sum(), torch.tensor(1.0), atol=1e-5)
            victim = candidates[scores.argmin()]
            self.evicted.append((step, state.layer, b, int(state.token_index[b, victim])))
            keep.append(torch.cat([torch.arange(victim), torch.arange(victim + 1, state.token_index.shape[1])]))
        return keep


def test_decode_eviction_matches_oracle(any_tiny):
    model, processor = any_tiny
    inputs = make_inputs(processor, SAMPLES)
    method = EvictLeastAttendedVisual()
    trimmer = Trimmer(model, method)
    ours = generate(model, inputs, trimmer)
    # The oracle hides each evicted key from the step after its eviction on, in that layer only.
    num_layers = len(model.model.language_model.layers)
    hidden_from = [torch.full((2, inputs["input_ids"].shape[1] + STEPS), NEVER) for _ in range(num_layers)]
    for step, layer, b, token in method.evicted:
        hidden_from[layer][b, token] = step + 1
    assert {step for step, *_ in method.evicted} == set(range(1, STEPS + 1))
    tokens = ours.sequences[:, inputs["input_ids"].shape[1] :]
    reference = MaskedReference(model, hidden_from).step_logits(inputs, tokens[:, :STEPS])
    for step, (a, b) in enumerate(zip(ours.logits, reference)):
        torch.testing.assert_close(a.float(), b, atol=1e-4, rtol=1e-4, msg=f"step {step}")
    n_visual = (inputs["input_ids"] == model.config.image_token_id).sum(1).tolist()
    expected = [[n - STEPS] * (num_layers - 1) for n in n_visual]
    assert [row[1:] for row in trimmer.last_cache.visual_lengths()] == expected

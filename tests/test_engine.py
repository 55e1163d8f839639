"""The trimming engine against stock transformers and against the masked-attention oracle."""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS, make_inputs
from oracle import NEVER, MaskedReference, eager_attentions

from tokentrim_cli.engine import Trimmer
from tokentrim_cli.errors import UnsupportedError
from tokentrim_cli.methods import METHODS, VTW, FastV, RandomSelection
from tokentrim_cli.methods.base import LiveState, Method, NoTrimming, QuerySpec
from tokentrim_cli.methods.fastv import FastVConfig
from tokentrim_cli.methods.random_selection import RandomSelectionConfig
from tokentrim_cli.methods.vtw import VTWConfig

STEPS = 10
BATCHES = {
    "one": [(PROMPTS[0], 1)],
    "two-left-padded": [(PROMPTS[0], 1), (PROMPTS[1], 2)],
}


def generate(model, inputs, trimmer=None, steps=STEPS + 1):
    kwargs = dict(max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    with torch.no_grad():
        if trimmer is None:
            return model.generate(**inputs, **kwargs, output_logits=True, return_dict_in_generate=True)
        with trimmer:
            return model.generate(**inputs, **kwargs, output_logits=True, return_dict_in_generate=True)


@pytest.fixture(params=["sdpa", "eager"])
def attn(request, any_tiny):
    model, processor = any_tiny
    model.set_attn_implementation(request.param)
    yield model, processor, request.param
    model.set_attn_implementation("sdpa")


# ---- baseline == stock, bit for bit ------------------------------------------------------------


@pytest.mark.parametrize("batch", BATCHES)
def test_baseline_is_stock_bit_for_bit(attn, batch):
    model, processor, _ = attn
    inputs = make_inputs(processor, BATCHES[batch])
    with torch.no_grad():
        stock_logits = model(**inputs).logits
        with Trimmer(model):
            ours_logits = model(**inputs).logits
    assert torch.equal(stock_logits, ours_logits)
    stock = generate(model, inputs)
    ours = generate(model, inputs, Trimmer(model))
    assert torch.equal(stock.sequences, ours.sequences)
    for a, b in zip(stock.logits, ours.logits):
        assert torch.equal(a, b)


def test_uninstall_restores_stock_forward(tiny):
    model, _ = tiny
    language_model = model.model.language_model
    with Trimmer(model):
        assert "forward" in vars(language_model)
    assert "forward" not in vars(language_model)
    assert not model.model._forward_pre_hooks


# ---- pruning paths == masked-attention oracle ----------------------------------------------------


def visual_mask(model, inputs, steps=STEPS) -> torch.Tensor:
    """(B, T + steps) True at image tokens of the prompt."""
    ids = inputs["input_ids"]
    visual = ids == model.config.image_token_id
    return torch.cat([visual, torch.zeros(ids.shape[0], steps, dtype=torch.bool)], 1)


def fastv_hidden_keys(model, inputs, layer: int, drop_ratio: float) -> torch.Tensor:
    """Which prompt tokens FastV drops, from stock eager attention (independent of the engine)."""
    attention = eager_attentions(model, inputs)[layer - 1]  # (B, H, T, T)
    last_row = attention.float().mean(1)[:, -1]  # (B, T)
    visual = visual_mask(model, inputs, steps=0)
    dropped = torch.zeros_like(visual)
    for b in range(visual.shape[0]):
        positions = visual[b].nonzero().squeeze(1)
        n_keep = int(positions.numel() * (1 - drop_ratio) + 0.5)
        kept = positions[last_row[b, positions].topk(n_keep).indices]
        dropped[b, positions] = True
        dropped[b, kept] = False
    return torch.cat([dropped, torch.zeros(dropped.shape[0], STEPS, dtype=torch.bool)], 1)


def check_against_oracle(model, inputs, trimmer, hidden_from_layer: dict, *, compact=False):
    """hidden_from_layer: {first layer that no longer sees them: (B, T+steps) bool, or int64 giving
    the forward (0 = prefill, k = k-th decode step) from which they are hidden}."""
    num_layers = len(model.model.language_model.layers)
    shape = next(iter(hidden_from_layer.values())).shape
    hidden = [torch.full(shape, NEVER) for _ in range(num_layers)]
    for start, keys in hidden_from_layer.items():
        from_step = torch.where(keys, 0, NEVER) if keys.dtype == torch.bool else keys
        for layer in range(start, num_layers):
            hidden[layer] = torch.minimum(hidden[layer], from_step)
    ours = generate(model, inputs, trimmer)
    tokens = ours.sequences[:, inputs["input_ids"].shape[1] :]
    reference = MaskedReference(model, hidden, compact=compact).step_logits(inputs, tokens[:, :STEPS])
    assert len(ours.logits) == len(reference) == STEPS + 1
    for step, (a, b) in enumerate(zip(ours.logits, reference)):
        torch.testing.assert_close(a.float(), b, atol=1e-4, rtol=1e-4, msg=f"step {step}")
    return trimmer.last_cache


@pytest.mark.parametrize("batch", BATCHES)
def test_vtw_matches_oracle(attn, batch):
    model, processor, _ = attn
    inputs = make_inputs(processor, BATCHES[batch])
    cache = check_against_oracle(model, inputs, Trimmer(model, VTW(VTWConfig(layer=2))), {2: visual_mask(model, inputs)})
    prompt = inputs["input_ids"].shape[1]
    n_visual = (inputs["input_ids"] == model.config.image_token_id).sum(1)
    stored = STEPS + 1 - 1  # the last generated token is never fed back
    assert cache.lengths()[:2] == [prompt + stored] * 2
    real_text = inputs["attention_mask"].sum(1) - n_visual
    assert cache.lengths()[2:] == [int(real_text.max()) + stored] * 2
    assert [row[2:] for row in cache.valid_lengths()] == [[int(t) + stored] * 2 for t in real_text]


@pytest.mark.parametrize("batch", BATCHES)
def test_fastv_matches_oracle(attn, batch):
    model, processor, _ = attn
    inputs = make_inputs(processor, BATCHES[batch])
    hidden = fastv_hidden_keys(model, inputs, layer=2, drop_ratio=0.5)
    trimmer = Trimmer(model, FastV(FastVConfig(layer=2, drop_ratio=0.5)))
    cache = check_against_oracle(model, inputs, trimmer, {2: hidden})
    n_visual = (inputs["input_ids"] == model.config.image_token_id).sum(1)
    assert cache.meta.prefills[-1].visual_per_layer == [
        [int(n)] * 2 + [int(n * 0.5 + 0.5)] * 2 for n in n_visual
    ]


def random_hidden_keys(model, inputs, drop_ratio: float, seed: int) -> torch.Tensor:
    """Which prompt tokens the random control drops: the top slots of a seeded draw stay."""
    visual = visual_mask(model, inputs, steps=0)
    dropped = torch.zeros_like(visual)
    for b in range(visual.shape[0]):
        positions = visual[b].nonzero().squeeze(1)
        scores = torch.rand(positions.numel(), generator=torch.Generator().manual_seed(seed))
        kept = positions[scores.topk(int(positions.numel() * (1 - drop_ratio) + 0.5)).indices]
        dropped[b, positions] = True
        dropped[b, kept] = False
    return torch.cat([dropped, torch.zeros(dropped.shape[0], STEPS, dtype=torch.bool)], 1)


@pytest.mark.parametrize("batch", BATCHES)
def test_random_control_matches_oracle(attn, batch):
    model, processor, _ = attn
    inputs = make_inputs(processor, BATCHES[batch])
    hidden = random_hidden_keys(model, inputs, drop_ratio=0.75, seed=3)
    trimmer = Trimmer(model, RandomSelection(RandomSelectionConfig(layer=1, drop_ratio=0.75, seed=3)))
    check_against_oracle(model, inputs, trimmer, {1: hidden})
    other_seed = random_hidden_keys(model, inputs, drop_ratio=0.75, seed=4)
    assert not torch.equal(hidden, other_seed)  # the seed matters


def test_compact_positions_match_oracle(tiny):
    model, processor = tiny
    inputs = make_inputs(processor, BATCHES["two-left-padded"])
    trimmer = Trimmer(model, VTW(VTWConfig(layer=1)), position_policy="compact")
    check_against_oracle(model, inputs, trimmer, {1: visual_mask(model, inputs)}, compact=True)


@pytest.mark.parametrize("policy", ["keep", "compact"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_neutral_setting_is_a_noop(any_tiny, name, policy):
    """Every registered method, at its neutral setting, is stock transformers bit for bit."""
    model, processor = any_tiny
    method_class = METHODS[name]
    num_layers = len(model.model.language_model.layers)
    method = method_class(method_class.config_cls.neutral(num_layers))
    if method_class.has_vision_stage() and model.config.model_type != "llava":
        with pytest.raises(UnsupportedError, match="LLaVA-1.5-style models only"):
            Trimmer(model, method).install()
        return
    inputs = make_inputs(processor, BATCHES["two-left-padded"])
    stock = generate(model, inputs)
    ours = generate(model, inputs, Trimmer(model, method, position_policy=policy))
    assert torch.equal(stock.sequences, ours.sequences)
    for a, b in zip(stock.logits, ours.logits):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_batched_equals_per_sample(any_tiny, name):
    """Every registered method, at a setting that trims, answers a left-padded batch row by row as
    each sample alone."""
    model, processor = any_tiny
    method_class = METHODS[name]
    if method_class.has_vision_stage() and model.config.model_type != "llava":
        pytest.skip("vision-stage methods are refused on LLaVA-NeXT (tested above)")
    method = method_class(method_class.config_cls.example(len(model.model.language_model.layers)))
    check_batched_equals_per_sample(model, processor, BATCHES["two-left-padded"], method)


def test_the_registry_refuses_duplicate_and_ill_formed_names():
    from tokentrim_cli.methods import build_registry

    class Bad(Method):
        name = "Fast_V"
        config_cls = NoTrimming.Config

    with pytest.raises(ValueError, match="not a lower-case identifier"):
        build_registry([NoTrimming, Bad])
    with pytest.raises(ValueError, match="registered twice"):
        build_registry([NoTrimming, FastV, FastV])
    assert list(build_registry([NoTrimming, FastV])) == ["none", "fastv"]


def check_batched_equals_per_sample(model, processor, samples, method) -> None:
    """A left-padded batch answers each sample exactly as that sample alone does."""
    batched = generate(model, make_inputs(processor, samples), Trimmer(model, method))
    for row, sample in enumerate(samples):
        single = generate(model, make_inputs(processor, [sample]), Trimmer(model, method))
        assert torch.equal(single.sequences[0, -(STEPS + 1) :], batched.sequences[row, -(STEPS + 1) :])
        for a, b in zip(single.logits, batched.logits):
            torch.testing.assert_close(a[0], b[row], atol=1e-4, rtol=1e-4)


# ---- scored attention rows == eager attention rows ----------------------------------------------


class RecordScores(Method):
    """A test method that only asks for scores and keeps them."""

    name = "record"
    config_cls = NoTrimming.Config

    def __init__(self, query: QuerySpec, layer: int):
        super().__init__(NoTrimming.Config())
        self.query, self.layer, self.seen = query, layer, []

    def score_request(self, layer):
        return self.query if layer == self.layer else None

    def after_layer(self, state: LiveState):
        if state.layer == self.layer:
            self.seen.append((state.attention, state.query_valid))


@pytest.mark.parametrize("query", list(QuerySpec))
def test_scored_rows_equal_eager_rows(any_tiny, query):
    model, processor = any_tiny
    inputs = make_inputs(processor, BATCHES["two-left-padded"])
    layer = 1
    reference = eager_attentions(model, inputs)[layer].float().mean(1)  # (B, T, T)
    recorder = RecordScores(query, layer)
    with torch.no_grad(), Trimmer(model, recorder):  # sdpa stays on for the real attention
        model(**inputs)
    (scores, rows_valid), = recorder.seen
    ids = inputs["input_ids"]
    for b in range(ids.shape[0]):
        if query is QuerySpec.LAST_TOKEN:
            expected_rows = [ids.shape[1] - 1]
        else:
            last_image = int((ids[b] == model.config.image_token_id).nonzero().max())
            real = inputs["attention_mask"][b].bool()
            expected_rows = [t for t in range(last_image + 1, ids.shape[1]) if real[t]]
        got = scores[b][rows_valid[b]]
        torch.testing.assert_close(got, reference[b, expected_rows], atol=1e-6, rtol=1e-5)


# ---- no host-device synchronisation inside the per-layer decode loop -------------------------------


class _SyncTrap:
    """Makes every host read of a tensor raise while the engine's decode layer loop runs."""

    NAMES = ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero", "cpu", "numpy")

    def __init__(self):
        self.saved = {}

    def __enter__(self):
        def trap(name):
            def raise_(*args, **kwargs):
                raise AssertionError(f"Tensor.{name} called inside the decode layer loop (a device sync)")

            return raise_

        for name in self.NAMES:
            self.saved[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, trap(name))
        self.saved_equal, torch.equal = torch.equal, trap("equal")

    def __exit__(self, *exc):
        for name, original in self.saved.items():
            setattr(torch.Tensor, name, original)
        torch.equal = self.saved_equal


def registered_methods(num_layers: int):
    """Every registered method at its default setting (scaled to the tiny model where it must be)."""
    from tokentrim_cli.methods import METHODS

    for name, method_class in sorted(METHODS.items()):
        config = method_class.config_cls()
        try:
            config.check_model(num_layers)
        except Exception:
            config = method_class.config_cls.neutral(num_layers)
        yield name, method_class(config)


@pytest.mark.parametrize("policy", ["keep", "compact"])
def test_no_host_reads_in_the_decode_layer_loop(tiny, policy, monkeypatch):
    from tokentrim_cli.engine.trimmer import Trimmer as EngineTrimmer

    model, processor = tiny
    inputs = make_inputs(processor, BATCHES["two-left-padded"])
    decode = EngineTrimmer._decode

    def trapped(self, *args, **kwargs):
        with _SyncTrap():
            return decode(self, *args, **kwargs)

    monkeypatch.setattr(EngineTrimmer, "_decode", trapped)
    for name, method in registered_methods(len(model.model.language_model.layers)):
        # 4 tokens: fewer decode steps than ST3's eviction interval (an eviction syncs by nature).
        generate(model, inputs, Trimmer(model, method, position_policy=policy), steps=4)


def test_the_sync_trap_catches_a_host_read():
    with _SyncTrap(), pytest.raises(AssertionError, match="inside the decode layer loop"):
        torch.ones(2).sum().item()


# ---- beam search: per-sample state follows the beams --------------------------------------------------


def test_beam_search_keeps_per_sample_state_with_its_rows(tiny):
    """ST3's annealing counts are per sample: with beams reordered every step, each sample must keep
    its own. A left-padded batch of a 1-image and a 2-image prompt (different counts) answers each
    sample as it answers alone."""
    from tokentrim_cli.methods import ST3
    from tokentrim_cli.methods.st3 import ST3Config

    model, processor = tiny
    method = ST3(ST3Config(prune_ratio=0.25, start_layer=1, stride=1, horizon=6, evict_interval=1))
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=2, output_logits=True, return_dict_in_generate=True)
    samples = BATCHES["two-left-padded"]
    with torch.no_grad(), Trimmer(model, method) as trimmer:
        batched = model.generate(**make_inputs(processor, samples), **kwargs)
        batched_visual = trimmer.last_cache.visual_lengths()
    for row, sample in enumerate(samples):
        with torch.no_grad(), Trimmer(model, method) as trimmer:
            single = model.generate(**make_inputs(processor, [sample]), **kwargs)
            alone_visual = trimmer.last_cache.visual_lengths()
        assert torch.equal(single.sequences[0, -6:], batched.sequences[row, -6:])
        assert alone_visual[0] == batched_visual[2 * row]  # the best beam's row: same annealed counts

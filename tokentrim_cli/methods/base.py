"""The contract between the trimming engine (`engine/`) and a trimming method (methods.md §0.4).

A method sees only what is in this file: its frozen config, the hooks below, and three views:
`LiveState` (the tokens flowing through a prefill), `CacheState` (a layer's cached entries, at the
end of prefill and in decode) and `DecodeStep` (which layer of which decode step, before any work).
The engine calls, in order:

1. vision stage: `on_vision(vision)` -> VisionOutput or None. `vision.runner` runs the tower layer
   by layer (hidden states, a layer's CLS attention, keys, the projector); slots the method sets
   keep=False are dropped before the first decoder layer;
2. prefill, for each decoder layer `l`:
   - `before_layer(state)` -> per-sample keep indices or None ("drop before layer l": VTW; at l=0
     the methods that select among the projected features, DivPrune and CDPruner);
   - the layer runs; if `score_request(l)` named query rows, the engine computes their attention
     over the layer's keys (fp32, head mean, without eager attention) into `state.attention`;
   - `after_layer(state)` -> keep indices or None ("prune after layer l": FastV, PVTP, MustDrop);
3. end of prefill: `on_prefill_end(cache_states)` -> {layer: keep indices into that layer's cache}
   (MustDrop's output-aware cache policy);
4. decode, for each layer `l` of each step: if `decode_score_request(step)`, the engine scores the
   new token's query against the layer's cache and calls `on_decode_layer(state)` -> keep indices
   into the layer's cache or None (ST3's VTA); evicted entries are hidden from the next step on.

Keep indices are int64 tensors, ascending, one per sample, indexing the live sequence (prefill) or
the layer's cache entries (end of prefill, decode). A method describes itself (`where`,
`needs_attention`, `reads_question`, `calibration`) so that listings, calibration and the tests
come from the registry instead of per-method branches.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

MAX_SEED = 2**63 - 1  # torch generators take a signed 64-bit seed


class ParamError(ValueError):
    """A bad `[params]` entry: `key` names it so the profile loader can say where."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Base of every method's parameters; strict about keys and types (style.md §3.5)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodConfig:
        hints = typing.get_type_hints(cls)
        allowed = [f.name for f in dataclasses.fields(cls)]
        for key, value in data.items():
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                suggestion = f" (did you mean '{close[0]}'?)" if close else ""
                raise ParamError(key, f"unknown key '{key}'{suggestion}; allowed: {', '.join(sorted(allowed))}")
            _check_type(key, value, hints[key])
        return cls(**{k: _convert(v, hints[k]) for k, v in data.items()})

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def neutral(cls, num_layers: int) -> MethodConfig:
        """Parameters for which the method trims nothing (methods.md §5 item 8)."""
        raise NotImplementedError

    @classmethod
    def example(cls, num_layers: int) -> MethodConfig:
        """Parameters that do trim on a decoder of `num_layers` layers (the defaults where they fit):
        what the engine tests run every registered method with."""
        return cls()

    def check_model(self, num_layers: int) -> None:
        """Raise ParamError if these parameters do not fit a decoder with `num_layers` layers."""


def _convert(value: Any, expected: Any) -> Any:
    if expected is float:
        return float(value)
    if typing.get_origin(expected) is tuple:
        return tuple(value)
    return value


def _check_type(key: str, value: Any, expected: Any) -> None:
    origin = typing.get_origin(expected)
    if origin is tuple:  # tuple[int, ...]: a TOML array of integers
        (item, _) = typing.get_args(expected)
        if isinstance(value, (list, tuple)) and all(type(v) is item for v in value):
            return
        raise ParamError(key, f"'{key}' must be a list of {item.__name__}, got {value!r}")
    if expected is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return
    if expected is int and isinstance(value, int) and not isinstance(value, bool):
        return
    if expected in (str, bool) and type(value) is expected:
        return
    if origin is typing.Literal and value in typing.get_args(expected):
        return
    if origin is typing.Literal:
        choices = ", ".join(repr(a) for a in typing.get_args(expected))
        raise ParamError(key, f"'{key}' must be one of {choices}, got {value!r}")
    name = getattr(expected, "__name__", str(expected))
    raise ParamError(key, f"'{key}' must be {name}, got {type(value).__name__} {value!r}")


def check_range(key: str, value: float, low: float, high: float, *, high_open: bool = False) -> None:
    """Raise ParamError naming the allowed range when `value` lies outside it."""
    inside = low <= value < high if high_open else low <= value <= high
    if not inside:
        bracket = ")" if high_open else "]"
        raise ParamError(key, f"'{key}' must be in [{low}, {high}{bracket}, got {value}")


class PerSample(list):
    """Per-sample values a method keeps in its memory (one item per batch row): the engine's cache
    reorders them with its own rows when generate() reorders, repeats or selects the batch (beam
    search). Per-row values kept in a plain list would stay with the wrong row."""


class QuerySpec(enum.Enum):
    """Which query rows a method wants attention scores for."""

    LAST_TOKEN = "last_token"  # the last prompt token: the query that yields the first answer token
    TEXT_AFTER_IMAGE = "text_after_image"  # every text token after the sample's last image


@dataclass
class LiveState:
    """The live tokens at one prefill layer (entering it for before_layer, leaving it for
    after_layer). All tensors are (B, N); hidden is (B, N, D)."""

    layer: int
    num_layers: int
    token_index: Tensor  # logical index of each token (ascending per sample)
    valid: Tensor  # False for padding and for filler entries
    is_visual: Tensor
    protected: Tensor  # tokens an earlier stage marked as never to be dropped (MustDrop's key set)
    hidden: Tensor  # the hidden states (before_layer: the layer's input; after_layer: its output)
    memory: dict = field(default_factory=dict)  # per-conversation scratch space (PerSample for per-row values)
    # before_layer(l), when feature_request(l): the previous layer's cached keys of the live tokens
    # (B, N, H_kv * head_dim, RoPE applied) and the hidden states under the model's final norm.
    keys: Tensor | None = None
    normed_hidden: Tensor | None = None
    # (B, R, N) fp32 head-mean attention from the requested query rows to the live tokens, when the
    # method asked for it with score_request(layer); rows that are padding are all zero.
    attention: Tensor | None = None
    query_valid: Tensor | None = None  # (B, R) which of the R rows are real queries

    @property
    def batch_size(self) -> int:
        return self.token_index.shape[0]


@dataclass
class CacheState:
    """One layer's cached entries (end of prefill, decode). All tensors are (B, T)."""

    layer: int
    num_layers: int
    token_index: Tensor
    valid: Tensor
    is_visual: Tensor
    protected: Tensor
    memory: dict = field(default_factory=dict)
    decode_step: int = 0  # decode forwards since the last prefill (1 = the first generated token's)
    attention_sum: Tensor | None = None  # (B, T) decode: attention each entry received so far
    attention: Tensor | None = None  # (B, 1, T) decode: the new token's attention over the entries

    @property
    def batch_size(self) -> int:
        return self.token_index.shape[0]


@dataclass(frozen=True)
class DecodeStep:
    """Which layer of which decode step, asked before any work is done (so that nothing is computed
    for layers a method leaves alone). `memory` is the method's scratch space."""

    layer: int
    num_layers: int
    decode_step: int
    memory: dict


@dataclass
class VisionInputs:
    """What a vision stage gets: a runner over the tower, and the stock feature path."""

    runner: Any  # engine.vision.VisionRunner
    stock_features: Callable[[], list[Tensor]]  # per image (n_slots, D), exactly what stock computes


@dataclass
class VisionOutput:
    """A vision stage's result, per image, in placeholder order (n_slots = the image's placeholder count).

    Slots with keep=False are dropped before the first decoder layer, so a method may merge or
    select tokens without touching the processor's placeholder count.
    """

    features: list[Tensor]  # (n_slots, D)
    keep: list[Tensor]  # (n_slots,) bool
    protected: list[Tensor] | None = None  # (n_slots,) bool: later stages must not drop these


@dataclass(frozen=True)
class Knob:
    """What `tokentrim calibrate --method NAME` may tune: one parameter (or a named preset,
    `settings[value]` giving the parameters), tried from mild to aggressive.

    search="kl_budget": the most aggressive value whose mean first-token KL stays within --kl-budget.
    search="withdrawal_layer": VTW's criterion, the smallest layer whose KL stays within --eta (values
    come from the model's depth)."""

    name: str
    values: tuple
    settings: dict | None = None  # value -> parameters, for presets
    search: str = "kl_budget"

    def params(self, value) -> dict:
        return dict(self.settings[value]) if self.settings else {self.name: value}


STAGES = ("vision", "prefill", "decode")


class Method:
    """A trimming method. Subclasses override only the hooks they need; the defaults trim nothing."""

    name: ClassVar[str]
    config_cls: ClassVar[type[MethodConfig]]
    description: ClassVar[str] = ""
    needs_attention: ClassVar[bool] = False  # attention scores (decoder rows or the vision tower's)
    reads_question: ClassVar[bool] = False  # text-guided: a later turn's question changes the choice
    calibration: ClassVar[Knob | None] = None  # what `calibrate --kl-budget` searches

    def __init__(self, config: MethodConfig) -> None:
        self.config = config

    def before_layer(self, state: LiveState) -> list[Tensor] | None:
        return None

    def score_request(self, layer: int) -> QuerySpec | None:
        """Query rows whose attention in layer `layer` (its own, after it ran) after_layer needs."""
        return None

    def pre_score_request(self, layer: int) -> QuerySpec | None:
        """Query rows whose attention under layer `layer`'s projections, computed from its input
        over the live tokens *before* it runs, before_layer needs (PyramidDrop ranks this way)."""
        return None

    def feature_request(self, layer: int) -> bool:
        """Whether before_layer(layer) needs `state.keys` and `state.normed_hidden` (DART)."""
        return False

    def after_layer(self, state: LiveState) -> list[Tensor] | None:
        return None

    def on_prefill_end(self, layers: list[CacheState]) -> dict[int, list[Tensor]] | None:
        """Rewrite caches once prefill is done: {layer: keep indices into that layer's entries}."""
        return None

    def decode_score_request(self, step: DecodeStep) -> bool:
        """Whether to score the new token's query against this layer's cache at this decode step."""
        return False

    def on_decode_layer(self, state: CacheState) -> list[Tensor] | None:
        """Keep indices into the layer's cache entries (state.attention is (B, 1, T)), or None."""
        return None

    def on_vision(self, vision: VisionInputs) -> VisionOutput | None:
        """Replace the image features, possibly dropping or protecting slots; None keeps stock."""
        return None

    @classmethod
    def _overrides(cls, *hooks: str) -> bool:
        return any(getattr(cls, hook) is not getattr(Method, hook) for hook in hooks)

    @classmethod
    def has_vision_stage(cls) -> bool:
        return cls._overrides("on_vision")

    @classmethod
    def has_decode_hooks(cls) -> bool:
        return cls._overrides("decode_score_request", "on_decode_layer")

    def where(self) -> tuple[str, ...]:
        """Where it acts: vision (the tower, or its projected features before the first decoder
        layer), prefill (inside the language model's first pass), decode (the KV cache while
        generating). From the hooks it overrides; a method acting only before layer 0 says "vision"."""
        stages = []
        cls = type(self)
        if cls.has_vision_stage() or self.acts_before_decoder():
            stages.append("vision")
        if cls._overrides("after_layer", "score_request", "pre_score_request") or (
            cls._overrides("before_layer") and not self.acts_before_decoder()
        ):
            stages.append("prefill")
        if cls._overrides("on_prefill_end", "decode_score_request", "on_decode_layer"):
            stages.append("decode")
        return tuple(stages)

    def acts_before_decoder(self) -> bool:
        """True for methods whose only prefill hook is before_layer(0) (selection among the projected
        visual features): DivPrune, CDPruner, the random control at layer 0."""
        return False


class NoTrimming(Method):
    """The baseline: the engine runs, nothing is trimmed."""

    name = "none"
    description = "no trimming (the baseline)"

    @dataclass(frozen=True, kw_only=True)
    class Config(MethodConfig):
        @classmethod
        def neutral(cls, num_layers: int) -> MethodConfig:
            return cls()

    config_cls = Config


# ---- pure helpers shared by methods -------------------------------------------------------------

# Budgets are written for LLaVA-1.5's 576 visual tokens per image and scaled to each image's own
# count: on LLaVA-NeXT (2,880 tokens for 5 crops, newline tokens included) a budget of 128 keeps
# 640, the papers' NeXT setting; on a 16-token test model it keeps 4. "Per image" is a contiguous
# run of visual tokens (an image's crops and newline tokens are one run).
REFERENCE_TOKENS = 576


def image_runs(is_visual: Tensor) -> list[Tensor]:
    """Positions of each contiguous run of visual tokens in one sample's row (N,): one per image."""
    positions = is_visual.nonzero().squeeze(1)
    if positions.numel() == 0:
        return []
    breaks = (positions[1:] != positions[:-1] + 1).nonzero().squeeze(1) + 1
    return list(torch.tensor_split(positions, breaks.cpu()))


def scaled_budget(budget: int, n_tokens: int) -> int:
    """Tokens an image of `n_tokens` visual tokens keeps for a per-576 `budget` (at least 1)."""
    return max(1, min(n_tokens, round_half_up(budget * n_tokens / REFERENCE_TOKENS)))


def instruction_mask(visual: Tensor, valid: Tensor, runs: list[Tensor]) -> Tensor:
    """(N,) bool: the real text tokens after the last image of one sample, i.e. the instruction
    (what DART's text pivots and CDPruner's relevance read)."""
    last_visual = int(runs[-1][-1]) if runs else -1
    positions = torch.arange(visual.numel(), device=visual.device)
    return (positions > last_visual) & valid & ~visual


def keep_visual(valid: Tensor, is_visual: Tensor, kept_visual: Tensor) -> Tensor:
    """Keep indices for one sample: every real text token plus the visual tokens `kept_visual`."""
    return torch.cat([(valid & ~is_visual).nonzero().squeeze(1), kept_visual]).sort().values


def keep_per_image(valid: Tensor, visual: Tensor, choose) -> Tensor:
    """Keep indices for one sample: its real text tokens plus, in each image's run of visual tokens,
    the tokens `choose(run)` picks (indices into the run). The pre-LLM selections share it."""
    kept = [run[choose(run)] for run in image_runs(visual)]
    return keep_visual(valid, visual, torch.cat(kept) if kept else visual.nonzero().squeeze(1))


def keep_top(scores: Tensor, n_keep: int) -> Tensor:
    """Positions of the `n_keep` highest scores, ascending; ties go to the lower position."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:n_keep].sort().values


def round_half_up(value: float) -> int:
    """Round x.5 up (Python's round() rounds half to even, which would make 0.5 * 5 keep 2)."""
    return int(value + 0.5)

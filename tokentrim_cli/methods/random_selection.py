"""Random selection: chance in place of a ranking (a control, not a method).

Keeps a seeded random choice of each image's visual tokens, either
- before the language model (`layer = 0`), `budget` tokens per 576: the control for the methods
  that select before the decoder (VisionZip, DivPrune, CDPruner), at the same input budget; or
- after decoder layer K-1 (`layer = K >= 1`), FastV's schedule: round(n * (1 - drop_ratio)) of the
  sample's visual tokens (or `budget` per 576 when given): the control for FastV and DART.
Any quality a method keeps beyond this control is what its ranking buys; independent benchmarks find
that several published methods do not beat it.

The random order is a fixed permutation of visual-token slots drawn from `seed` on the CPU:
reproducible, independent of batch composition (a batched run equals per-sample runs), the same
slots for every image with the same number of visual tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import (
    MAX_SEED, REFERENCE_TOKENS, Knob, LiveState, Method, MethodConfig, ParamError, check_range,
    keep_per_image, keep_top, keep_visual, round_half_up, scaled_budget,
)  # fmt: skip
from .divprune import BUDGETS


@dataclass(frozen=True, kw_only=True)
class RandomSelectionConfig(MethodConfig):
    """`layer`: 0 (before the language model) or K (after layer K-1, FastV's schedule); `budget`:
    tokens kept per 576 (0: use `drop_ratio` instead, FastV's R); `seed` picks the permutation.
    Neutral: drop_ratio 0 with no budget."""

    layer: int = 2
    drop_ratio: float = 0.5
    budget: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.layer < 0:
            raise ParamError("layer", f"'layer' must be >= 0, got {self.layer}")
        check_range("drop_ratio", self.drop_ratio, 0.0, 1.0, high_open=True)
        if not 0 <= self.budget <= REFERENCE_TOKENS:
            raise ParamError("budget", f"'budget' must be in [0, {REFERENCE_TOKENS}] (0: use drop_ratio), got {self.budget}")
        if self.layer == 0 and self.budget == 0:
            raise ParamError("budget", "before the language model (layer = 0) the control needs a budget")
        check_range("seed", self.seed, 0, MAX_SEED)

    @classmethod
    def neutral(cls, num_layers: int) -> RandomSelectionConfig:
        return cls(layer=2, drop_ratio=0.0)

    def check_model(self, num_layers: int) -> None:
        if self.layer >= num_layers:
            raise ParamError("layer", f"'layer' must be in [0, {num_layers - 1}] for this model, got {self.layer}")


def random_scores(n_visual: int, seed: int) -> Tensor:
    """One score per visual-token slot, drawn on the CPU so every device and batch gets the same."""
    return torch.rand(n_visual, generator=torch.Generator().manual_seed(seed))


def random_keep(is_visual: Tensor, valid: Tensor, config: RandomSelectionConfig) -> Tensor:
    """Keep indices for one sample: every real text token plus a seeded random share of its visual tokens."""
    visual = is_visual & valid
    if config.budget:  # per image
        return keep_per_image(
            valid, visual,
            lambda run: keep_top(random_scores(run.numel(), config.seed).to(run.device), scaled_budget(config.budget, run.numel())),
        )  # fmt: skip
    positions = visual.nonzero().squeeze(1)  # FastV's count over the whole sample
    n_keep = round_half_up(positions.numel() * (1.0 - config.drop_ratio))
    chosen = keep_top(random_scores(positions.numel(), config.seed).to(positions.device), n_keep)
    return keep_visual(valid, visual, positions[chosen])


class RandomSelection(Method):
    name = "random"
    config_cls = RandomSelectionConfig
    description = "control: a seeded random choice of visual tokens, before the LLM or on FastV's schedule"
    calibration = Knob("budget", BUDGETS)

    def acts_before_decoder(self) -> bool:
        return self.config.layer == 0

    def where(self) -> tuple[str, ...]:
        return ("vision",) if self.acts_before_decoder() else ("prefill",)

    def _active(self, layer: int) -> bool:
        return self.config.budget > 0 or self.config.drop_ratio > 0.0

    def before_layer(self, state: LiveState) -> list[Tensor] | None:
        if self.config.layer != 0 or state.layer != 0 or not self._active(0):
            return None
        return [random_keep(state.is_visual[b], state.valid[b], self.config) for b in range(state.batch_size)]

    def after_layer(self, state: LiveState) -> list[Tensor] | None:
        if self.config.layer == 0 or state.layer != self.config.layer - 1 or not self._active(state.layer):
            return None
        return [random_keep(state.is_visual[b], state.valid[b], self.config) for b in range(state.batch_size)]

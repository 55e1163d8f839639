"""Random selection: FastV's schedule with chance in place of attention (a control, not a method).

After decoder layer K-1, keep a seeded random share of the visual tokens and drop the rest from
layer K on. Any quality an attention-ranked method keeps beyond this control is what its ranking
buys; on pictures where every token carries the answer (one shape on a plain background) the two
can tie, which is worth knowing before trusting a benchmark (demo-model.md, "a warning").

The random order is a fixed permutation of visual-token slots drawn from `seed`: reproducible,
independent of batch composition (a batched run equals per-sample runs), the same slots for every
prompt with the same number of visual tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import MAX_SEED, LiveState, Method, check_range
from .fastv import FastVConfig, fastv_keep


@dataclass(frozen=True, kw_only=True)
class RandomSelectionConfig(FastVConfig):
    """FastV's `layer` (K) and `drop_ratio` (R), same checks and neutral setting; `seed` picks the
    permutation."""

    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("seed", self.seed, 0, MAX_SEED)


def random_scores(n_visual: int, seed: int) -> Tensor:
    """One score per visual-token slot, drawn on the CPU so every device and batch gets the same."""
    return torch.rand(n_visual, generator=torch.Generator().manual_seed(seed))


def random_keep(is_visual: Tensor, valid: Tensor, drop_ratio: float, seed: int) -> Tensor:
    """Keep indices for one sample: every real text token plus a seeded random share of visual tokens."""
    visual = (is_visual & valid).nonzero().squeeze(1)
    scores = torch.zeros(is_visual.shape, dtype=torch.float32, device=is_visual.device)
    scores[visual] = random_scores(visual.numel(), seed).to(is_visual.device)
    return fastv_keep(scores, is_visual, valid, drop_ratio)  # FastV's selection, chance for attention


class RandomSelection(Method):
    name = "random"
    config_cls = RandomSelectionConfig
    description = "control: after layer K-1, drop a seeded random share of the visual tokens"

    def after_layer(self, state: LiveState) -> list[Tensor] | None:
        if state.layer != self.config.layer - 1 or self.config.drop_ratio == 0.0:
            return None
        config = self.config
        return [
            random_keep(state.is_visual[b], state.valid[b], config.drop_ratio, config.seed)
            for b in range(state.batch_size)
        ]

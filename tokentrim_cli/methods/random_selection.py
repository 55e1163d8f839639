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

from .base import LayerState, Method, MethodConfig, ParamError, check_range, keep_top, round_half_up


@dataclass(frozen=True, kw_only=True)
class RandomSelectionConfig(MethodConfig):
    """`layer` and `drop_ratio` as in FastV (K and R); `seed` picks the permutation."""

    layer: int = 2
    drop_ratio: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.layer < 1:
            raise ParamError("layer", f"'layer' must be in [1, number of decoder layers), got {self.layer}")
        check_range("drop_ratio", self.drop_ratio, 0.0, 1.0, high_open=True)

    @classmethod
    def neutral(cls, num_layers: int) -> RandomSelectionConfig:
        return cls(layer=2, drop_ratio=0.0)

    def check_model(self, num_layers: int) -> None:
        if self.layer >= num_layers:
            raise ParamError("layer", f"'layer' must be in [1, {num_layers - 1}] for this model, got {self.layer}")


def random_scores(n_visual: int, seed: int) -> Tensor:
    """One score per visual-token slot, drawn on the CPU so every device and batch gets the same."""
    return torch.rand(n_visual, generator=torch.Generator().manual_seed(seed))


def random_keep(is_visual: Tensor, valid: Tensor, drop_ratio: float, seed: int) -> Tensor:
    """Keep indices for one sample: every real text token plus a seeded random share of visual tokens."""
    visual = (is_visual & valid).nonzero().squeeze(1)
    n_keep = round_half_up(visual.numel() * (1.0 - drop_ratio))
    kept_visual = visual[keep_top(random_scores(visual.numel(), seed).to(visual.device), n_keep)]
    others = (~is_visual & valid).nonzero().squeeze(1)  # padding and filler go
    return torch.cat([others, kept_visual]).sort().values


class RandomSelection(Method):
    name = "random"
    config_cls = RandomSelectionConfig
    description = "control: after layer K-1, drop a seeded random share of the visual tokens"

    def after_layer(self, state: LayerState) -> list[Tensor] | None:
        if state.layer != self.config.layer - 1 or self.config.drop_ratio == 0.0:
            return None
        config = self.config
        return [
            random_keep(state.is_visual[b], state.valid[b], config.drop_ratio, config.seed)
            for b in range(state.batch_size)
        ]

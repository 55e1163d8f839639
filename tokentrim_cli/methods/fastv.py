"""FastV (Chen et al., ECCV 2024; methods.md §4.1), with the KV-cache ("static") variant.

After decoder layer K-1 runs, score each visual token by the attention the last prompt token pays it
in that layer (mean over heads), keep the top share, and drop the rest from layer K on. Kept tokens
keep their original RoPE positions, as in FastV's Hugging Face integration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Knob, LiveState, Method, MethodConfig, ParamError, QuerySpec, check_range, keep_top, round_half_up


RATIO_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 ... 0.95, calibration's grid


@dataclass(frozen=True, kw_only=True)
class FastVConfig(MethodConfig):
    """`layer` is K and `drop_ratio` is R in the paper: from layer K on, R of the visual tokens are gone.

    Defaults K=2, R=0.5 are the paper's "1/2 tokens after layer 2". R=0 is the neutral setting.
    Each sample keeps round(n_visual * (1 - R)) visual tokens (halves round up), n_visual counting
    every image of the prompt.
    """

    layer: int = 2
    drop_ratio: float = 0.5

    def __post_init__(self) -> None:
        if self.layer < 1:
            raise ParamError("layer", f"'layer' must be in [1, number of decoder layers), got {self.layer}")
        check_range("drop_ratio", self.drop_ratio, 0.0, 1.0, high_open=True)

    @classmethod
    def neutral(cls, num_layers: int) -> FastVConfig:
        return cls(layer=2, drop_ratio=0.0)

    def check_model(self, num_layers: int) -> None:
        if self.layer >= num_layers:
            raise ParamError("layer", f"'layer' must be in [1, {num_layers - 1}] for this model, got {self.layer}")


def fastv_keep(attention_to_tokens: Tensor, is_visual: Tensor, valid: Tensor, drop_ratio: float) -> Tensor:
    """Keep indices for one sample: every real text token plus the best-attended visual tokens.

    attention_to_tokens: (N,) attention from the last prompt token to each live token.
    """
    visual = (is_visual & valid).nonzero().squeeze(1)  # (n_visual,)
    n_keep = round_half_up(visual.numel() * (1.0 - drop_ratio))
    kept_visual = visual[keep_top(attention_to_tokens[visual], n_keep)]
    others = (~is_visual & valid).nonzero().squeeze(1)  # padding and filler go
    return torch.cat([others, kept_visual]).sort().values


class FastV(Method):
    name = "fastv"
    config_cls = FastVConfig
    description = "after layer K-1, drop the visual tokens the last prompt token attends to least"
    needs_attention = True
    reads_question = True
    calibration = Knob("drop_ratio", RATIO_GRID)

    def score_request(self, layer: int) -> QuerySpec | None:
        return QuerySpec.LAST_TOKEN if layer == self.config.layer - 1 else None

    def after_layer(self, state: LiveState) -> list[Tensor] | None:
        if state.layer != self.config.layer - 1 or self.config.drop_ratio == 0.0:
            return None
        last_row = state.attention[:, 0, :]  # (B, N)
        return [
            fastv_keep(last_row[b], state.is_visual[b], state.valid[b], self.config.drop_ratio)
            for b in range(state.batch_size)
        ]

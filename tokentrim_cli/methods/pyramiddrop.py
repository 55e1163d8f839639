"""PyramidDrop (Xing et al., CVPR 2025; methods.md §4.3): drop visual tokens stage by stage.

The decoder is split into stages at the layers `stages` (8, 16, 24 on LLaVA-1.5-7B's 32). Before each stage
boundary layer l, the last instruction token's attention under layer l's own projections (its
input norm, query and key projections and RoPE, computed from layer l's input over the live tokens,
before it runs) is averaged over heads, and each image keeps its top int(n * ratio^k) tokens at the
k-th boundary (n: the image's visual tokens entering the language model), in their order. Positions
are renumbered contiguously (`compact`), as the official code does, in prefill and decode.

One query row at a few layers: SDPA/FlashAttention stay on. Read from Cooperx521/PyramidDrop
(`pdrop_rank_drop`). Every image of a prompt is ranked on its own (the official code has one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Knob, LiveState, Method, MethodConfig, ParamError, PerSample, QuerySpec, check_range, image_runs, keep_top, keep_visual

RATIOS = (0.75, 0.5, 0.4, 0.3, 0.25, 0.2)  # calibration, mild to aggressive


@dataclass(frozen=True, kw_only=True)
class PyramidDropConfig(MethodConfig):
    """`stages`: the layers at the stage boundaries (tokens are ranked and dropped before each); `ratio`: lambda,
    the share of the previous stage's visual tokens each stage keeps. Neutral: ratio 1."""

    stages: tuple[int, ...] = (8, 16, 24)
    ratio: float = 0.5

    def __post_init__(self) -> None:
        check_range("ratio", self.ratio, 0.0, 1.0)
        if not self.stages or list(self.stages) != sorted(set(self.stages)) or self.stages[0] < 1:
            raise ParamError("stages", f"'stages' must be ascending, distinct and >= 1, got {list(self.stages)}")

    @classmethod
    def neutral(cls, num_layers: int) -> PyramidDropConfig:
        return cls(stages=(1,), ratio=1.0)

    @classmethod
    def example(cls, num_layers: int) -> PyramidDropConfig:
        layers = tuple(sorted({min(max(1, round(layer * num_layers / 32)), num_layers - 1) for layer in cls().stages}))
        return cls(stages=layers)

    def check_model(self, num_layers: int) -> None:
        if self.stages[-1] >= num_layers:
            raise ParamError("stages", f"'stages' must lie in [1, {num_layers - 1}] for this model, got {list(self.stages)}")


def stage_keep(initial: int, stage: int, ratio: float) -> int:
    """Visual tokens an image of `initial` tokens keeps from the `stage`-th boundary on (1-based):
    int(initial * ratio**stage), as the official code truncates; at least 1."""
    return max(1, int(initial * ratio**stage))


class PyramidDrop(Method):
    name = "pyramiddrop"
    config_cls = PyramidDropConfig
    description = "at each stage boundary, keep the image tokens the last instruction token attends to most"
    needs_attention = True
    reads_question = True
    calibration = Knob("ratio", RATIOS)

    def pre_score_request(self, layer: int) -> QuerySpec | None:
        return QuerySpec.LAST_TOKEN if layer in self.config.stages and self.config.ratio < 1.0 else None

    def before_layer(self, state: LiveState) -> list[Tensor] | None:
        if state.layer == 0:
            state.memory["pdrop_initial"] = PerSample(
                [[run.numel() for run in image_runs(state.is_visual[b] & state.valid[b])] for b in range(state.batch_size)]
            )
        if state.layer not in self.config.stages or self.config.ratio == 1.0:
            return None
        stage = self.config.stages.index(state.layer) + 1
        keep = []
        for b in range(state.batch_size):
            visual = state.is_visual[b] & state.valid[b]
            scores = state.attention[b, 0]
            kept = [run[keep_top(scores[run], min(run.numel(), stage_keep(initial, stage, self.config.ratio)))]
                    for run, initial in zip(image_runs(visual), state.memory["pdrop_initial"][b])]  # fmt: skip
            kept_visual = torch.cat(kept) if kept else visual.nonzero().squeeze(1)
            keep.append(keep_visual(state.valid[b], visual, kept_visual))
        return keep

"""DART (Wen et al., EMNLP 2025; methods.md §4.6): keep the visual tokens least duplicated with a few pivots.

Before decoder layer K (K=2), from layer K-1's outputs: pivot tokens are the image tokens (4) and
the text tokens after the image (4) whose keys in layer K-1 have the largest L1 norm; then, pivot by
pivot, each takes its share of the budget among the image's remaining tokens: those with the lowest
cosine similarity to the pivot (hidden states under the model's final norm). The kept image tokens
are the image pivots plus these; text is never dropped; kept tokens keep their RoPE positions (the
official code's `position_ids = keep_indexs`). No attention weights: SDPA/FlashAttention stay on.

Read from the official repository's LLaVA code (ZichenWen1/DART, via a public fork: the K-norm
variant, `get_retained_image_token`). Differences, each deliberate:
- the budget is exact: the official keeps the pivots plus `max_num_trunction // 8` tokens per pivot
  (132 for 128); here `budget` tokens per 576 are kept, the remainder of the division going to the
  first pivots;
- pivots take their turns in token order (the official iterates a Python set);
- every image is handled on its own, with its own pivots (the official code has one image span).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import (
    REFERENCE_TOKENS, Knob, LiveState, Method, MethodConfig, ParamError, image_runs, instruction_mask, keep_top,
    keep_visual, scaled_budget,
)
from .divprune import BUDGETS


@dataclass(frozen=True, kw_only=True)
class DARTConfig(MethodConfig):
    """`layer` is K (pruned before layer K, scored on layer K-1's output); `budget`: visual tokens
    kept per 576; pivots: how many image and text tokens lead the selection. Neutral: budget 576."""

    layer: int = 2
    budget: int = 128
    pivot_image_tokens: int = 4
    pivot_text_tokens: int = 4

    def __post_init__(self) -> None:
        if self.layer < 1:
            raise ParamError("layer", f"'layer' must be >= 1 (layer K-1's keys rank the pivots), got {self.layer}")
        if not 1 <= self.budget <= REFERENCE_TOKENS:
            raise ParamError("budget", f"'budget' must be in [1, {REFERENCE_TOKENS}] (tokens per 576), got {self.budget}")
        if self.pivot_image_tokens < 1 or self.pivot_text_tokens < 0:
            raise ParamError("pivot_image_tokens", "DART needs at least one image pivot and no negative count of text pivots")

    @classmethod
    def neutral(cls, num_layers: int) -> DARTConfig:
        return cls(budget=REFERENCE_TOKENS)

    def check_model(self, num_layers: int) -> None:
        if self.layer >= num_layers:
            raise ParamError("layer", f"'layer' must be in [1, {num_layers - 1}] for this model, got {self.layer}")


def pivot_shares(extra: int, pivots: int) -> list[int]:
    """How many tokens each pivot adds: an even split of `extra`, the remainder to the first pivots."""
    base, remainder = divmod(extra, pivots)
    return [base + (i < remainder) for i in range(pivots)]


def dart_select(run: Tensor, text: Tensor, key_norm: Tensor, normed: Tensor, budget: int, image_pivots: int,
                text_pivots: int) -> Tensor:
    """Kept image tokens (ascending positions) of one image `run` (positions in the row).

    text: positions of the text after the image; key_norm (N,): L1 norm of each token's keys;
    normed (N, D): hidden states under the final norm."""
    image_pivots = min(image_pivots, budget, run.numel())
    picked_image = run[keep_top(key_norm[run], image_pivots)]
    picked_text = text[keep_top(key_norm[text], min(text_pivots, text.numel()))] if text.numel() else text
    pivots = torch.cat([picked_image, picked_text]).sort().values
    pool = run[~torch.isin(run, picked_image)]
    kept = [picked_image]
    unit = torch.nn.functional.normalize(normed.float(), dim=-1)
    for pivot, share in zip(pivots.tolist(), pivot_shares(budget - image_pivots, pivots.numel())):
        if share == 0 or pool.numel() == 0:
            continue
        similarity = unit[pool] @ unit[pivot]
        chosen = keep_top(-similarity, min(share, pool.numel()))  # the least duplicated
        kept.append(pool[chosen])
        pool = pool[~torch.isin(torch.arange(pool.numel(), device=pool.device), chosen)]
    return torch.cat(kept).sort().values


class DART(Method):
    name = "dart"
    config_cls = DARTConfig
    description = "before layer K, keep the image tokens least duplicated with a few high-key-norm pivots"
    reads_question = True  # text pivots come from the question
    calibration = Knob("budget", BUDGETS)

    def feature_request(self, layer: int) -> bool:
        return layer == self.config.layer

    def before_layer(self, state: LiveState) -> list[Tensor] | None:
        if state.layer != self.config.layer:
            return None
        key_norm = state.keys.float().abs().sum(-1)  # (B, N) L1 norm over heads and channels
        keep = []
        for b in range(state.batch_size):
            visual = state.is_visual[b] & state.valid[b]
            runs = image_runs(visual)
            text = instruction_mask(visual, state.valid[b], runs).nonzero().squeeze(1)
            kept = [dart_select(run, text, key_norm[b], state.normed_hidden[b], scaled_budget(self.config.budget, run.numel()),
                                self.config.pivot_image_tokens, self.config.pivot_text_tokens) for run in runs]  # fmt: skip
            kept_visual = torch.cat(kept) if kept else visual.nonzero().squeeze(1)
            keep.append(keep_visual(state.valid[b], visual, kept_visual))
        return keep

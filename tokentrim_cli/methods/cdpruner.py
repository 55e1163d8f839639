"""CDPruner (Zhang et al., NeurIPS 2025; methods.md §4.8): a conditional DPP over the visual tokens.

Before the language model (layer 0), for each image: the similarity kernel S is the cosine
similarity of the projected visual features; the relevance r of each token to the instruction is
the mean over instruction tokens of the *negated* cosine similarity, min-max normalised
((r - min + 1e-6) / (max - min)), as the official code computes it; the kernel is
L = diag(r) S diag(r), and the greedy fast-MAP inference of the DPP picks the budget's tokens (each
step the token with the largest remaining marginal gain, Chen et al. 2018's Cholesky update).

The documented difference: the official code embeds the instruction with CLIP's *text* tower and
the patches with CLIP's visual projection. No LLaVA-family checkpoint in transformers carries a
CLIP text tower (and the built-in model's tower is DINOv2), so tokentrim measures relevance in the
language model's input space: the instruction's token embeddings (the text after the image)
against the projected visual features. `relevance = "negated"` keeps the official sign;
"similarity" uses +cos (what the paper's text describes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .base import (
    REFERENCE_TOKENS, Knob, LiveState, Method, MethodConfig, ParamError, image_runs, instruction_mask,
    keep_per_image, scaled_budget,
)
from .divprune import BUDGETS


@dataclass(frozen=True, kw_only=True)
class CDPrunerConfig(MethodConfig):
    """`budget`: visual tokens kept per 576 (scaled to each image's count). Neutral: 576."""

    budget: int = 64
    relevance: Literal["negated", "similarity"] = "negated"

    def __post_init__(self) -> None:
        if not 1 <= self.budget <= REFERENCE_TOKENS:
            raise ParamError("budget", f"'budget' must be in [1, {REFERENCE_TOKENS}] (tokens per 576), got {self.budget}")

    @classmethod
    def neutral(cls, num_layers: int) -> CDPrunerConfig:
        return cls(budget=REFERENCE_TOKENS)


def relevance_scores(image: Tensor, text: Tensor, *, negated: bool) -> Tensor:
    """(n,) instruction relevance of each visual token, min-max normalised, fp32."""
    image_unit = torch.nn.functional.normalize(image.float(), dim=-1)
    text_unit = torch.nn.functional.normalize(text.float(), dim=-1)
    similarity = image_unit @ text_unit.T  # (n, m)
    relevance = (-similarity if negated else similarity).mean(dim=-1)
    spread = relevance.max() - relevance.min()
    if not bool(spread > 0):  # every token equally relevant: the plain DPP (the official code divides by 0)
        return torch.ones_like(relevance)
    return (relevance - relevance.min() + 1e-6) / spread


def conditional_kernel(image: Tensor, relevance: Tensor) -> Tensor:
    """(n, n) L = diag(r) S diag(r), S the cosine similarity of the features, fp32."""
    unit = torch.nn.functional.normalize(image.float(), dim=-1)
    return relevance[:, None] * (unit @ unit.T) * relevance[None, :]


def dpp_greedy_map(kernel: Tensor, count: int) -> Tensor:
    """Indices (ascending) of `count` items picked by greedy MAP inference of a DPP with `kernel`.

    Each step takes the item with the largest remaining marginal gain d_j^2; the Cholesky rows
    c_i are updated incrementally (e_j = (L_j - <c_j, c>) / d_j). Ties go to the lower index."""
    n = kernel.shape[0]
    if count >= n:
        return torch.arange(n, device=kernel.device)
    rows = torch.zeros(count, n, dtype=kernel.dtype, device=kernel.device)
    gains = kernel.diagonal().clone()
    picked = []
    for i in range(count):
        j = int(gains.argmax())
        picked.append(j)
        # The remaining gain can reach 0 once the kernel's rank is spent; clamped, not NaN.
        update = (kernel[j] - rows[:i, j] @ rows[:i]) / gains[j].clamp(min=1e-12).sqrt()
        rows[i] = update
        gains = gains - update.square()
        gains[j] = -float("inf")
    return torch.tensor(sorted(picked), device=kernel.device)


class CDPruner(Method):
    name = "cdpruner"
    config_cls = CDPrunerConfig
    description = "before the LLM, a DPP over each image's tokens: diverse and relevant to the instruction"
    reads_question = True
    calibration = Knob("budget", BUDGETS)

    def acts_before_decoder(self) -> bool:
        return True

    def before_layer(self, state: LiveState) -> list[Tensor] | None:
        if state.layer != 0:
            return None
        keep = []
        for b in range(state.batch_size):
            visual = state.is_visual[b] & state.valid[b]
            instruction = state.hidden[b, instruction_mask(visual, state.valid[b], image_runs(visual))]
            keep.append(keep_per_image(state.valid[b], visual, lambda run: self._choose(state.hidden[b, run], instruction)))
        return keep

    def _choose(self, features: Tensor, instruction: Tensor) -> Tensor:
        """Indices of one image's tokens that the conditional DPP keeps."""
        if instruction.shape[0] == 0:  # nothing to condition on: the plain DPP
            relevance = torch.ones(features.shape[0], device=features.device)
        else:
            relevance = relevance_scores(features, instruction, negated=self.config.relevance == "negated")
        return dpp_greedy_map(conditional_kernel(features, relevance), scaled_budget(self.config.budget, features.shape[0]))

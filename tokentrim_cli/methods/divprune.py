"""DivPrune (Alvar et al., CVPR 2025; methods.md §4.7): keep the most diverse visual tokens.

Before the language model (layer 0: its inputs are the projected visual features), each image's
tokens are selected by greedy max-min diversity on the cosine distance 1 - cos(x_i, x_j): the first
pick is the token farthest from its nearest neighbour, every next pick the token whose distance to
the nearest already-picked token is largest (the official code's rule; ties go to the lower index).
No attention, no question: multi-turn safe, and FlashAttention/SDPA untouched.

Differences from the official code: the budget is a token count per 576 visual tokens (the
official `SUBSET_RATIO` 0.098 keeps round(0.098 * 576) = 56); a picked token is excluded from
later picks (the official loop could pick an exact duplicate twice); every image of a prompt is selected
on its own (the official code handles one image at index 35); kept tokens keep their order and, by
default (`compact`, as the official code's shortened sequence), contiguous positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import REFERENCE_TOKENS, Knob, LiveState, Method, MethodConfig, ParamError, keep_per_image, scaled_budget

BUDGETS = (384, 288, 192, 128, 96, 64, 32)  # calibration, mild to aggressive


@dataclass(frozen=True, kw_only=True)
class DivPruneConfig(MethodConfig):
    """`budget`: visual tokens kept per 576 (scaled to each image's count). Neutral: 576."""

    budget: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.budget <= REFERENCE_TOKENS:
            raise ParamError("budget", f"'budget' must be in [1, {REFERENCE_TOKENS}] (tokens per 576), got {self.budget}")

    @classmethod
    def neutral(cls, num_layers: int) -> DivPruneConfig:
        return cls(budget=REFERENCE_TOKENS)


def cosine_distance(features: Tensor) -> Tensor:
    """(n, n) 1 - cosine similarity, in fp32."""
    unit = torch.nn.functional.normalize(features.float(), dim=-1)
    return 1.0 - unit @ unit.T


def max_min_diverse(features: Tensor, count: int) -> Tensor:
    """Indices (ascending) of `count` rows of `features` (n, D) picked by greedy max-min distance."""
    n = features.shape[0]
    if count >= n:
        return torch.arange(n, device=features.device)
    distance = cosine_distance(features)
    # The first pick: the token whose nearest other token is farthest (second-smallest of its column).
    nearest_other = distance.topk(2, dim=0, largest=False).values[1]
    picked = [int(nearest_other.argmax())]
    closest = distance[picked[0]].clone()  # distance of every token to its nearest picked token
    closest[picked[0]] = -float("inf")
    for _ in range(count - 1):
        choice = int(closest.argmax())
        picked.append(choice)
        closest = torch.minimum(closest, distance[choice])
        closest[choice] = -float("inf")  # a picked token is never picked again (exact duplicates)
    return torch.tensor(sorted(picked), device=features.device)


class DivPrune(Method):
    name = "divprune"
    config_cls = DivPruneConfig
    description = "before the LLM, keep each image's most diverse tokens (greedy max-min cosine distance)"
    calibration = Knob("budget", BUDGETS)

    def acts_before_decoder(self) -> bool:
        return True

    def before_layer(self, state: LiveState) -> list[Tensor] | None:
        if state.layer != 0:
            return None
        keep = []
        for b in range(state.batch_size):
            hidden = state.hidden[b]
            keep.append(keep_per_image(
                state.valid[b], state.is_visual[b] & state.valid[b],
                lambda run: max_min_diverse(hidden[run], scaled_budget(self.config.budget, run.numel())),
            ))  # fmt: skip
        return keep

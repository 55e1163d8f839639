"""RoPE positions under the two policies (engine.md §3), as pure functions on tensors.

`keep`: every token keeps the position it had in the prompt (FastV's Hugging Face code, VTW).
`compact`: each layer numbers its tokens contiguously (MustDrop's and PyramidDrop's code); a token
that enters a layer later (a decode step, a new turn) takes the position after that layer's last.

A model family with other positions (Qwen2-VL's 3-D RoPE) would replace this module's functions and
`family.py`'s rotary call; the engine only asks for "positions of these tokens in this layer".
"""

from __future__ import annotations

from torch import Tensor

POLICIES = ("keep", "compact")


def next_position(stored_positions: Tensor, stored_valid: Tensor) -> Tensor:
    """(B,) the position after the last valid stored entry of a layer (-1 + 1 = 0 when none)."""
    return stored_positions.masked_fill(~stored_valid, -1).max(dim=1).values + 1


def compact(base: Tensor, valid: Tensor) -> Tensor:
    """(B, N) contiguous positions from `base` (B,) over the valid tokens (padding repeats its neighbour)."""
    relative = valid.long().cumsum(1) - 1
    return (base[:, None] + relative).clamp(min=0)

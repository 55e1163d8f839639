"""Attention masks, from one rule: a query may attend to a key that is valid and not later than it.

`allowed_keys()` is the rule, as a boolean (B, Q, T) tensor; `attention_mask()` turns it into what a
decoder layer takes (a boolean mask for sdpa, an additive one for eager attention). Pure functions
on tensors: the engine's layer masks, the scoring rows and the vision stage's padding masks all come
from here.
"""

from __future__ import annotations

import torch
from torch import Tensor


def allowed_keys(query_index: Tensor, key_index: Tensor, key_valid: Tensor, *, query_valid: Tensor | None = None) -> Tensor:
    """(B, Q, T) bool: key t is visible to query q when it is valid and key_index <= query_index.

    query_index (B, Q) and key_index (B, T) are logical token indices (the columns of the 2D
    attention mask), so causality survives any dropping; `query_valid` (B, Q) blanks whole rows.
    """
    allowed = (key_index[:, None, :] <= query_index[:, :, None]) & key_valid[:, None, :]
    if query_valid is not None:
        allowed = allowed & query_valid[..., None]
    return allowed


def see_themselves(allowed: Tensor) -> Tensor:
    """The same rule, with every query allowed its own key (the last Q keys are the queries' own):
    a padding or filler row that sees nothing would make sdpa return NaN."""
    queries, total = allowed.shape[-2:]
    allowed = allowed.clone()
    allowed[..., torch.arange(queries, device=allowed.device), torch.arange(total - queries, total, device=allowed.device)] = True
    return allowed


def additive(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """0 where allowed, the dtype's most negative value elsewhere (what eager attention adds)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def attention_mask(allowed: Tensor, *, eager: bool, dtype: torch.dtype) -> Tensor:
    """(B, 1, Q, T): boolean for sdpa, additive for eager attention."""
    allowed = allowed[:, None]
    return additive(allowed, dtype) if eager else allowed


def key_padding_mask(key_valid: Tensor, dtype: torch.dtype) -> Tensor | None:
    """(B, 1, T, T) additive mask hiding invalid keys from every query (a bidirectional encoder's
    padding), or None when every key is valid."""
    if bool(key_valid.all()):
        return None
    tokens = key_valid.shape[1]
    allowed = key_valid[:, None, :].expand(-1, tokens, -1)
    return additive(allowed[:, None], dtype)

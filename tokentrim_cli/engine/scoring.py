"""Attention rows for a few queries, without eager attention (engine.md §5, methods.md §0.4).

The real attention keeps running through sdpa (or FlashAttention); for the layers a method scores,
we recompute the query of the selected rows from the layer's input (input norm, q projection, RoPE)
and take a softmax against that layer's cached keys, in fp32, averaged over heads. Cost O(rows x T).
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

from .masks import allowed_keys


def _rotary(attention_module):
    # Use the architecture's own RoPE application so scores match what the layer computed.
    module = sys.modules[type(attention_module).__module__]
    return module.apply_rotary_pos_emb


def attention_rows(
    decoder_layer,
    hidden_rows: Tensor,
    cos_rows: Tensor,
    sin_rows: Tensor,
    keys: Tensor,
    allowed: Tensor,
) -> Tensor:
    """Head-mean attention probabilities of the query rows over the layer's keys, in fp32.

    hidden_rows: (B, R, D) the layer's *input* hidden states at the query rows.
    cos_rows, sin_rows: (B, R, head_dim) RoPE of the query rows.
    keys: (B, H_kv, T, head_dim) the layer's cached keys (RoPE applied).
    allowed: (B, R, T) bool, which keys each query may see; rows with none give zeros.
    Returns (B, R, T).
    """
    attention = decoder_layer.self_attn
    batch, rows, _ = hidden_rows.shape
    normed = decoder_layer.input_layernorm(hidden_rows)
    query = attention.q_proj(normed).view(batch, rows, -1, attention.head_dim).transpose(1, 2)  # (B, H, R, hd)
    query, _ = _rotary(attention)(query, query, cos_rows, sin_rows)
    heads_per_kv = attention.num_key_value_groups
    query = query.float().reshape(batch, keys.shape[1], heads_per_kv * rows, attention.head_dim)  # group per KV head
    logits = torch.matmul(query, keys.float().transpose(2, 3)) * attention.scaling  # (B, H_kv, g*R, T)
    logits = logits.reshape(batch, -1, rows, keys.shape[2])  # (B, H, R, T)
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # fully masked rows -> zeros
    return probs.mean(dim=1)


def score_rows(decoder_layer, rows: Tensor, rows_valid: Tensor, row_index: Tensor, hidden_in: Tensor, cos: Tensor,
               sin: Tensor, keys: Tensor, key_index: Tensor, key_valid: Tensor) -> Tensor:
    """(B, R, T) attention of the rows `rows` (B, R) of a layer's input `hidden_in` over that
    layer's cached keys. `row_index` (B, R) is each row's logical token index (causality); rows
    that are not real queries (`rows_valid` False) get zeros."""
    device = keys.device  # the layer's own device (a model may be spread over several)
    take = rows.to(device)[..., None]
    hidden_rows = hidden_in.to(device).gather(1, take.expand(-1, -1, hidden_in.shape[-1]))
    cos_rows = cos.to(device).expand(rows.shape[0], -1, -1).gather(1, take.expand(-1, -1, cos.shape[-1]))
    sin_rows = sin.to(device).expand(rows.shape[0], -1, -1).gather(1, take.expand(-1, -1, sin.shape[-1]))
    allowed = allowed_keys(row_index.to(device), key_index.to(device), key_valid.to(device), query_valid=rows_valid.to(device))
    return attention_rows(decoder_layer, hidden_rows, cos_rows, sin_rows, keys, allowed)


def layer_keys(decoder_layer, hidden: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """(B, H_kv, N, head_dim) the keys layer `decoder_layer` would compute from its input `hidden`
    (input norm, key projection, RoPE), without running it."""
    attention = decoder_layer.self_attn
    batch, tokens, _ = hidden.shape
    normed = decoder_layer.input_layernorm(hidden)
    keys = attention.k_proj(normed).view(batch, tokens, -1, attention.head_dim).transpose(1, 2)
    _, keys = _rotary(attention)(keys, keys, cos, sin)
    return keys


def score_rows_before(decoder_layer, rows: Tensor, rows_valid: Tensor, token_index: Tensor, valid: Tensor,
                      hidden_in: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """(B, R, N) attention of rows `rows` under a layer's projections, computed from its input over
    the live tokens before the layer runs (PyramidDrop's ranking)."""
    keys = layer_keys(decoder_layer, hidden_in, cos.expand(hidden_in.shape[0], -1, -1), sin.expand(hidden_in.shape[0], -1, -1))
    row_index = token_index.gather(1, rows)
    return score_rows(decoder_layer, rows, rows_valid, row_index, hidden_in, cos, sin, keys, token_index, valid)

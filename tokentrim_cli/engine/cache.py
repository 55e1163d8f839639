"""A KV cache whose layers can forget entries, with the bookkeeping the trimming engine needs.

Every cached entry carries, per layer and per sample (`Entries`):
- `token_index`: its index in the logical sequence (the column of the 2D attention mask), used for
  causality and padding when masks are rebuilt after a drop;
- `rope_position`: the RoPE position its key was encoded at (`keep` or `compact` policy);
- `valid`: False for left padding and for the filler entries that make per-sample keep sets the
  same length in a batch;
- `is_visual`, `protected` (a vision stage's "never drop"), and `attention_sum` (the attention the
  entry received from the decode queries that scored its layer).

Decode steps append one entry per layer per step whose metadata is always the same (a valid text
token at the next index and position), so it is recorded lazily: a count and the first position,
turned into tensors only when something reads them. The baseline's decode loop therefore does no
bookkeeping work per layer at all.

`get_seq_length()` returns the number of tokens *seen* (the logical length), not the stored length of
layer 0, so `generate()` slices its inputs right even when every layer was pruned (engine.md §4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers.cache_utils import DynamicCache

from ..methods.base import PerSample

_COLUMNS = ("token_index", "rope_position", "valid", "is_visual", "protected", "attention_sum")


@dataclass
class PrefillTrace:
    """What one prefill did: visual tokens entering each decoder layer, per sample."""

    visual_per_layer: list[list[int]]  # [sample][layer]
    tokens_per_layer: list[list[int]]  # [sample][layer]: every real token entering the layer
    visual_input: list[int]  # [sample]: visual tokens entering the language model (input budget)
    kv_after_prefill: list[int]  # [layer]: stored entries per layer once the prefill ended

    @property
    def layer_averaged(self) -> list[float]:
        """[sample]: visual tokens averaged over layers (layer-averaged budget, methods.md §0.2)."""
        return [sum(row) / len(row) for row in self.visual_per_layer]


@dataclass
class Entries:
    """The metadata of one layer's cached entries, in the order of its keys: (B, n) each."""

    token_index: Tensor
    rope_position: Tensor
    valid: Tensor
    is_visual: Tensor
    protected: Tensor
    attention_sum: Tensor

    def cat(self, other: Entries) -> Entries:
        return Entries(*(torch.cat([getattr(self, c), getattr(other, c)], 1) for c in _COLUMNS))

    def gather(self, index: Tensor) -> Entries:
        return Entries(*(getattr(self, c).gather(1, index.to(getattr(self, c).device)) for c in _COLUMNS))

    def map_batch(self, fn) -> Entries:
        return Entries(*(fn(getattr(self, c)) for c in _COLUMNS))


@dataclass
class _Layer:
    entries: Entries | None = None
    pending: int = 0  # decode entries not yet in `entries`
    pending_token: int = 0  # token index of the first pending entry (the same for every sample)
    pending_rope: Tensor | None = None  # (B,) RoPE position of the first pending entry
    pruned: bool = False  # stores anything but the full sequence: only rebuilt masks are right
    shifted: bool = False  # compact positions differ from the prompt's: RoPE is recomputed
    all_valid: bool = True  # no padding or filler entry (host-side: masks are chosen without a sync)

    @property
    def stored(self) -> int:
        return (0 if self.entries is None else self.entries.token_index.shape[1]) + self.pending


@dataclass
class CacheMeta:
    layers: list[_Layer]
    method_state: dict = field(default_factory=dict)
    decode_steps: int = 0  # decode forwards since the last prefill
    prefills: list[PrefillTrace] = field(default_factory=list)

    @property
    def pruned(self) -> list[bool]:
        return [layer.pruned for layer in self.layers]


class PrunableCache(DynamicCache):
    """A `DynamicCache` that can drop entries of one layer and knows what each entry is."""

    def __init__(self, config, num_layers: int) -> None:
        super().__init__(config=config)
        self.num_layers = num_layers
        self.seen_tokens = 0
        self.meta = CacheMeta(layers=[_Layer() for _ in range(num_layers)])

    # ---- what transformers asks of a cache -------------------------------------------------

    def get_seq_length(self, layer_idx: int = 0) -> int:
        # The logical length: generate() uses it to know how much of input_ids is already cached.
        return self.seen_tokens

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.stored_length(layer_idx)

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a pruned cache cannot be cropped (assisted decoding is not supported)")

    def reorder_cache(self, beam_idx: Tensor) -> None:
        super().reorder_cache(beam_idx)
        rows = beam_idx.tolist()  # once per reorder, between decode steps
        self._select_batch(lambda t: t.index_select(0, beam_idx.to(t.device)), lambda v: [v[i] for i in rows])

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._select_batch(lambda t: t.repeat_interleave(repeats, dim=0), lambda v: [x for x in v for _ in range(repeats)])

    def batch_select_indices(self, indices: Tensor) -> None:
        super().batch_select_indices(indices)
        rows = indices.tolist()
        self._select_batch(lambda t: t[indices.to(t.device)], lambda v: [v[i] for i in rows])

    def _select_batch(self, on_tensor, on_list) -> None:
        for layer in self.meta.layers:
            if layer.entries is not None:
                layer.entries = layer.entries.map_batch(on_tensor)
            if layer.pending_rope is not None:
                layer.pending_rope = on_tensor(layer.pending_rope)
        for key, value in self.meta.method_state.items():
            if isinstance(value, PerSample):
                self.meta.method_state[key] = PerSample(on_list(value))
            elif isinstance(value, Tensor):
                self.meta.method_state[key] = on_tensor(value)

    # ---- bookkeeping used by the engine ------------------------------------------------------

    def stored_length(self, layer: int) -> int:
        return self.meta.layers[layer].stored

    def record(self, layer: int, entries: Entries, *, all_valid: bool) -> None:
        """Append metadata for the entries layer `layer` is about to store (same order as its keys).
        `all_valid`: whether every new entry is a real token (no padding, no filler)."""
        state = self.meta.layers[layer]
        state.all_valid = state.all_valid and all_valid
        current = self.entries(layer)
        state.entries = entries if current is None else current.cat(entries)

    def record_decode(self, layer: int, rope_position: Tensor) -> None:
        """Note the decode step's entry of `layer`: a valid text token at the next index, at
        `rope_position` (B, 1). Host-side only, unless it is the first since the last read."""
        state = self.meta.layers[layer]
        if state.pending == 0:
            state.pending_token = self.seen_tokens
            state.pending_rope = rope_position[:, 0]
        state.pending += 1

    def entries(self, layer: int) -> Entries | None:
        """The layer's metadata as tensors (pending decode entries materialised)."""
        state = self.meta.layers[layer]
        if state.pending:
            base = state.entries
            batch = state.pending_rope.shape[0]
            device = state.pending_rope.device
            steps = torch.arange(state.pending, device=device)
            new = Entries(
                token_index=(state.pending_token + steps).expand(batch, -1),
                rope_position=state.pending_rope[:, None] + steps,
                valid=torch.ones(batch, state.pending, dtype=torch.bool, device=device),
                is_visual=torch.zeros(batch, state.pending, dtype=torch.bool, device=device),
                protected=torch.zeros(batch, state.pending, dtype=torch.bool, device=device),
                attention_sum=torch.zeros(batch, state.pending, dtype=torch.float32, device=device),
            )
            state.entries = new if base is None else base.cat(new)
            state.pending = 0
        return state.entries

    def next_rope_position(self, layer: int, batch: int, device) -> Tensor:
        """(B,) the position after the layer's last valid entry (compact policy), without a sync."""
        from .positions import next_position

        state = self.meta.layers[layer]
        if state.pending:
            return state.pending_rope + state.pending
        if state.entries is None:
            return torch.zeros(batch, dtype=torch.long, device=device)
        return next_position(state.entries.rope_position, state.entries.valid)

    def keep_entries(self, layer: int, keep: Tensor, filler: Tensor, *, any_filler: bool) -> None:
        """Keep only entries `keep` (B, n) of `layer`, in that order; every other entry is forgotten.

        `filler` (B, n) flags repeated entries that only pad a sample's row to the batch's length.
        """
        cache_layer = self.layers[layer]
        index = keep.to(cache_layer.keys.device)
        kv_index = index[:, None, :, None].expand(-1, cache_layer.keys.shape[1], -1, cache_layer.keys.shape[3])
        cache_layer.keys = cache_layer.keys.gather(2, kv_index)  # (B, H_kv, n, D)
        cache_layer.values = cache_layer.values.gather(2, kv_index)
        kept = self.entries(layer).gather(index)
        filler = filler.to(kept.valid.device)
        kept.valid, kept.is_visual, kept.protected = kept.valid & ~filler, kept.is_visual & ~filler, kept.protected & ~filler
        state = self.meta.layers[layer]
        state.entries = kept
        state.pruned = True
        state.all_valid = state.all_valid and not any_filler

    def add_attention(self, layer: int, scores: Tensor) -> Tensor:
        """Add a decode query's attention (B, T) to the layer's running sums; returns the sums."""
        entries = self.entries(layer)
        entries.attention_sum = entries.attention_sum + scores
        return entries.attention_sum

    def lengths(self) -> list[int]:
        """Stored entries per layer (the same for every sample of a batch; filler entries count)."""
        return [self.stored_length(layer) for layer in range(self.num_layers)]

    def valid_lengths(self) -> list[list[int]]:
        """Real (non-padding, non-filler) entries per sample and layer: [sample][layer]."""
        return self._count(lambda e: e.valid)

    def visual_lengths(self) -> list[list[int]]:
        """Cached visual entries per sample and layer: [sample][layer]."""
        return self._count(lambda e: e.valid & e.is_visual)

    def _count(self, select) -> list[list[int]]:
        columns = [self.entries(layer) for layer in range(self.num_layers)]
        counts = [None if c is None else select(c).sum(1).tolist() for c in columns]
        batch = next((len(c) for c in counts if c is not None), 0)
        return [[0 if c is None else c[b] for c in counts] for b in range(batch)]

    def nbytes(self) -> int:
        """Bytes held by the key and value tensors, measured from the tensors themselves."""
        return kv_nbytes(self)


def kv_nbytes(cache) -> int:
    """Bytes of the key and value tensors of any transformers cache (stock runs too)."""
    total = 0
    for layer in cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
    return total


def kv_lengths(cache) -> list[int]:
    """Stored entries per layer of any transformers cache."""
    return [layer.keys.shape[2] if getattr(layer, "keys", None) is not None else 0 for layer in cache.layers]

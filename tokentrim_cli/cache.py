"""A KV cache whose layers can forget entries, with the bookkeeping the trimming engine needs.

Every cached entry carries, per layer and per sample:
- `token_index`: its index in the logical sequence (the column of the 2D attention mask), used for
  causality and padding when masks are rebuilt after a drop;
- `rope_position`: the RoPE position its key was encoded at (`keep` or `compact` policy);
- `valid`: False for left padding and for the filler entries that make per-sample keep sets the
  same length in a batch;
- `is_visual`: whether it is an image token;
- `protected`: whether a vision stage marked it as never to be dropped (MustDrop's key set);
- `attention_sum`: the attention it received from the decode queries that scored its layer.

`get_seq_length()` returns the number of tokens *seen* (the logical length), not the stored length of
layer 0, so `generate()` slices its inputs right even when every layer was pruned (engine.md §4).
This module and `decoder.py`/`scoring.py` are the only places that touch transformers internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers.cache_utils import DynamicCache

_META = ("token_index", "rope_position", "valid", "is_visual", "protected", "attention_sum")


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
class CacheMeta:
    token_index: list[Tensor | None]
    rope_position: list[Tensor | None]
    valid: list[Tensor | None]
    is_visual: list[Tensor | None]
    protected: list[Tensor | None]
    attention_sum: list[Tensor | None]
    pruned: list[bool]
    # Per layer: no padding or filler entry stored. Kept on the host so that choosing the sdpa fast
    # path costs no device synchronisation.
    all_valid: list[bool]
    method_state: dict = field(default_factory=dict)
    decode_steps: int = 0  # decode forwards since the last prefill
    prefills: list[PrefillTrace] = field(default_factory=list)


class PrunableCache(DynamicCache):
    """A `DynamicCache` that can drop entries of one layer and knows what each entry is."""

    def __init__(self, config, num_layers: int) -> None:
        super().__init__(config=config)
        self.num_layers = num_layers
        self.seen_tokens = 0
        self.meta = CacheMeta(
            token_index=[None] * num_layers,
            rope_position=[None] * num_layers,
            valid=[None] * num_layers,
            is_visual=[None] * num_layers,
            protected=[None] * num_layers,
            attention_sum=[None] * num_layers,
            pruned=[False] * num_layers,
            all_valid=[True] * num_layers,
        )

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
        self._select_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._select_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: Tensor) -> None:
        super().batch_select_indices(indices)
        self._select_batch(lambda t: t[indices])

    def _select_batch(self, fn) -> None:
        for name in _META:
            column = getattr(self.meta, name)
            for layer, tensor in enumerate(column):
                if tensor is not None:
                    column[layer] = fn(tensor)

    # ---- bookkeeping used by the engine ------------------------------------------------------

    def stored_length(self, layer: int) -> int:
        tensor = self.meta.token_index[layer]
        return 0 if tensor is None else tensor.shape[1]

    def record(self, layer: int, *, all_valid: bool, **entries: Tensor) -> None:
        """Append metadata for the entries layer `layer` is about to store (same order as its keys).
        `all_valid`: whether every new entry is a real token (no padding, no filler)."""
        self.meta.all_valid[layer] = self.meta.all_valid[layer] and all_valid
        for name in _META:
            column = getattr(self.meta, name)
            new = entries[name]
            column[layer] = new if column[layer] is None else torch.cat([column[layer], new], dim=1)

    def keep_entries(self, layer: int, keep: Tensor, filler: Tensor) -> None:
        """Keep only entries `keep` (B, n) of `layer`, in that order; every other entry is forgotten.

        `filler` (B, n) flags repeated entries that only pad a sample's row to the batch's length.
        """
        cache_layer = self.layers[layer]
        index = keep.to(cache_layer.keys.device)
        kv_index = index[:, None, :, None].expand(-1, cache_layer.keys.shape[1], -1, cache_layer.keys.shape[3])
        cache_layer.keys = cache_layer.keys.gather(2, kv_index)  # (B, H_kv, n, D)
        cache_layer.values = cache_layer.values.gather(2, kv_index)
        for name in _META:
            column = getattr(self.meta, name)
            column[layer] = column[layer].gather(1, index.to(column[layer].device))
        for name in ("valid", "is_visual", "protected"):
            column = getattr(self.meta, name)
            column[layer] = column[layer] & ~filler.to(column[layer].device)
        self.meta.pruned[layer] = True
        self.meta.all_valid[layer] = self.meta.all_valid[layer] and not bool(filler.any())

    def lengths(self) -> list[int]:
        """Stored entries per layer (the same for every sample of a batch; filler entries count)."""
        return [self.stored_length(layer) for layer in range(self.num_layers)]

    def valid_lengths(self) -> list[list[int]]:
        """Real (non-padding, non-filler) entries per sample and layer: [sample][layer]."""
        columns = [self.meta.valid[layer] for layer in range(self.num_layers)]
        batch = next((c.shape[0] for c in columns if c is not None), 0)
        return [[0 if c is None else int(c[b].sum()) for c in columns] for b in range(batch)]

    def visual_lengths(self) -> list[list[int]]:
        """Cached visual entries per sample and layer: [sample][layer]."""
        out = []
        for layer in range(self.num_layers):
            valid, visual = self.meta.valid[layer], self.meta.is_visual[layer]
            out.append(None if valid is None else (valid & visual).sum(1).tolist())
        batch = next((len(c) for c in out if c is not None), 0)
        return [[0 if c is None else c[b] for c in out] for b in range(batch)]

    def nbytes(self) -> int:
        """Bytes held by the key and value tensors, measured from the tensors themselves."""
        total = 0
        for layer in self.layers:
            for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if tensor is not None:
                    total += tensor.numel() * tensor.element_size()
        return total

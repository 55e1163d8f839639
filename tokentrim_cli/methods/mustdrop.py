"""MustDrop (Liu et al., arXiv 2411.10803; methods.md §3): three stages over a visual token's life.

1. Vision encoder: after vision layer 0, each 3x3 window of patches whose mean pairwise cosine
   similarity is >= 0.8 is merged into its last token (size-weighted average); the remaining vision
   layers run on fewer tokens. The key set is the top 8% of the post-merge patches by the CLS token's
   attention (head mean) in the layer that reads the features; later stages never drop it.
2. Prefill: after layers 2, 6, 10 and 14, the text tokens after the image score the visual tokens;
   a token is dropped only if both its summed attention is below `global_threshold` of the total
   and its largest attention is below `individual_threshold` (the dual-attention filter).
3. Decode, the output-aware cache policy: when prefill ends, every layer from the first filter layer
   on keeps only the visual entries that survived the last filter.

Differences from the reference code, each deliberate:
- by default merged tokens stay at their window's raster slot and every token keeps its RoPE
  position; the reference moves merged tokens to the front of the image span and renumbers positions.
  In the tower that changes nothing (CLIP adds no position after its embeddings), but the decoder
  then sees another order and other positions: `merged_first = true` with `position_policy =
  "compact"` is the reference's layout (the `mustdrop-faithful` profile);
- every image merges its own mergeable windows (the reference merges the batch minimum), and
  per-sample counts in a batch are padded with masked filler entries (never cut to the minimum);
- decode positions are consistent per layer under both position policies (methods.md §3.2 C);
- vision towers without a CLS token (SigLIP) take the key set from the mean attention each patch
  receives from all patches, with a warning: the paper's CLS criterion does not exist there.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import UnsupportedError
from .base import CacheState, Knob, LiveState, Method, MethodConfig, ParamError, QuerySpec, VisionInputs, VisionOutput, check_range

# The threshold presets of the reference scripts for LLaVA-1.5-7B (methods.md §3.3), by the
# layer-averaged budget they were tuned to reach.
THRESHOLD_PRESETS = {192: (0.001, 0.001), 128: (0.0012, 0.001), 64: (0.011, 0.01)}
MAX_MERGE_WINDOW = 8
MAX_VISION_LAYER = 47


@dataclass(frozen=True, kw_only=True)
class MustDropConfig(MethodConfig):
    """Neutral: merge_threshold > 1 (no window is that similar), key_fraction=1 (every token is a
    key token) and both thresholds 0."""

    merge_window: int = 3
    merge_threshold: float = 0.8
    merge_after_vision_layer: int = 0
    key_fraction: float = 0.08
    filter_layers: tuple[int, ...] = (2, 6, 10, 14)
    global_threshold: float = 0.001
    individual_threshold: float = 0.001
    output_aware_cache: bool = True
    merged_first: bool = False  # the reference's order: merged tokens at the front of the image span

    def __post_init__(self) -> None:
        # Beyond these a setting cannot mean anything on any LLaVA-family tower (a window wider than
        # the patch grid merges nothing; no tower has that many layers): refused, not ignored.
        check_range("merge_window", self.merge_window, 2, MAX_MERGE_WINDOW)
        check_range("merge_after_vision_layer", self.merge_after_vision_layer, 0, MAX_VISION_LAYER)
        check_range("merge_threshold", self.merge_threshold, -1.0, 2.0)
        check_range("key_fraction", self.key_fraction, 0.0, 1.0)
        check_range("global_threshold", self.global_threshold, 0.0, 1.0)
        check_range("individual_threshold", self.individual_threshold, 0.0, 1.0)
        if list(self.filter_layers) != sorted(set(self.filter_layers)) or any(l < 0 for l in self.filter_layers):
            raise ParamError("filter_layers", f"'filter_layers' must be ascending, distinct and >= 0, got {list(self.filter_layers)}")

    @classmethod
    def neutral(cls, num_layers: int) -> MustDropConfig:
        layers = tuple(layer for layer in cls().filter_layers if layer < num_layers - 1)
        return cls(merge_threshold=2.0, key_fraction=1.0, global_threshold=0.0, individual_threshold=0.0, filter_layers=layers)

    @classmethod
    def example(cls, num_layers: int) -> MustDropConfig:
        layers = tuple(sorted({min(max(0, round(layer * num_layers / 32)), num_layers - 2) for layer in cls().filter_layers}))
        return cls(filter_layers=layers, global_threshold=0.011, individual_threshold=0.01)

    def check_model(self, num_layers: int) -> None:
        if self.filter_layers and self.filter_layers[-1] >= num_layers - 1:
            raise ParamError(
                "filter_layers",
                f"'filter_layers' must lie in [0, {num_layers - 2}] for this model, got {list(self.filter_layers)}",
            )


# ---- pure helpers --------------------------------------------------------------------------------


def window_merge(tokens: Tensor, *, side: int, window: int, threshold: float) -> tuple[Tensor, Tensor]:
    """Merge similar windows of one image's patch grid. tokens: (side*side, D) in raster order.

    Returns (tokens, keep): in every full `window` x `window` tile whose mean pairwise cosine
    similarity (self-pairs excluded) is >= threshold, the tile's last token (raster order) becomes
    the size-weighted average of the tile and the others get keep=False.
    """
    out, keep = tokens.clone(), torch.ones(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    tiles = side // window
    if tiles == 0:
        return out, keep
    grid = torch.arange(side * side, device=tokens.device).view(side, side)[: tiles * window, : tiles * window]
    members = grid.view(tiles, window, tiles, window).permute(0, 2, 1, 3).reshape(tiles * tiles, window * window)
    unit = torch.nn.functional.normalize(tokens.float()[members], dim=-1)  # (tiles^2, w^2, D)
    similarity = unit @ unit.transpose(1, 2)  # (tiles^2, w^2, w^2)
    pairs = window * window * (window * window - 1)
    mean_similarity = (similarity.sum((1, 2)) - similarity.diagonal(dim1=1, dim2=2).sum(1)) / pairs
    for tile in (mean_similarity >= threshold).nonzero().squeeze(1).tolist():
        index = members[tile]
        out[index[-1]] = tokens[index].mean(0)  # every size is 1 when merging happens once
        keep[index[:-1]] = False
    return out, keep


def key_set(scores: Tensor, fraction: float) -> Tensor:
    """Positions of the top ceil(fraction * n) scores, ascending; ties go to the lower position."""
    n_keep = math.ceil(fraction * scores.numel() - 1e-9)
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:n_keep].sort().values


def dual_threshold_drop(attention: Tensor, protected: Tensor, *, global_threshold: float, individual_threshold: float) -> Tensor:
    """Which visual tokens the dual-attention filter drops. attention: (R, n) from R text queries.

    Dropped iff summed attention < global_threshold x the total AND largest attention <
    individual_threshold, and the token is not protected (the key set).
    """
    if attention.shape[0] == 0:
        return torch.zeros_like(protected)
    received = attention.sum(0)
    strongest = attention.max(0).values
    return (received < global_threshold * received.sum()) & (strongest < individual_threshold) & ~protected


# ---- the method ----------------------------------------------------------------------------------


class MustDrop(Method):
    name = "mustdrop"
    config_cls = MustDropConfig
    description = "vision-encoder merge + key set, dual-attention filter in prefill, output-aware KV cache"
    needs_attention = True
    reads_question = True
    calibration = Knob(
        "preset", tuple(THRESHOLD_PRESETS),
        settings={k: {"global_threshold": g, "individual_threshold": i} for k, (g, i) in THRESHOLD_PRESETS.items()},
    )  # fmt: skip

    def on_vision(self, vision: VisionInputs) -> VisionOutput:
        runner = vision.runner
        if self.config.merge_after_vision_layer >= runner.feature_index:
            raise UnsupportedError(
                f"merge_after_vision_layer = {self.config.merge_after_vision_layer}: the features come from after "
                f"vision layer {runner.feature_index - 1}, so nothing would ever merge",
                hint=f"use a layer in [0, {runner.feature_index - 1}] for this model",
            )
        if not runner.has_cls:
            warnings.warn(
                "this vision tower has no CLS token: MustDrop's key set uses the mean attention each patch "
                "receives from all patches instead of the CLS attention",
                stacklevel=2,
            )
        cls = runner.cls_tokens
        hidden = runner.embed()
        batch, patches = hidden.shape[0], hidden.shape[1] - cls
        slots = torch.arange(patches, device=hidden.device).expand(batch, -1)  # (B, P) slot of each token
        alive = torch.ones(batch, hidden.shape[1], dtype=torch.bool, device=hidden.device)
        merged = torch.zeros(batch, patches, dtype=torch.bool, device=hidden.device)  # a merged window's token
        for index in range(runner.feature_index):
            hidden = runner.run_layer(index, hidden, key_valid=alive)
            if index == self.config.merge_after_vision_layer and self.config.merge_threshold <= 1.0:
                hidden, slots, alive, merged = self._merge(hidden, cls, patches)
        # The key set comes from the layer that reads the features (layer 23 of 24 for LLaVA-1.5).
        scoring_layer = min(runner.feature_index, runner.num_layers - 1)
        queries = "cls" if runner.has_cls else "all"
        probs = runner.attention(scoring_layer, hidden, queries=queries, key_valid=alive).mean(1)  # (B, Q, T)
        attention = _received(probs, alive, runner.has_cls)[:, cls:]  # (B, T')
        projected = runner.project(runner.patch_features(hidden))  # (B, T', D)
        return self._to_slots(projected, slots, alive[:, cls:], attention, patches, merged)

    def _merge(self, hidden: Tensor, cls: int, patches: int) -> tuple[Tensor, Tensor, Tensor]:
        side = math.isqrt(patches)
        window = self.config.merge_window
        rows, slot_rows, merged_rows = [], [], []
        for image in hidden:
            tokens, keep = window_merge(image[cls:], side=side, window=window, threshold=self.config.merge_threshold)
            rows.append(torch.cat([image[:cls], tokens[keep]]))
            slot_rows.append(keep.nonzero().squeeze(1))
            merged_rows.append(_merged_destinations(keep, side, window)[keep])
        longest = max(r.shape[0] for r in rows)
        packed = hidden.new_zeros(len(rows), longest, hidden.shape[-1])
        slots = torch.zeros(len(rows), longest - cls, dtype=torch.long, device=hidden.device)
        alive = torch.zeros(len(rows), longest, dtype=torch.bool, device=hidden.device)
        merged = torch.zeros(len(rows), longest - cls, dtype=torch.bool, device=hidden.device)
        for b, (row, slot_row, merged_row) in enumerate(zip(rows, slot_rows, merged_rows)):
            packed[b, : row.shape[0]] = row
            slots[b, : slot_row.numel()] = slot_row
            alive[b, : row.shape[0]] = True
            merged[b, : merged_row.numel()] = merged_row
        return packed, slots, alive, merged

    def _to_slots(self, projected, slots, alive, attention, patches, merged) -> VisionOutput:
        """Per image: features, kept slots and the key set over the image's placeholders. Tokens sit
        at their own slot (a merged window's token at its last patch's), or with `merged_first`
        packed into the first placeholders, merged tokens first, as the reference orders them."""
        features, keep, protected = [], [], []
        for b in range(projected.shape[0]):
            real = alive[b].nonzero().squeeze(1)
            image_slots = slots[b, real]
            if self.config.merged_first:
                order = torch.sort((~merged[b, real]).long(), stable=True).indices  # merged first, then raster
                real = real[order]
                image_slots = torch.arange(real.numel(), device=real.device)
            full = projected.new_zeros(patches, projected.shape[-1])
            full[image_slots] = projected[b, real]
            kept = torch.zeros(patches, dtype=torch.bool, device=projected.device)
            kept[image_slots] = True
            keys = torch.zeros_like(kept)
            keys[image_slots[key_set(attention[b, real], self.config.key_fraction)]] = True
            features.append(full)
            keep.append(kept)
            protected.append(keys)
        return VisionOutput(features=features, keep=keep, protected=protected)

    # ---- prefill: the dual-attention filter ------------------------------------------------------

    def score_request(self, layer: int) -> QuerySpec | None:
        return QuerySpec.TEXT_AFTER_IMAGE if layer in self.config.filter_layers else None

    def after_layer(self, state: LiveState) -> list[Tensor] | None:
        if state.layer not in self.config.filter_layers:
            return None
        keep = []
        for b in range(state.batch_size):
            candidates = (state.is_visual[b] & state.valid[b]).nonzero().squeeze(1)
            rows = state.attention[b][state.query_valid[b]][:, candidates]  # (R, n)
            drop = dual_threshold_drop(
                rows, state.protected[b, candidates],
                global_threshold=self.config.global_threshold, individual_threshold=self.config.individual_threshold,
            )  # fmt: skip
            survivors = torch.ones_like(state.valid[b]) & state.valid[b]
            survivors[candidates[drop]] = False
            keep.append(survivors.nonzero().squeeze(1))
        return keep

    # ---- decode: the output-aware cache policy ----------------------------------------------------

    def on_prefill_end(self, layers: list[CacheState]) -> dict[int, list[Tensor]] | None:
        if not self.config.output_aware_cache or not self.config.filter_layers:
            return None
        final = layers[-1]  # the last layer saw only the tokens that survived every filter
        edits = {}
        for state in layers[self.config.filter_layers[0] :]:
            keep = []
            for b in range(state.batch_size):
                survivors = final.token_index[b][final.is_visual[b] & final.valid[b]]
                stale = state.is_visual[b] & ~torch.isin(state.token_index[b], survivors)
                keep.append((~stale).nonzero().squeeze(1))
            edits[state.layer] = keep
        return edits


def _merged_destinations(keep: Tensor, side: int, window: int) -> Tensor:
    """(side*side,) True at the token a merged window was merged into (its last patch)."""
    merged = torch.zeros_like(keep)
    tiles = side // window
    for row in range(tiles):
        for column in range(tiles):
            first = row * window * side + column * window
            last = (row * window + window - 1) * side + column * window + window - 1
            if not bool(keep[first]):
                merged[last] = True
    return merged


def _received(probs: Tensor, alive: Tensor, has_cls: bool) -> Tensor:
    """(B, T) attention each token receives: the CLS row's, or (no CLS) the mean over real queries."""
    if has_cls:
        return probs[:, 0]
    weights = alive.float() / alive.float().sum(1, keepdim=True)
    return (probs * weights[:, :, None]).sum(1)

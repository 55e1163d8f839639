"""The vision tower, run for vision-stage methods, so that no method touches a tower's internals.

`VisionRunner` runs a LLaVA vision tower (CLIP, SigLIP or DINOv2) layer by layer and gives a
method what it needs: the hidden states after any layer, one layer's attention probabilities for
the CLS query (or every query, for towers without CLS), that layer's keys, the patch features the
language model would get (CLS dropped per the select strategy) and the projector. Attention rows
are recomputed from the layer's input with the layer's own norm and projections, in fp32, for the
one layer asked about: the tower keeps running with sdpa everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .masks import key_padding_mask


@dataclass(frozen=True)
class _TowerKind:
    layers: str  # attribute of the encoder holding the layers
    norm: str  # the layer's norm before attention
    attention: str  # the layer's attention module
    pre_norm: str | None  # a norm between embeddings and the first layer (CLIP's pre_layrnorm)
    has_cls: bool


_KINDS = {
    "clip_vision_model": _TowerKind("layers", "layer_norm1", "self_attn", "pre_layrnorm", True),
    "siglip_vision_model": _TowerKind("layers", "layer_norm1", "self_attn", None, False),
    "dinov2": _TowerKind("layer", "norm1", "attention", None, True),
}


def tower_kind(tower) -> _TowerKind:
    kind = _KINDS.get(getattr(tower.config, "model_type", None))
    if kind is None:
        from ..errors import UnsupportedError

        raise UnsupportedError(
            f"vision tower '{tower.config.model_type}' is not supported by vision-stage methods",
            hint=f"supported towers: {', '.join(_KINDS)}",
        )
    return kind


class VisionRunner:
    """One batch of pictures through a LLaVA model's vision tower, on demand."""

    def __init__(self, llava_model, pixel_values: Tensor, *, feature_layer, select_strategy: str) -> None:
        from ..errors import UnsupportedError

        self.tower = llava_model.vision_tower
        self.projector = llava_model.multi_modal_projector
        self.kind = tower_kind(self.tower)
        self.pixel_values = pixel_values.to(self.tower.dtype)
        self.layers = getattr(self.tower.encoder, self.kind.layers)
        if isinstance(feature_layer, (list, tuple)):
            raise UnsupportedError(f"vision-stage methods need one feature layer, got {list(feature_layer)}")
        if (select_strategy == "default") != self.kind.has_cls:
            raise UnsupportedError(
                f"the select strategy '{select_strategy}' does not match the tower "
                f"({'has' if self.kind.has_cls else 'has no'} CLS token)"
            )
        # hidden_states[i] is the output of i layers (0: the embeddings); -2 is LLaVA's penultimate.
        self.feature_index = feature_layer if feature_layer >= 0 else len(self.layers) + 1 + feature_layer
        self.select_strategy = select_strategy

    @property
    def has_cls(self) -> bool:
        return self.kind.has_cls

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def cls_tokens(self) -> int:
        return 1 if self.kind.has_cls else 0

    def embed(self) -> Tensor:
        """(B, T, D): the input of layer 0 (embeddings, and CLIP's pre-layernorm)."""
        hidden = self.tower.embeddings(self.pixel_values)
        if self.kind.pre_norm:
            hidden = getattr(self.tower, self.kind.pre_norm)(hidden)
        return hidden

    def run_layer(self, index: int, hidden: Tensor, key_valid: Tensor | None = None) -> Tensor:
        """Layer `index` on `hidden`; invalid keys (`key_valid` False: padding after a merge) hidden."""
        mask = None if key_valid is None else key_padding_mask(key_valid, hidden.dtype)
        return self.layers[index](hidden, mask)

    def hidden_states(self, upto: int | None = None) -> list[Tensor]:
        """[input of layer 0, output of layer 0, ...] up to the feature layer (or `upto` layers)."""
        count = self.feature_index if upto is None else upto
        states = [self.embed()]
        for index in range(count):
            states.append(self.run_layer(index, states[-1]))
        return states

    def _projections(self, index: int, hidden: Tensor) -> tuple[Tensor, Tensor, float]:
        layer = self.layers[index]
        attention = getattr(layer, self.kind.attention)
        normed = getattr(layer, self.kind.norm)(hidden)
        head_dim = attention.head_dim
        scale = getattr(attention, "scale", None) or getattr(attention, "scaling", None) or 1 / math.sqrt(head_dim)
        batch, tokens, _ = normed.shape
        q = attention.q_proj(normed).view(batch, tokens, -1, head_dim).transpose(1, 2).float()
        k = attention.k_proj(normed).view(batch, tokens, -1, head_dim).transpose(1, 2).float()
        return q, k, float(scale)

    def keys(self, index: int, hidden: Tensor) -> Tensor:
        """(B, H, T, head_dim) fp32 keys of layer `index` for its input `hidden`."""
        return self._projections(index, hidden)[1]

    def attention(self, index: int, hidden: Tensor, *, queries: str = "cls", key_valid: Tensor | None = None) -> Tensor:
        """(B, H, Q, T) fp32 attention probabilities of layer `index` for its input `hidden`.

        queries="cls": the CLS row only (Q = 1); "all": every token's row. Invalid keys get zero."""
        q, k, scale = self._projections(index, hidden)
        if queries == "cls":
            q = q[:, :, :1]
        logits = (q @ k.transpose(2, 3)) * scale
        if key_valid is not None:
            logits = logits.masked_fill(~key_valid[:, None, None, :], float("-inf"))
        return torch.softmax(logits, dim=-1)

    def patch_features(self, hidden: Tensor) -> Tensor:
        """The tokens the language model gets from a feature-layer hidden state (CLS dropped by the
        'default' select strategy)."""
        return hidden[:, 1:] if self.select_strategy == "default" else hidden

    def project(self, features: Tensor) -> Tensor:
        return self.projector(features)


def patch_grid_side(patches: int) -> int:
    side = math.isqrt(patches)
    if side * side != patches:
        from ..errors import UnsupportedError

        raise UnsupportedError(f"a vision-stage method needs a square patch grid, got {patches} patches")
    return side

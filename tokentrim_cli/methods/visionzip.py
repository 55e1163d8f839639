"""VisionZip (Yang et al., CVPR 2025; methods.md §4.4): dominant and contextual tokens from the tower.

In the vision tower, in the layer that produces LLaVA's features (layer -2: its output is the
feature layer's hidden state):
1. dominant tokens: the CLS token and the patches the CLS query attends to most (attention summed
   over heads); `dominant` counts the CLS token, as the official code does (54 = CLS + 53 patches);
2. contextual tokens: the other patches, by cosine similarity of that layer's keys (mean over
   heads), are assigned to `contextual` targets taken at a uniform stride among them; each target
   becomes its own hidden state plus the mean of the hidden states assigned to it.
The language model receives [CLS, dominant patches in raster order, contextual tokens] through the
projector, contiguously at the start of the image's span (the official code's shortened sequence):
the image occupies its first dominant+contextual placeholders, the rest are dropped before the first
decoder layer. The question is never read: multi-turn safe, and the decoder keeps SDPA/FlashAttention.

The CLS row is recomputed for that one layer from its input (engine.vision.VisionRunner), not by
running the tower with eager attention. A tower without CLS (SigLIP) ranks patches by the attention
they receive from every query (summed over heads, averaged over queries), and `dominant` then counts
patches only. LLaVA-1.5-style models only: LLaVA-NeXT and OneVision pack crops and newline tokens
after the tower (the engine refuses them for vision-stage methods).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import REFERENCE_TOKENS, Knob, Method, MethodConfig, ParamError, VisionInputs, VisionOutput, keep_top, scaled_budget

# The official LLaVA-1.5 settings, by total tokens: dominant (CLS included) + contextual.
PRESETS = {192: (162, 30), 128: (108, 20), 64: (54, 10)}


@dataclass(frozen=True, kw_only=True)
class VisionZipConfig(MethodConfig):
    """`dominant` (the CLS token included when `keep_cls`) and `contextual`: tokens per 576 patches.
    Neutral: every patch dominant, no contextual, no CLS (the stock features, in raster order)."""

    dominant: int = 54
    contextual: int = 10
    keep_cls: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.dominant <= REFERENCE_TOKENS:
            raise ParamError("dominant", f"'dominant' must be in [1, {REFERENCE_TOKENS}], got {self.dominant}")
        if not 0 <= self.contextual <= REFERENCE_TOKENS - self.dominant:
            raise ParamError("contextual", f"'contextual' must be in [0, {REFERENCE_TOKENS} - dominant], got {self.contextual}")

    @classmethod
    def neutral(cls, num_layers: int) -> VisionZipConfig:
        return cls(dominant=REFERENCE_TOKENS, contextual=0, keep_cls=False)


def contextual_merge(hidden: Tensor, keys: Tensor, count: int) -> Tensor:
    """(count, D) contextual tokens from the remaining patches' hidden states (n, D) and keys (n, d):
    targets at a uniform stride; every other patch joins its most similar target (cosine of keys);
    a target becomes its hidden state plus the mean of its members' (targets with none stay as they are)."""
    n = hidden.shape[0]
    if count == 0 or n == 0:
        return hidden[:0]
    count = min(count, n)
    step = max(1, n // count)
    targets = torch.arange(0, n, step, device=hidden.device)[:count]
    is_target = torch.zeros(n, dtype=torch.bool, device=hidden.device)
    is_target[targets] = True
    unit = torch.nn.functional.normalize(keys.float(), dim=-1)
    members = (~is_target).nonzero().squeeze(1)
    assignment = (unit[members] @ unit[targets].T).argmax(dim=1)  # (n - count,) target of each member
    sums = torch.zeros(count, hidden.shape[1], dtype=torch.float32, device=hidden.device)
    sums.index_add_(0, assignment, hidden[members].float())
    counts = torch.bincount(assignment, minlength=count).clamp(min=1).to(sums.dtype)[:, None]
    return (hidden[targets].float() + sums / counts).to(hidden.dtype)


class VisionZip(Method):
    name = "visionzip"
    config_cls = VisionZipConfig
    description = "in the vision tower, keep the CLS-attended dominant tokens and merge the rest into a few contextual ones"
    needs_attention = True
    calibration = Knob("preset", tuple(PRESETS), settings={k: {"dominant": d, "contextual": c} for k, (d, c) in PRESETS.items()})

    def on_vision(self, vision: VisionInputs) -> VisionOutput:
        runner = vision.runner
        layer = runner.feature_index - 1  # the layer whose output is the feature layer
        states = runner.hidden_states()
        layer_input, features = states[layer], states[layer + 1]
        cls = runner.cls_tokens
        keep_cls = self.config.keep_cls and cls == 1
        if cls:
            received = runner.attention(layer, layer_input, queries="cls").sum(1)[:, 0, cls:]  # (B, P)
        else:
            received = runner.attention(layer, layer_input, queries="all").sum(1).mean(1)  # (B, P)
        keys = runner.keys(layer, layer_input).mean(1)  # (B, T, head_dim)
        patches = features.shape[1] - cls
        outputs, keeps, outputs_slots = [], [], []
        for b in range(features.shape[0]):
            dominant = scaled_budget(self.config.dominant, patches) - int(keep_cls)
            contextual = min(round(self.config.contextual * patches / REFERENCE_TOKENS), patches - dominant - int(keep_cls))
            chosen = keep_top(received[b], dominant) + cls  # token indices, ascending
            rest = torch.ones(features.shape[1], dtype=torch.bool, device=features.device)
            rest[:cls] = False
            rest[chosen] = False
            rest_index = rest.nonzero().squeeze(1)
            tokens = [features[b, :1]] if keep_cls else []
            tokens += [features[b, chosen], contextual_merge(features[b, rest_index], keys[b, rest_index], contextual)]
            outputs.append(torch.cat(tokens))  # (n, D_vision): CLS, dominant, contextual
        # One projector call for the batch when every image kept as many tokens (the neutral setting
        # then reproduces the stock features bit for bit).
        if len({o.shape[0] for o in outputs}) == 1:
            projected = list(runner.project(torch.stack(outputs)))
        else:
            projected = [runner.project(o) for o in outputs]
        for selected in projected:
            slots = selected.new_zeros(patches, selected.shape[-1])
            slots[: selected.shape[0]] = selected  # the image's first placeholders, in this order
            keep = torch.zeros(patches, dtype=torch.bool, device=selected.device)
            keep[: selected.shape[0]] = True
            keeps.append(keep)
            outputs_slots.append(slots)
        return VisionOutput(features=outputs_slots, keep=keeps)

"""VTW calibration's shared prefix: one stock prefill per sample, then the layers after K on the text alone.

Every candidate K shares the layers before it, so `capture_layer_inputs` records what a stock
prefill fed each decoder layer, and `logits_after_withdrawal` reruns only layers K..L-1 on the
text tokens (VTW, `keep` positions). tests/test_calibration.py checks the KL curve equals the naive
loop's (one full trimmed prefill per candidate).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .family import language_model_of, visual_token_ids
from .masks import additive


@dataclass
class LayerInputs:
    """What a stock prefill of one sample fed each decoder layer, for VTW's shared-prefix calibration."""

    hidden: list[Tensor]  # per layer: (1, T, D), the layer's input
    position_ids: Tensor  # (1, T)
    is_visual: Tensor  # (T,)
    logits: Tensor  # (V,) fp32: the next-token logits at the last prompt position


def capture_layer_inputs(model, inputs: dict) -> LayerInputs:
    """Run a stock prefill (batch 1, no padding) and keep every decoder layer's input."""
    lm = language_model_of(model)
    captured: list[Tensor] = []
    handles = [
        layer.register_forward_pre_hook(lambda module, args, kwargs: captured.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
        for layer in lm.layers
    ]
    try:
        with torch.inference_mode():
            out = model(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    ids = inputs["input_ids"]
    if ids.shape[0] != 1 or ("attention_mask" in inputs and not bool(inputs["attention_mask"].all())):
        raise ValueError("capture_layer_inputs takes one unpadded sample")
    return LayerInputs(
        hidden=captured,
        position_ids=torch.arange(ids.shape[1], device=ids.device)[None],
        is_visual=torch.isin(ids[0], torch.tensor(visual_token_ids(model.config), device=ids.device)),
        logits=out.logits[0, -1].float(),
    )


def logits_after_withdrawal(model, captured: LayerInputs, layer: int) -> Tensor:
    """(V,) fp32 last-position logits when every visual token is withdrawn before `layer`.

    Layers before `layer` are the captured stock prefill (shared by every candidate); layers from
    `layer` on run on the text tokens only, at their original positions (VTW, `keep` policy).
    """
    lm = language_model_of(model)
    keep = (~captured.is_visual).nonzero().squeeze(1)
    hidden = captured.hidden[layer][:, keep]  # (1, n_text, D)
    positions = captured.position_ids[:, keep]
    cos, sin = lm.rotary_emb(hidden, position_ids=positions)
    mask = None  # sdpa: is_causal over the text tokens
    if lm.config._attn_implementation == "eager":
        n = hidden.shape[1]
        mask = additive(torch.ones(1, 1, n, n, dtype=torch.bool, device=hidden.device).tril(), hidden.dtype)
    with torch.inference_mode():
        for decoder_layer in lm.layers[layer:]:
            hidden = decoder_layer(
                hidden, attention_mask=mask, position_embeddings=(cos, sin), position_ids=positions,
                past_key_values=None, use_cache=False,
            )  # fmt: skip
        return model.lm_head(lm.norm(hidden[:, -1:]))[0, -1].float()

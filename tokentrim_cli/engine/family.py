"""Where a LLaVA-family model keeps its parts: the one place the engine learns a model's layout.

LLaVA, LLaVA-NeXT and LLaVA-OneVision (transformers >= 4.56) share it: `model.model.language_model`
is a decoder with `layers`, `rotary_emb` (1-D RoPE over `position_ids`) and `norm`;
`model.model.vision_tower` and `model.model.multi_modal_projector`; image placeholders are
`config.image_token_id` (and `video_token_id`). A family with another layout or with 3-D RoPE
positions (Qwen2-VL's time/height/width) plugs in here and in positions.py: the engine asks only
for the language model, its rotary embedding of given positions, and the visual token ids.
"""

from __future__ import annotations


def language_model_of(model):
    """The decoder whose forward the engine owns."""
    return model.model.language_model


def decoder_depth(model) -> int:
    return len(language_model_of(model).layers)


def visual_token_ids(config) -> list[int]:
    ids = [getattr(config, "image_token_id", None), getattr(config, "video_token_id", None)]
    return [i for i in ids if i is not None]

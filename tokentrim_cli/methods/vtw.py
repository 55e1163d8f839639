"""VTW, Visual Tokens Withdrawal (Lin et al., AAAI 2025; methods.md §1).

Every visual token is withdrawn before decoder layer K: layers 0..K-1 see the image, layers K..L-1
see only text, so their KV caches hold no visual entries. Nothing is ranked, so no attention is needed.
Kept text tokens keep their original RoPE positions (the reference's default `pe_type="keep"`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import Knob, LiveState, Method, MethodConfig, ParamError


@dataclass(frozen=True, kw_only=True)
class VTWConfig(MethodConfig):
    """`layer` is K in the paper: the number of decoder layers that still see the visual tokens.

    K=16 is the reference's default for LLaVA-1.5-7B (methods.md §1.4); K equal to the number of
    layers is the neutral setting. Find K for your model with `tokentrim calibrate --method vtw`.
    """

    layer: int = 16

    def __post_init__(self) -> None:
        if self.layer < 1:
            raise ParamError("layer", f"'layer' must be in [1, number of decoder layers], got {self.layer}")

    @classmethod
    def neutral(cls, num_layers: int) -> VTWConfig:
        return cls(layer=num_layers)

    @classmethod
    def example(cls, num_layers: int) -> VTWConfig:
        return cls(layer=max(1, num_layers // 2))

    def check_model(self, num_layers: int) -> None:
        if self.layer > num_layers:
            raise ParamError("layer", f"'layer' must be in [1, {num_layers}] for this model, got {self.layer}")


class VTW(Method):
    name = "vtw"
    config_cls = VTWConfig
    description = "withdraw every visual token before layer K"
    calibration = Knob("layer", (), search="withdrawal_layer")

    def before_layer(self, state: LiveState) -> list[Tensor] | None:
        if state.layer != self.config.layer:
            return None
        keep_mask = ~state.is_visual & state.valid  # (B, N); padding and filler go too
        return [row.nonzero().squeeze(1) for row in keep_mask]

"""ST3 (Zhuang et al., AAAI 2025; methods.md §2): PVTP in prefill, VTA during decoding.

ST3 released no code, so both halves are reconstructions (methods.md §2.2, tagged [recon]):

- PVTP, Progressive Visual Token Pruning: before each pruning layer l in {K0, K0+S, K0+2S, ...},
  score the remaining visual tokens by the attention the last prompt token pays them in layer l-1
  (head mean, fp32) and keep round(n0 * (1-R)^k) of them after the k-th pruning layer (n0: the
  sample's visual tokens entering the language model). Text is never dropped; positions are kept.
  K0=2, S=4, R=0.25 give ~48% of the decoder's prefill FLOPs on LLaVA-1.5-7B, matching the
  published 4.27/8.82 TFLOPs; the paper's own (S, R) could not be checked.
- VTA, Visual Token Annealing: at decode step t, layer l keeps at most ceil(N_l * a(t)) visual KV
  entries (N_l: its visual entries when prefill ended), evicting those the current token attends
  to least (or, with `accumulate`, that received the least attention so far). Text and generated
  entries are never evicted; eviction is permanent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .fastv import RATIO_GRID
from .base import Knob, CacheState, DecodeStep, LiveState, Method, MethodConfig, ParamError, PerSample, QuerySpec, check_range, keep_top, round_half_up

Decay = Literal["none", "linear", "cosine", "exponential"]


@dataclass(frozen=True, kw_only=True)
class ST3Config(MethodConfig):
    """PVTP: `start_layer` is K0, `stride` is S, `prune_ratio` is R.
    VTA: `decay` is the annealing function a(t); `horizon` is T (linear, cosine); `gamma` is the
    exponential base; `floor` is a_min. Neutral: prune_ratio=0 and decay="none".

    `evict_interval`: VTA evicts every that many decode steps (a gather of the layer's whole cache
    is the cost, so it is amortised); `accumulate` ranks by the attention summed over all steps.

    VTA's default (linear to zero over T=112 steps, evicting every 8) is chosen so that a 128-token
    answer ends with under 30% of the baseline's KV cache on LLaVA-1.5-7B, the paper's headline;
    the paper's own attenuation choice is unknown (methods.md §6).
    """

    start_layer: int = 2
    stride: int = 4
    prune_ratio: float = 0.25
    decay: Decay = "linear"
    horizon: int = 112
    gamma: float = 0.97
    floor: float = 0.0
    evict_interval: int = 8
    accumulate: bool = False

    def __post_init__(self) -> None:
        if self.start_layer < 1:
            raise ParamError("start_layer", f"'start_layer' must be >= 1 (layer K0-1 is scored), got {self.start_layer}")
        if self.stride < 1:
            raise ParamError("stride", f"'stride' must be >= 1, got {self.stride}")
        if self.horizon < 1:
            raise ParamError("horizon", f"'horizon' must be >= 1 decode steps, got {self.horizon}")
        if self.evict_interval < 1:
            raise ParamError("evict_interval", f"'evict_interval' must be >= 1 decode steps, got {self.evict_interval}")
        check_range("prune_ratio", self.prune_ratio, 0.0, 1.0, high_open=True)
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_range("floor", self.floor, 0.0, 1.0)

    @classmethod
    def neutral(cls, num_layers: int) -> ST3Config:
        return cls(prune_ratio=0.0, decay="none")

    def check_model(self, num_layers: int) -> None:
        if self.start_layer >= num_layers:
            raise ParamError(
                "start_layer", f"'start_layer' must be in [1, {num_layers - 1}] for this model, got {self.start_layer}"
            )


def pruning_layers(config: ST3Config, num_layers: int) -> list[int]:
    """The layers before which PVTP prunes: K0, K0+S, K0+2S, ... below the number of layers."""
    return list(range(config.start_layer, num_layers, config.stride))


def pvtp_keep_count(initial_visual: int, stage: int, prune_ratio: float) -> int:
    """Visual tokens kept after the `stage`-th pruning layer (1-based), from the closed form."""
    return round_half_up(initial_visual * (1.0 - prune_ratio) ** stage)


def annealing_factor(step: int, config: ST3Config) -> float:
    """a(t): the share of a layer's visual KV entries allowed at decode step t (t >= 1)."""
    if config.decay == "none":
        return 1.0
    if config.decay == "linear":
        return max(config.floor, 1.0 - step / config.horizon)
    if config.decay == "cosine":
        progress = min(step, config.horizon) / config.horizon
        return config.floor + (1.0 - config.floor) * (1.0 + math.cos(math.pi * progress)) / 2.0
    return max(config.floor, config.gamma**step)


def vta_target(initial_visual: int, step: int, config: ST3Config) -> int:
    """Visual entries a layer that held `initial_visual` after prefill may hold at decode step `step`."""
    return math.ceil(initial_visual * annealing_factor(step, config) - 1e-9)


def keep_best_visual(scores: Tensor, is_visual: Tensor, n_keep: int) -> Tensor:
    """Keep indices for one sample (N,): everything that is not visual, plus the n_keep best-scored
    visual entries; ties go to the lower position."""
    visual = is_visual.nonzero().squeeze(1)
    kept_visual = visual[keep_top(scores[visual], min(n_keep, visual.numel()))]
    return torch.cat([(~is_visual).nonzero().squeeze(1), kept_visual]).sort().values


class ST3(Method):
    name = "st3"
    config_cls = ST3Config
    description = "progressive visual token pruning in prefill + visual token annealing of the KV cache"
    needs_attention = True
    reads_question = True
    calibration = Knob("prune_ratio", RATIO_GRID)

    # ---- PVTP (prefill) --------------------------------------------------------------------------

    def before_layer(self, state: LiveState) -> list[Tensor] | None:
        if state.layer == 0:
            state.memory["st3_initial_visual"] = PerSample((state.is_visual & state.valid).sum(1).tolist())
        return None

    def _stage(self, layer: int, num_layers: int) -> int | None:
        """1-based PVTP stage whose scores come from `layer` (the layer before a pruning layer)."""
        layers = pruning_layers(self.config, num_layers)
        return layers.index(layer + 1) + 1 if layer + 1 in layers else None

    def score_request(self, layer: int) -> QuerySpec | None:
        # Layer l-1 is scored for a pruning layer l = K0 + kS (a score after the last layer goes unused).
        next_layer = layer + 1
        on_schedule = next_layer >= self.config.start_layer and (next_layer - self.config.start_layer) % self.config.stride == 0
        return QuerySpec.LAST_TOKEN if on_schedule and self.config.prune_ratio > 0 else None

    def after_layer(self, state: LiveState) -> list[Tensor] | None:
        if self.config.prune_ratio == 0.0:
            return None
        stage = self._stage(state.layer, state.num_layers)
        if stage is None:
            return None
        initial = state.memory["st3_initial_visual"]
        keep = []
        for b in range(state.batch_size):
            target = pvtp_keep_count(initial[b], stage, self.config.prune_ratio)
            real = state.valid[b]
            kept = keep_best_visual(state.attention[b, 0], state.is_visual[b] & real, target)
            keep.append(kept[real[kept]])  # padding and filler go
        return keep

    # ---- VTA (decode) ----------------------------------------------------------------------------
    # Counts live in `memory` as Python ints ([sample][layer], PerSample so that beam search reorders
    # them with the cache), updated by every eviction this method makes, so that deciding whether a
    # layer needs work costs no device synchronisation.

    def on_prefill_end(self, layers: list[CacheState]) -> dict[int, list[Tensor]] | None:
        counts = [(s.is_visual & s.valid).sum(1).tolist() for s in layers]  # [layer][sample]
        per_sample = [list(row) for row in zip(*counts)]  # [sample][layer]: N_l, the base annealing shrinks
        layers[0].memory["st3_vta_initial"] = PerSample(per_sample)
        layers[0].memory["st3_vta_current"] = PerSample([list(row) for row in per_sample])
        return None

    def _targets(self, step: DecodeStep | CacheState) -> list[int] | None:
        """Per-sample targets when this step evicts in this layer, else None."""
        if self.config.decay == "none" or "st3_vta_initial" not in step.memory:
            return None
        if step.decode_step % self.config.evict_interval:
            return None
        initial = [row[step.layer] for row in step.memory["st3_vta_initial"]]
        current = [row[step.layer] for row in step.memory["st3_vta_current"]]
        targets = [vta_target(n, step.decode_step, self.config) for n in initial]
        return targets if any(c > t for c, t in zip(current, targets)) else None

    def decode_score_request(self, step: DecodeStep) -> bool:
        if self.config.accumulate and self.config.decay != "none" and "st3_vta_initial" in step.memory:
            return True  # the running sum needs every step's scores
        return self._targets(step) is not None

    def on_decode_layer(self, state: CacheState) -> list[Tensor] | None:
        targets = self._targets(state)
        if targets is None:
            return None
        scores = state.attention_sum if self.config.accumulate else state.attention[:, 0]
        visual = state.is_visual & state.valid
        for row, target in zip(state.memory["st3_vta_current"], targets):
            row[state.layer] = min(row[state.layer], target)
        return [keep_best_visual(scores[b], visual[b], targets[b]) for b in range(state.batch_size)]

"""The independent reference for every pruning path: dropping equals masking (engine.md).

Stock transformers runs the whole sequence; a forward pre-hook on each decoder layer replaces its
attention mask (and, for the `compact` policy, its RoPE) so that the keys a method dropped are
invisible from that layer on. Nothing here shares code with tokentrim's engine.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


def positions_from_mask(mask2d: torch.Tensor) -> torch.Tensor:
    return (mask2d.long().cumsum(-1) - 1).clamp(min=0)


NEVER = 1 << 30


class MaskedReference:
    """Runs stock `model` with per-layer hidden keys.

    hidden[l]: (B, T_total) bool (True = invisible in every forward), or int64: the forward from
    which the key is invisible (0 = the prefill, k = the k-th decode step, NEVER = always visible).
    """

    def __init__(self, model, hidden: list[torch.Tensor], *, compact: bool = False):
        self.model = model
        self.hidden_from = [torch.where(h, 0, NEVER) if h.dtype == torch.bool else h for h in hidden]
        self.compact = compact
        self.lm = model.model.language_model
        self.mask2d: torch.Tensor | None = None
        self.q_start = 0
        self.forward_index = 0
        self.last_position: dict[int, torch.Tensor] = {}

    def _hook(self, layer_idx):
        def hook(module, args, kwargs):
            hidden_states = args[0] if args else kwargs["hidden_states"]
            batch, q = hidden_states.shape[:2]
            kv = self.q_start + q
            keys = torch.arange(kv)
            queries = torch.arange(self.q_start, kv)
            visible = self.mask2d[:, :kv] & (self.hidden_from[layer_idx][:, :kv] > self.forward_index)
            allowed = (keys[None, None, :] <= queries[None, :, None]) & visible[:, None, :]
            allowed[:, torch.arange(q), queries] = True
            dtype = hidden_states.dtype
            mask = torch.zeros(batch, 1, q, kv, dtype=dtype).masked_fill(~allowed[:, None], torch.finfo(dtype).min)
            kwargs["attention_mask"] = mask
            if self.q_start == 0:  # prefill: compact counts only the keys this layer can see
                counted = visible if self.compact else self.mask2d[:, :kv]
                positions = positions_from_mask(counted)[:, :kv]
            else:  # later tokens follow the layer's last position; evictions never renumber keys
                positions = self.last_position[layer_idx][:, None] + torch.arange(1, q + 1)
            self.last_position[layer_idx] = positions[:, -1]
            kwargs["position_embeddings"] = self.lm.rotary_emb(hidden_states, positions)
            return args, kwargs

        return hook

    def _install(self):
        return [layer.register_forward_pre_hook(self._hook(i), with_kwargs=True) for i, layer in enumerate(self.lm.layers)]

    @torch.no_grad()
    def attentions(self, inputs: dict) -> tuple[torch.Tensor, ...]:
        """Per-layer (B, H, T, T) eager attention of the prompt, with the hidden keys applied."""
        previous = self.model.config._attn_implementation
        self.model.set_attn_implementation("eager")
        handles = self._install()
        try:
            self.mask2d, self.q_start, self.forward_index = inputs["attention_mask"].bool(), 0, 0
            return self.model(**inputs, output_attentions=True).attentions
        finally:
            for handle in handles:
                handle.remove()
            self.model.set_attn_implementation(previous)

    @torch.no_grad()
    def step_logits(self, inputs: dict, tokens: torch.Tensor, *, attentions: list | None = None) -> list[torch.Tensor]:
        """Last-position logits after the prompt, then after each teacher-forced token of `tokens` (B, S).

        With `attentions` (a list), the decode steps run with stock eager attention and each step's
        per-layer (B, H, 1, T) attention weights are appended to it."""
        handles = self._install()
        previous = self.model.config._attn_implementation
        if attentions is not None:
            self.model.set_attn_implementation("eager")
        try:
            cache = DynamicCache(config=self.lm.config)
            self.mask2d = inputs["attention_mask"].bool()
            self.q_start = 0
            self.forward_index = 0
            out = self.model(**inputs, past_key_values=cache, use_cache=True)
            logits = [out.logits[:, -1].float()]
            for step in range(tokens.shape[1]):
                self.forward_index = step + 1
                self.q_start = self.mask2d.shape[1]
                self.mask2d = torch.cat([self.mask2d, torch.ones(self.mask2d.shape[0], 1, dtype=torch.bool)], 1)
                position = positions_from_mask(self.mask2d)[:, -1:]
                out = self.model(
                    input_ids=tokens[:, step : step + 1],
                    attention_mask=self.mask2d.long(),
                    position_ids=position,
                    past_key_values=cache,
                    use_cache=True,
                    output_attentions=attentions is not None,
                )
                logits.append(out.logits[:, -1].float())
                if attentions is not None:
                    attentions.append(out.attentions)
            return logits
        finally:
            for handle in handles:
                handle.remove()
            self.model.set_attn_implementation(previous)


def eager_attentions(model, inputs: dict) -> tuple[torch.Tensor, ...]:
    """Per-layer (B, H, T, T) attention probabilities from stock eager attention."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(**inputs, output_attentions=True).attentions
    finally:
        model.set_attn_implementation(previous)

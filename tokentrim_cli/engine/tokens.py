"""The live tokens: what flows through the decoder during a prefill, and how dropping works.

Dropping is gathering: every per-token tensor (hidden states, indices, flags, RoPE tables) is
index-selected with the same keep indices, so later layers never see the dropped tokens and their
KV caches are really shorter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LiveTokens:
    """The tokens entering the next decoder layer: (B, N) each; hidden is (B, N, D)."""

    hidden: Tensor
    token_index: Tensor  # column in the 2D attention mask (padding included): causality
    valid: Tensor  # False for padding and filler
    is_visual: Tensor
    protected: Tensor  # a vision stage's "never drop" (MustDrop's key set)
    rope_position: Tensor  # the RoPE position the token's key is encoded at
    cos: Tensor  # (B or 1, N, head_dim)
    sin: Tensor
    untouched: bool  # still exactly the chunk stock transformers runs (stock mask and RoPE apply)
    all_valid: bool  # no padding or filler (host-side, so masks are chosen without a device sync)

    def gather(self, index: Tensor, filler: Tensor, *, any_filler: bool) -> None:
        """Keep the tokens `index` (B, n), in that order; `filler` (B, n) marks padding entries that
        only give samples with fewer kept tokens the batch's length."""

        def take(t: Tensor) -> Tensor:
            return t.gather(1, index.to(t.device))

        self.hidden = self.hidden.gather(1, index.to(self.hidden.device)[..., None].expand(-1, -1, self.hidden.shape[-1]))
        self.token_index = take(self.token_index)
        self.valid = take(self.valid) & ~filler
        self.is_visual = take(self.is_visual) & ~filler
        self.protected = take(self.protected) & ~filler
        self.rope_position = take(self.rope_position)
        expanded = index.to(self.cos.device)[..., None].expand(-1, -1, self.cos.shape[-1])
        self.cos = self.cos.expand(index.shape[0], -1, -1).gather(1, expanded)
        self.sin = self.sin.expand(index.shape[0], -1, -1).gather(1, expanded)
        self.untouched = False
        self.all_valid = self.all_valid and not any_filler

    def follow(self) -> None:
        """Move the per-token bookkeeping to the hidden states' device: with a model spread over
        several devices (device_map), a layer may hand its output over on another one."""
        device = self.hidden.device
        if self.valid.device == device:
            return
        for name in ("token_index", "valid", "is_visual", "protected", "rope_position", "cos", "sin"):
            setattr(self, name, getattr(self, name).to(device))


def pad_keep(keep: list[Tensor]) -> tuple[Tensor, Tensor, bool]:
    """Stack per-sample keep indices into (B, n), left-filling short rows with filler entries.

    Fillers repeat the sample's first kept index and are flagged so masks hide them: a batch needs
    one length, while methods may keep different counts per sample (engine.md "Traps"). The third
    value says whether any filler was needed (known on the host, from the lengths alone).
    """
    lengths = [k.numel() for k in keep]
    longest = max(lengths)
    rows, fillers = [], []
    for k, length in zip(keep, lengths):
        missing = longest - length
        rows.append(torch.cat([k[:1].expand(missing), k]))
        fillers.append(torch.arange(longest, device=k.device) < missing)
    return torch.stack(rows), torch.stack(fillers), any(n != longest for n in lengths)

"""The trimming engine: everything that knows transformers' internals lives in this package.

- trimmer.py: `Trimmer`, which owns the language model's forward (prefill and decode);
- cache.py: `PrunableCache`, a KV cache that can forget entries and knows what each one is;
- tokens.py, masks.py, positions.py: the live tokens, the attention-mask rule, RoPE positions
  (pure functions on tensors);
- scoring.py: attention rows for a few queries without eager attention;
- vision.py: `VisionRunner`, the vision tower for vision-stage methods;
- withdrawal.py: VTW calibration's shared prefix;
- family.py: where a LLaVA-family model keeps its parts (the seam for other families).
"""

from .cache import PrefillTrace, PrunableCache, kv_lengths, kv_nbytes
from .trimmer import Trimmer

__all__ = ["PrefillTrace", "PrunableCache", "Trimmer", "kv_lengths", "kv_nbytes"]

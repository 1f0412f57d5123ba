"""Kernel options: which implementation of the same math a forward pass runs.

A model call takes one :class:`KernelOptions` (``model(tokens, *, kernels=...)``) and hands it down to
the layer functions. The default is the training kernels; the other settings are the implementation
differences that separate an inference engine from a trainer (``jaxstack.rl.engine``'s knobs). The
object is frozen and hashable, so it is a static (compile-time) choice under ``jit``.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class KernelOptions:
    """Attributes:
      fused_qkv: one matmul against the concatenated q/k/v weights instead of three.
      attention_block: chunked online-softmax attention over key blocks of this size
        (``attention.online_softmax_attention``); None = ``attention.dot_product_attention``.
      norm_chunks: RMSNorm sum of squares as this many partial sums (a split reduction); 1 = one mean.
    """

    fused_qkv: bool = False
    attention_block: int | None = None
    norm_chunks: int = 1

    def __post_init__(self):
        block = self.attention_block
        if block is not None and (not isinstance(block, int) or block <= 0):
            raise ValueError(f"attention_block: expected a positive integer or None, got {self.attention_block!r}")
        if not isinstance(self.norm_chunks, int) or self.norm_chunks <= 0:
            raise ValueError(f"norm_chunks: expected a positive integer, got {self.norm_chunks!r}")


#: The trainer's kernels (every model call's default).
TRAINING_KERNELS = KernelOptions()

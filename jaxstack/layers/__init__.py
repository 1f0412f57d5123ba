"""Flax NNX layers: thin modules holding parameters and calling pure functions.

Import any of them into another Flax NNX project; each takes an explicit ``policy=`` (DtypePolicy).
"""

from jaxstack.layers.attention import (
    Attention,
    attention_mask,
    dot_product_attention,
    online_softmax_attention,
)
from jaxstack.layers.embedding import Embedding
from jaxstack.layers.kda import KDAState, KimiDeltaAttention
from jaxstack.layers.mla import MultiHeadLatentAttention
from jaxstack.layers.mlp import SwiGLU, swiglu
from jaxstack.layers.moe import MoE, RouterBias, route
from jaxstack.layers.norms import RMSNorm, rms_norm
from jaxstack.layers.options import TRAINING_KERNELS, KernelOptions
from jaxstack.layers.rotary import RopeScaling, apply_rope, rope_angles
from jaxstack.layers.short_conv import ShortConvolution, causal_conv1d

__all__ = [
    "Attention",
    "Embedding",
    "KDAState",
    "KimiDeltaAttention",
    "KernelOptions",
    "MoE",
    "MultiHeadLatentAttention",
    "RMSNorm",
    "RopeScaling",
    "RouterBias",
    "ShortConvolution",
    "SwiGLU",
    "TRAINING_KERNELS",
    "apply_rope",
    "attention_mask",
    "causal_conv1d",
    "dot_product_attention",
    "online_softmax_attention",
    "rms_norm",
    "rope_angles",
    "route",
    "swiglu",
]

"""Normalisation layers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxstack.precision import DtypePolicy, get_policy


def rms_norm(x: jax.Array, scale: jax.Array, *, eps: float, policy: DtypePolicy, chunks: int = 1) -> jax.Array:
    """``x / rms(x) * scale`` with statistics in the policy's accumulation dtype (float32).

    Matches Hugging Face's ``LlamaRMSNorm``: normalise in float32, cast back to the input dtype, then
    multiply by the weight. x: [..., D]; scale: [D]. Returns x's dtype.

    chunks: the sum of squares as ``chunks`` partial sums over contiguous slices of D, then their sum
    (a split reduction, as a fused inference kernel computes it; ``KernelOptions.norm_chunks``). Same
    math, different rounding; 1 = one mean (the training kernel).
    """
    input_dtype = x.dtype
    x32 = policy.accum(x)
    if chunks == 1:
        variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    else:
        d = x.shape[-1]
        if d % chunks:
            raise ValueError(f"norm_chunks: {chunks} does not divide the hidden size {d}")
        partial = jnp.sum(jnp.square(x32).reshape(*x.shape[:-1], chunks, d // chunks), axis=-1)
        variance = jnp.sum(partial, axis=-1, keepdims=True) / d
    normed = (x32 * jax.lax.rsqrt(variance + eps)).astype(input_dtype)
    return scale.astype(input_dtype) * normed


class RMSNorm(nnx.Module):
    """Root-mean-square norm with a learned per-channel scale (initialised to one)."""

    def __init__(self, dim: int, *, eps: float = 1e-6, policy: DtypePolicy | str | None = None):
        self.eps = eps
        self.policy = get_policy(policy)
        self.scale = nnx.Param(
            jnp.ones((dim,), self.policy.param_dtype), out_sharding=("norm",), eager_sharding=False, weight_decay=False
        )

    def __call__(self, x: jax.Array, *, chunks: int = 1) -> jax.Array:
        """x: [..., D] -> [..., D] (same dtype). chunks: see :func:`rms_norm`."""
        return rms_norm(x, self.scale[...], eps=self.eps, policy=self.policy, chunks=chunks)

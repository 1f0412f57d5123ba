"""Normalisation layers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxstack.precision import DtypePolicy, get_policy


def rms_norm(x: jax.Array, scale: jax.Array, *, eps: float, policy: DtypePolicy) -> jax.Array:
    """``x / rms(x) * scale`` with statistics in the policy's accumulation dtype (float32).

    Matches Hugging Face's ``LlamaRMSNorm``: normalise in float32, cast back to the input dtype, then
    multiply by the weight. x: [..., D]; scale: [D]. Returns x's dtype.
    """
    input_dtype = x.dtype
    x32 = policy.accum(x)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
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

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., D] -> [..., D] (same dtype)."""
        return rms_norm(x, self.scale[...], eps=self.eps, policy=self.policy)

"""Rotary position embeddings in Hugging Face's ``rotate_half`` convention.

Channel ``i`` is paired with channel ``i + head_dim/2`` (not ``2i`` with ``2i+1`` as in Meta's original
code), so HF checkpoints load without permuting q/k rows. Angles are computed in float32.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. ``kind``: ``"default"`` (none), ``"linear"`` or ``"llama3"``.

    linear: positions divided by ``factor`` (HF ``rope_type="linear"``).
    llama3: long wavelengths divided by ``factor``, short ones kept, a smooth ramp between
    (HF ``rope_type="llama3"``, Llama 3.1+).
    """

    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        if self.kind not in ("default", "linear", "llama3"):
            raise ValueError(
                f"rope_scaling.kind: expected 'default', 'linear' or 'llama3', got {self.kind!r}"
            )
        if self.factor <= 0:
            raise ValueError(f"rope_scaling.factor: must be > 0, got {self.factor}")


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> np.ndarray:
    """Inverse frequencies [head_dim // 2] (float64 numpy, computed once at trace time)."""
    if head_dim % 2:
        raise ValueError(f"head_dim: RoPE needs an even head dimension, got {head_dim}")
    # float32 arange / exponent, exactly as HF computes it, so angles agree bit-for-bit in float32.
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)
    scaling = scaling or RopeScaling()
    if scaling.kind == "linear":
        inv_freq = inv_freq / np.float32(scaling.factor)
    elif scaling.kind == "llama3":
        low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
        high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
        smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv_freq = np.where(is_medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def rope_angles(
    positions: jax.Array,
    head_dim: int,
    theta: float,
    scaling: RopeScaling | None = None,
    dtype=jnp.float32,
) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape [B, T, head_dim] in ``dtype`` (the policy's accum dtype, float32 by default)
    for integer positions [B, T]. Inverse frequencies are float32 values, as in HF, whatever ``dtype``."""
    inv_freq = jnp.asarray(inverse_frequencies(head_dim, theta, scaling), jnp.float32).astype(dtype)
    freqs = positions.astype(dtype)[..., None] * inv_freq  # [B, T, hd/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: [B, T, N, hd]; cos, sin: [B, T, hd] (float32, or float64 under a float64 policy).

    The rotation runs in at least float32 (float64 inputs stay float64); the result has x's dtype.
    """
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    cos = cos[:, :, None, :].astype(dtype)
    sin = sin[:, :, None, :].astype(dtype)
    wide = x.astype(dtype)
    return (wide * cos + rotate_half(wide) * sin).astype(x.dtype)

"""Token embedding with an optional tied output head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxstack.layers.attention import param
from jaxstack.precision import DtypePolicy, get_policy


class Embedding(nnx.Module):
    """Embedding table [V, D], initialised ``normal(0, init_std)``. ``attend`` uses the same table as the
    output head (weight tying).

    padding_idx: a token id whose row starts at zero, as torch's ``nn.Embedding(padding_idx=...)`` and
    transformers' ``_init_weights`` leave it (None: no such row). Only the initial value: the row is
    trained like any other (torch also zeroes its gradient; jaxstack does not).
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        *,
        init_std: float = 0.02,
        padding_idx: int | None = None,
        policy: DtypePolicy | str | None = None,
        rngs: nnx.Rngs,
    ):
        if padding_idx is not None and not 0 <= padding_idx < vocab_size:
            raise ValueError(f"Embedding: padding_idx must be in [0, {vocab_size}), got {padding_idx}")
        self.policy = get_policy(policy)
        self.vocab_size = vocab_size
        self.embedding = param(rngs, (vocab_size, hidden_size), ("vocab", "embed"), std=init_std, dtype=self.policy.param_dtype)
        if padding_idx is not None:
            self.embedding[...] = self.embedding[...].at[padding_idx].set(0)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """tokens: [B, T] int -> [B, T, D] in the compute dtype."""
        return jnp.take(self.embedding[...], tokens, axis=0).astype(self.policy.compute_dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """x: [B, T, D] -> logits [B, T, V] (tied head), in the compute dtype."""
        compute = self.policy.compute_dtype
        return jnp.einsum("btd,vd->btv", x.astype(compute), self.embedding[...].astype(compute))

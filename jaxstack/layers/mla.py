"""Multi-head latent attention (DeepSeek-V2/V3 MLA; Kimi Linear's full-attention layer), in Flax NNX.

Per token, with d = hidden size, H heads, ``qk_head_dim = qk_nope_head_dim + qk_rope_head_dim``::

    q               = x W_q                      (or  RMSNorm(x W_qa) W_qb  with q_lora_rank)   [H, qk_head_dim]
    c_kv, k_rot     = split(x W_kv_a, [kv_lora_rank, qk_rope_head_dim])
    c_kv            = RMSNorm(c_kv)                                                           [kv_lora_rank]
    k_nope, v       = split(c_kv W_kv_b, [qk_nope_head_dim, v_head_dim])  per head
    k               = concat(k_nope, k_rot broadcast over heads)    (k_rot is shared: MQA-like)
    o               = softmax(q k^T * qk_head_dim^-0.5, causal) v;   y = o W_o

With ``use_nope=True`` (Kimi Linear, ``mla_use_nope``) no rotation is applied: the rope sub-dims
still exist and take part in the scores. Otherwise q_rot / k_rot get RoPE (HF rotate-half convention;
DeepSeek-V3's interleaved layout is not supported). ``q_a_layernorm`` / ``kv_a_layernorm`` use
eps 1e-6 by default, as the released Kimi Linear and DeepSeek code do (not the model's rms_norm_eps).

Decode cache: only the latent ``concat(c_kv, k_rot)`` per token, ``[B, S, kv_lora_rank + rope_dim]``,
576 values per token for the 48B config. With a cache the scores are computed in the latent space
("weight absorption": ``q_nope W_uk^T`` against ``c_kv``), which never materialises per-head keys; without
one, keys and values are expanded. Both give the same result (tested against a naive reference).
With a cache the T new latents are scored as a second key block beside the cached slots (one softmax
over both), and written into the cache after those reads, so a decode step updates the cache buffer
in place and copies nothing of it (``tests/models/test_kimi_decode_hlo.py`` checks the compiled step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxstack.layers.attention import _write_rows, attention_mask, param
from jaxstack.layers.norms import RMSNorm
from jaxstack.layers.rotary import apply_rope
from jaxstack.precision import DtypePolicy, get_policy


def _after(value: jax.Array, dependency: jax.Array) -> jax.Array:
    """``value`` unchanged (bit for bit, but a ``-0.0`` becomes ``+0.0``), made to depend on ``dependency``.

    XLA updates a buffer in place (``dynamic_update_slice``) only when it can prove the buffer's other
    readers run first; for readers that the update does not depend on it keeps a full copy of the buffer
    instead. Adding ``0 * isfinite(dependency[0])`` (0 or 1, never inf / nan, so the sum is exact) gives
    the update that dependency. (``lax.optimization_barrier`` on the pair did not remove the copy.)
    """
    flag = jnp.isfinite(dependency.reshape(-1)[0]).astype(value.dtype)
    return value + jnp.zeros((), value.dtype) * flag


class MultiHeadLatentAttention(nnx.Module):
    """MLA. Weights (jaxstack layout): q_proj ``[d, H, qk]`` or q_a_proj ``[d, q_lora]`` + q_a_layernorm
    + q_b_proj ``[q_lora, H, qk]``; kv_a_proj_with_mqa ``[d, kv_lora + rope]``; kv_a_layernorm
    ``[kv_lora]``; kv_b_proj ``[kv_lora, H, nope + v]``; o_proj ``[H, v, d]``.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        kv_lora_rank: int,
        qk_nope_head_dim: int,
        qk_rope_head_dim: int,
        v_head_dim: int,
        q_lora_rank: int | None = None,
        use_nope: bool = True,
        norm_eps: float = 1e-6,
        init_std: float = 0.02,
        policy: DtypePolicy | str | None = None,
        rngs: nnx.Rngs,
    ):
        for name, value in (("hidden_size", hidden_size), ("num_heads", num_heads), ("kv_lora_rank", kv_lora_rank),
                            ("qk_nope_head_dim", qk_nope_head_dim), ("v_head_dim", v_head_dim)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"MultiHeadLatentAttention: {name} must be a positive integer, got {value!r}")
        if not isinstance(qk_rope_head_dim, int) or qk_rope_head_dim < 0:
            raise ValueError(f"MultiHeadLatentAttention: qk_rope_head_dim must be >= 0, got {qk_rope_head_dim!r}")
        if not use_nope and qk_rope_head_dim % 2:
            raise ValueError(f"MultiHeadLatentAttention: RoPE needs an even qk_rope_head_dim, got {qk_rope_head_dim}")
        if q_lora_rank is not None and (not isinstance(q_lora_rank, int) or q_lora_rank <= 0):
            raise ValueError(f"MultiHeadLatentAttention: q_lora_rank must be a positive integer or None, got {q_lora_rank!r}")
        self.policy = policy = get_policy(policy)
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.kv_lora_rank, self.q_lora_rank = kv_lora_rank, q_lora_rank
        self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim = qk_nope_head_dim, qk_rope_head_dim, v_head_dim
        self.qk_head_dim = qk_nope_head_dim + qk_rope_head_dim
        self.use_nope = use_nope
        self.scale = self.qk_head_dim ** -0.5
        d, h, dtype = hidden_size, num_heads, policy.param_dtype
        if q_lora_rank is None:
            self.q_proj = param(rngs, (d, h, self.qk_head_dim), ("embed", "heads", "head_dim"), std=init_std, dtype=dtype)
            self.q_a_proj = self.q_a_layernorm = self.q_b_proj = None
        else:
            self.q_proj = None
            self.q_a_proj = param(rngs, (d, q_lora_rank), ("embed", "q_lora"), std=init_std, dtype=dtype)
            self.q_a_layernorm = RMSNorm(q_lora_rank, eps=norm_eps, policy=policy)
            self.q_b_proj = param(rngs, (q_lora_rank, h, self.qk_head_dim), ("q_lora", "heads", "head_dim"),
                                  std=init_std, dtype=dtype)
        self.kv_a_proj_with_mqa = param(rngs, (d, kv_lora_rank + qk_rope_head_dim), ("embed", "kv_lora"),
                                        std=init_std, dtype=dtype)
        self.kv_a_layernorm = RMSNorm(kv_lora_rank, eps=norm_eps, policy=policy)
        self.kv_b_proj = param(rngs, (kv_lora_rank, h, qk_nope_head_dim + v_head_dim), ("kv_lora", "heads", "head_dim"),
                               std=init_std, dtype=dtype)
        self.o_proj = param(rngs, (h, v_head_dim, d), ("heads", "head_dim", "embed"), std=init_std, dtype=dtype)

    @property
    def latent_dim(self) -> int:
        """Cached values per token: kv_lora_rank + qk_rope_head_dim."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    def _queries(self, x):
        compute = self.policy.compute_dtype
        if self.q_proj is not None:
            return jnp.einsum("btd,dhq->bthq", x, self.q_proj[...].astype(compute))
        latent = self.q_a_layernorm(x @ self.q_a_proj[...].astype(compute))
        return jnp.einsum("btr,rhq->bthq", latent, self.q_b_proj[...].astype(compute))

    def latents(self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        """The per-token cache entries ``concat(RMSNorm(c_kv), k_rot)`` ``[B, T, kv_lora + rope]``."""
        compute = self.policy.compute_dtype
        compressed = x.astype(compute) @ self.kv_a_proj_with_mqa[...].astype(compute)
        c_kv, k_rot = jnp.split(compressed, [self.kv_lora_rank], axis=-1)
        c_kv = self.kv_a_layernorm(c_kv)
        if not self.use_nope and self.qk_rope_head_dim:
            k_rot = apply_rope(k_rot[:, :, None, :], *rope)[:, :, 0, :]
        return jnp.concatenate([c_kv, k_rot], axis=-1)

    def __call__(
        self,
        x: jax.Array,
        rope: tuple[jax.Array, jax.Array] | None = None,
        *,
        segment_ids: jax.Array | None = None,
        cache: tuple[jax.Array, jax.Array] | None = None,
    ) -> tuple[jax.Array, jax.Array | None]:
        """x: ``[B, T, d]``. rope: (cos, sin) ``[B, T, qk_rope_head_dim]``, required unless use_nope.

        segment_ids: ``[B, T]`` (no cache): attention stays within a segment.
        cache: ``(latent [B, S, kv_lora + rope], lengths [B])`` with ``lengths`` the slots filled before
        this call; the T new latents are written at ``lengths .. lengths + T``.
        Returns ``(y [B, T, d] compute dtype, updated latent cache or None)``.
        """
        if x.ndim != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"MultiHeadLatentAttention: x must be [B, T, {self.hidden_size}], got {tuple(x.shape)}")
        if not self.use_nope and self.qk_rope_head_dim and rope is None:
            raise ValueError("MultiHeadLatentAttention: rope=(cos, sin) is required when use_nope=False")
        policy = self.policy
        compute = policy.compute_dtype
        x = x.astype(compute)
        batch, length, _ = x.shape
        acc = jnp.promote_types(compute, policy.accum_dtype)  # f32 logits for half-precision compute
        q = self._queries(x)
        q_nope, q_rot = jnp.split(q, [self.qk_nope_head_dim], axis=-1)
        if not self.use_nope and self.qk_rope_head_dim:
            q_rot = apply_rope(q_rot, *rope)
        latent = self.latents(x, rope)
        w_kv_b = self.kv_b_proj[...].astype(compute)
        w_uk, w_uv = jnp.split(w_kv_b, [self.qk_nope_head_dim], axis=-1)  # [C, H, nope], [C, H, v]

        if cache is None:
            # Expanded form: per-head keys and values from the latents of this call.
            c_kv, k_rot = jnp.split(latent, [self.kv_lora_rank], axis=-1)
            k_nope = jnp.einsum("bsc,chn->bshn", c_kv, w_uk)
            values = jnp.einsum("bsc,chv->bshv", c_kv, w_uv)
            logits = jnp.einsum("bthn,bshn->bhts", q_nope, k_nope, preferred_element_type=acc)
            logits += jnp.einsum("bthr,bsr->bhts", q_rot, k_rot, preferred_element_type=acc)
            mask = attention_mask(length, length, segment_ids=segment_ids)
            probs = self._softmax(logits, mask).astype(compute)
            out = jnp.einsum("bhts,bshv->bthv", probs, values)
            new_cache = None
        else:
            if segment_ids is not None:
                raise ValueError("MultiHeadLatentAttention: segment_ids is not supported together with a cache")
            cache_latent, lengths = cache
            if cache_latent.ndim != 3 or cache_latent.shape[0] != batch or cache_latent.shape[2] != self.latent_dim:
                raise ValueError(
                    f"MultiHeadLatentAttention: cache latent must be [B={batch}, S, {self.latent_dim}], "
                    f"got {list(cache_latent.shape)}"
                )
            out_latent = self._attend_cached(q_nope, q_rot, w_uk, cache_latent, latent, lengths)
            out = jnp.einsum("bthc,chv->bthv", out_latent[..., : self.kv_lora_rank], w_uv)
            # Written after the reads above (the update depends on their result), so XLA updates the
            # cache buffer in place instead of keeping a copy for the reads (see _after).
            new_cache = _write_rows(cache_latent, _after(latent, out), lengths)
        y = jnp.einsum("bthv,hvd->btd", out, self.o_proj[...].astype(compute))
        return y, new_cache

    def _attend_cached(self, q_nope, q_rot, w_uk, cache_latent, latent, lengths):
        """Absorbed attention of T queries over ``lengths`` cached slots plus this call's T latents.

        q_nope: ``[B, T, H, nope]``; q_rot: ``[B, T, H, rope]``; w_uk: ``[C_kv, H, nope]``;
        cache_latent: ``[B, S, C]`` (slots ``< lengths`` valid); latent: ``[B, T, C]`` the new entries
        (query t sees new entries ``<= t``). Returns ``[B, T, H, C]`` (compute dtype): the softmax-weighted
        latents; ``[..., :kv_lora_rank]`` is c_kv's part.

        One softmax over both key blocks (a shared max and sum), so the result is that of attending over
        the cache after the write. Reading the cache *before* the write lets the write happen in place,
        and scoring the full latent ``concat(c_kv, k_rot)`` with ``concat(q_nope W_uk^T, q_rot)`` (the
        same logits as two products) reads each cache row once and slices nothing out of the cache.
        """
        compute = self.policy.compute_dtype
        acc = jnp.promote_types(compute, self.policy.accum_dtype)
        length, slots = latent.shape[1], cache_latent.shape[1]
        q_latent = jnp.einsum("bthn,chn->bthc", q_nope, w_uk)
        q_full = jnp.concatenate([q_latent, q_rot.astype(q_latent.dtype)], axis=-1)  # [B, T, H, C]
        cached = cache_latent.astype(compute)
        new = latent.astype(compute)
        old_logits = jnp.einsum("bthc,bsc->bhts", q_full, cached, preferred_element_type=acc) * self.scale
        new_logits = jnp.einsum("bthc,buc->bhtu", q_full, new, preferred_element_type=acc) * self.scale
        old_valid = (jnp.arange(slots)[None, :] < lengths[:, None])[:, None, None, :]  # [B, 1, 1, S]
        new_valid = jnp.tril(jnp.ones((length, length), bool))[None, None]  # [1, 1, T, T]
        lowest = jnp.finfo(acc).min
        old_logits = jnp.where(old_valid, old_logits, lowest)
        new_logits = jnp.where(new_valid, new_logits, lowest)
        top = jnp.maximum(old_logits.max(-1, keepdims=True), new_logits.max(-1, keepdims=True))
        old_p = jnp.where(old_valid, jnp.exp(old_logits - top), 0.0)
        new_p = jnp.where(new_valid, jnp.exp(new_logits - top), 0.0)
        total = old_p.sum(-1, keepdims=True) + new_p.sum(-1, keepdims=True)
        old_p, new_p = (old_p / total).astype(compute), (new_p / total).astype(compute)
        # Cache first: with the probabilities first, XLA:CPU lays this product out as a transposed copy of
        # the cache ([C, S], every step); in this order it reads the cache as stored (same math).
        weighted = jnp.einsum("bsc,bhts->bthc", cached, old_p) + jnp.einsum("bhtu,buc->bthc", new_p, new)
        return weighted.astype(compute)

    def _softmax(self, logits, mask):
        logits = logits * self.scale  # already in the accumulation dtype (f32, or f64 for f64 inputs)
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        return jax.nn.softmax(logits, axis=-1)

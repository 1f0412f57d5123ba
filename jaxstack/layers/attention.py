"""Grouped-query attention with RoPE, segment ids, sliding windows and a KV cache.

Causality is by *slot index* (position of the token in the row / in the cache), not by RoPE
position, so packed sequences with positions that restart per document and left-aligned caches are
both handled. RoPE positions only rotate q and k.

The math is the pure function :func:`attention` (projections, RoPE, the KV-cache write, masking, the
attention kernel, the output projection); the ``Attention`` module holds the weights and calls it.
``KernelOptions`` (``layers.options``) picks a fused QKV matmul and the chunked online-softmax kernel
(:func:`online_softmax_attention`) instead of the training kernels.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxstack.layers.options import TRAINING_KERNELS, KernelOptions
from jaxstack.layers.rotary import apply_rope
from jaxstack.precision import DtypePolicy, get_policy

Implementation = Literal["xla", "cudnn"] | None


def param(rngs: nnx.Rngs, shape, names, *, std: float, dtype) -> nnx.Param:
    """A normally initialised parameter carrying logical axis names (see train/sharding.py)."""
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    return nnx.Param(value.astype(dtype), out_sharding=names, eager_sharding=False)


def zeros_param(shape, names, *, dtype, weight_decay: bool = True) -> nnx.Param:
    """A zero-initialised parameter (biases pass ``weight_decay=False``: the optimizer reads it)."""
    return nnx.Param(jnp.zeros(shape, dtype), out_sharding=names, eager_sharding=False, weight_decay=weight_decay)


def attention_mask(
    query_length: int,
    key_length: int,
    *,
    query_offset: jax.Array | None = None,
    key_valid_length: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    sliding_window: int | None = None,
    allowed: jax.Array | None = None,
) -> jax.Array:
    """Boolean mask [B or 1, 1, T, S]: True where query t may attend to key slot s.

    query_offset: [B] slot index of the first query (cache length before this call), default 0.
    key_valid_length: [B] number of filled key slots (after this call's writes).
    segment_ids: [B, T] (no cache) -- queries attend only within their own segment.
    sliding_window: keys with ``query_slot - key_slot >= sliding_window`` are masked (HF semantics).
    allowed: [B, T, S] bool, a further restriction ANDed with the rest (e.g. a tree of branches that
      share a prefix: each branch sees the prefix and itself, not its siblings). It never lifts the
      causal rule.
    """
    q_slot = jnp.arange(query_length)[None, :, None]
    if query_offset is not None:
        q_slot = q_slot + query_offset[:, None, None]
    k_slot = jnp.arange(key_length)[None, None, :]
    mask = k_slot <= q_slot
    if key_valid_length is not None:
        mask = mask & (k_slot < key_valid_length[:, None, None])
    if sliding_window is not None:
        mask = mask & (q_slot - k_slot < sliding_window)
    if segment_ids is not None:
        mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
    if allowed is not None:
        mask = mask & allowed
    return mask[:, None, :, :]


def _write_rows(cache: jax.Array, update: jax.Array, start: jax.Array) -> jax.Array:
    """Writes update [B, T, ...] into cache [B, S, ...] at per-row slot offsets start [B]."""

    def write(row_cache, row_update, row_start):
        index = (row_start,) + (0,) * (row_cache.ndim - 1)
        return jax.lax.dynamic_update_slice(row_cache, row_update.astype(row_cache.dtype), index)

    return jax.vmap(write)(cache, update, start)


def _write_slots(cache: jax.Array, update: jax.Array, start: jax.Array) -> jax.Array:
    """Writes update [B, T, KV, hd] into a heads-major cache [B, KV, S, hd] at per-row slot offsets
    start [B] (an in-place dynamic-update-slice per row when the cache buffer is dead afterwards)."""
    update = jnp.swapaxes(update, 1, 2).astype(cache.dtype)  # [B, KV, T, hd]: small, T new tokens only

    def write(row_cache, row_update, row_start):
        return jax.lax.dynamic_update_slice(row_cache, row_update, (0, row_start, 0))

    return jax.vmap(write)(cache, update, start)


def grouped_cache_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """float32 attention of q [B, T, H, hd] over a heads-major cache k, v [B, KV, S, hd]; mask [B|1, 1, T, S].

    The decode layout: the G = H / KV query heads of a KV head are stacked on the query axis
    (``[B, KV, G*T, hd] @ [B, KV, hd, S]``), so the cache is read as stored, never transposed nor
    repeated to H heads. Otherwise the math of :func:`_float32_attention_cpu` (additive mask bias,
    max-subtracted exp, the normaliser applied after ``P @ V``): the same products and sums, only
    grouped differently into matmuls. Returns [B, KV, G, T, hd] (head h = kv * G + g; see
    :func:`_grouped_output_projection`).
    """
    batch, length, heads, head_dim = q.shape
    kv_heads, slots = k.shape[1], k.shape[2]
    group = heads // kv_heads
    # head h = kv * G + g, as jnp.repeat(k, G, axis=heads) pairs them
    qg = (q * jnp.float32(1.0 / np.sqrt(head_dim))).reshape(batch, length, kv_heads, group, head_dim)
    qg = jnp.transpose(qg, (0, 2, 3, 1, 4)).reshape(batch, kv_heads, group * length, head_dim)
    logits = jnp.einsum("bkqd,bksd->bkqs", qg, k, precision=jax.lax.Precision.HIGHEST)
    logits = logits.reshape(batch, kv_heads, group, length, slots)
    bias = jnp.where(mask, jnp.float32(0), jnp.finfo(jnp.float32).min * 0.7)  # [B|1, 1, T, S]
    logits = logits + bias[:, :, None]
    peak = jnp.max(logits, axis=-1, keepdims=True)
    weights = jnp.exp(logits - peak)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    weights = weights.reshape(batch, kv_heads, group * length, slots)
    out = jnp.einsum("bkqs,bksd->bkqd", weights, v, precision=jax.lax.Precision.HIGHEST)
    return out.reshape(batch, kv_heads, group, length, head_dim) / total


def _grouped_output_projection(out: jax.Array, o_proj: jax.Array) -> jax.Array:
    """out [B, KV, G, T, hd] (:func:`grouped_cache_attention`) @ o_proj [H, hd, D] -> [B, T, D]. The
    contraction runs over (KV, G, hd) as laid out: ``o_proj`` is only reshaped (H = KV * G), so XLA
    does not re-lay the weight out for every decode step."""
    kv_heads, group = out.shape[1], out.shape[2]
    weight = o_proj.reshape(kv_heads, group, o_proj.shape[1], o_proj.shape[2])
    # dot_general with the contracting dims in storage order (an einsum may list them reversed, and
    # XLA then transposes the weight to match)
    return jax.lax.dot_general(out, weight, (((1, 2, 4), (0, 1, 2)), ((), ())))


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None,
    is_causal: bool,
    sliding_window: int | None,
    implementation: Implementation,
) -> jax.Array:
    """q: [B, T, H, hd]; k, v: [B, S, KV, hd] with H % KV == 0. Returns [B, T, H, hd].

    Dispatches to ``jax.nn.dot_product_attention`` (XLA or cuDNN). Its XLA path accumulates the logits
    in float32 for half-precision inputs and always runs the softmax in float32, which is the
    float32-softmax rule of DtypePolicy.
    """
    if q.dtype == jnp.float16 and jax.default_backend() == "cpu":
        # jax.nn.dot_product_attention asks for the F16_F16_F32 dot algorithm, which XLA:CPU rejects
        # at compile time under jit; this is the same math on CPU.
        return _float16_attention_cpu(q, k, v, mask=mask, is_causal=is_causal, sliding_window=sliding_window)
    if q.dtype == jnp.float32 and implementation in (None, "xla") and jax.default_backend() == "cpu":
        if is_causal and mask is None and q.shape[1] == k.shape[1] and q.shape[1] >= 2 * CAUSAL_BLOCK:
            return causal_blocked_attention(q, k, v, block=CAUSAL_BLOCK, sliding_window=sliding_window)
        return _float32_attention_cpu(q, k, v, mask=mask, is_causal=is_causal, sliding_window=sliding_window)
    local_window = None
    if is_causal and sliding_window is not None:
        local_window = (sliding_window - 1, 0)
    return jax.nn.dot_product_attention(
        q,
        k,
        v,
        mask=mask,
        is_causal=is_causal,
        local_window_size=local_window,
        implementation=implementation,
    )


def _float16_attention_cpu(q, k, v, *, mask, is_causal, sliding_window):
    """``jax.nn.dot_product_attention``'s XLA path for float16 on CPU: q.k logits with float32
    accumulation (float16 products are exact in float32, so upcasting the operands is the F16_F16_F32
    algorithm), float32 softmax, probabilities rounded to float16, P @ V in float16."""
    heads, kv_heads = q.shape[2], k.shape[2]
    k = jnp.repeat(k, heads // kv_heads, axis=2)
    v = jnp.repeat(v, heads // kv_heads, axis=2)
    logits = jnp.einsum("btnh,bsnh->bnts", q.astype(jnp.float32), k.astype(jnp.float32))
    logits = logits * jnp.float32(1.0 / np.sqrt(q.shape[-1]))
    if is_causal:
        causal = attention_mask(q.shape[1], k.shape[1], sliding_window=sliding_window)
        mask = causal if mask is None else (mask & causal)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min * 0.7)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bnts,bsnh->btnh", probs, v)


# Query block of :func:`causal_blocked_attention` (the float32 CPU causal path). Measured on 2 cores at
# B16 T512, 9 heads / 3 KV heads of 64: 32 -> 147 ms, 64 -> 123 ms, 128 -> 184 ms, unblocked 271 ms,
# the repeated-heads form (:func:`_float32_attention_cpu`) 332 ms.
CAUSAL_BLOCK = 64


def causal_blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, block: int,
                             sliding_window: int | None = None) -> jax.Array:
    """Causal float32 attention that skips the fully masked key blocks. q: [B, T, H, hd]; k, v:
    [B, T, KV, hd] (the same T slots as the queries, H % KV == 0). Returns [B, T, H, hd].

    Queries run in blocks of ``block`` rows (a static Python loop, so each block's key range is a
    static slice): block ``[i0, i1)`` attends to keys ``[lo, i1)`` only, ``lo`` the first key block a
    sliding window can reach (0 without a window), about half of the ``T x T`` logits for plain causal
    attention. GQA is grouped, not repeated: the G = H / KV query heads of a KV head share its keys
    (``[B, KV, G, t, hd] @ [B, KV, hd, s]``). Otherwise the math of :func:`_float32_attention_cpu`
    (additive mask bias, max-subtracted exp, the normaliser applied after ``P @ V``); the skipped keys
    are the ones whose weights that form underflows to exactly 0, so the result differs from it by
    float32 reassociation only. Every query sees at least its own key, so no row is fully masked.
    """
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    if k.shape[1] != length or v.shape[1] != length:
        raise ValueError(f"causal_blocked_attention: keys must cover the query slots, got q {q.shape}, k {k.shape}")
    qg = (q * jnp.float32(1.0 / np.sqrt(head_dim))).reshape(batch, length, kv_heads, group, head_dim)
    qg = jnp.transpose(qg, (0, 2, 3, 1, 4))  # [B, KV, G, T, hd]
    kh, vh = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # [B, KV, T, hd]
    floor = jnp.finfo(jnp.float32).min * 0.7
    outs = []
    for i0 in range(0, length, block):
        i1 = min(i0 + block, length)
        lo = 0 if sliding_window is None else max(0, i0 - sliding_window + 1) // block * block
        logits = jnp.einsum("bkgtd,bksd->bkgts", qg[:, :, :, i0:i1], kh[:, :, lo:i1],
                            precision=jax.lax.Precision.HIGHEST)
        q_slot = jnp.arange(i0, i1)[:, None]
        k_slot = jnp.arange(lo, i1)[None, :]
        allowed = k_slot <= q_slot
        if sliding_window is not None:
            allowed = allowed & (q_slot - k_slot < sliding_window)
        logits = logits + jnp.where(allowed, jnp.float32(0), floor)
        peak = jnp.max(logits, axis=-1, keepdims=True)
        weights = jnp.exp(logits - peak)
        total = jnp.sum(weights, axis=-1, keepdims=True)
        out = jnp.einsum("bkgts,bksd->bkgtd", weights, vh[:, :, lo:i1], precision=jax.lax.Precision.HIGHEST)
        outs.append(out / total)
    out = jnp.concatenate(outs, axis=3)  # [B, KV, G, T, hd]
    return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(batch, length, heads, head_dim)


def _float32_attention_cpu(q, k, v, *, mask, is_causal, sliding_window):
    """The same math as ``jax.nn.dot_product_attention``'s XLA path, laid out for XLA:CPU: heads-major
    batched matmuls (``[B, H, T, hd] @ [B, H, hd, S]``), the mask as an additive bias, and the softmax
    normaliser applied after ``P @ V`` (to ``[B, H, T, hd]`` instead of ``[B, H, T, S]``). About 2x
    faster on CPU at small head dims (``[16, 128]`` tokens, 4 heads of 12: 1.1 vs 2.2 ms); outputs
    agree to float32 rounding. Fully masked rows attend uniformly, as in jax's XLA path."""
    heads, kv_heads, head_dim = q.shape[2], k.shape[2], q.shape[3]
    if heads != kv_heads:
        k = jnp.repeat(k, heads // kv_heads, axis=2)
        v = jnp.repeat(v, heads // kv_heads, axis=2)
    qh = jnp.transpose(q * jnp.float32(1.0 / np.sqrt(head_dim)), (0, 2, 1, 3))
    logits = jnp.matmul(qh, jnp.transpose(k, (0, 2, 3, 1)), precision=jax.lax.Precision.HIGHEST)
    if is_causal:
        causal = attention_mask(q.shape[1], k.shape[1], sliding_window=sliding_window)
        mask = causal if mask is None else (mask & causal)
    if mask is not None:
        logits = logits + jnp.where(mask, jnp.float32(0), jnp.finfo(jnp.float32).min * 0.7)
    peak = jnp.max(logits, axis=-1, keepdims=True)
    weights = jnp.exp(logits - peak)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    out = jnp.matmul(weights, jnp.transpose(v, (0, 2, 1, 3)), precision=jax.lax.Precision.HIGHEST) / total
    return jnp.transpose(out, (0, 2, 1, 3))


def online_softmax_attention(q, k, v, mask, *, block: int, softmax_dtype) -> jax.Array:
    """Chunked (flash-decoding style) attention. q: [B, T, H, hd]; k, v: [B, S, KV, hd]; mask: [B|1, 1, T, S] bool.

    Keys are processed in blocks of ``block``: running max ``m`` and sum ``l`` in ``softmax_dtype``,
    probabilities rounded to the compute dtype before the P @ V matmul (float32 accumulation), the
    output normalised once at the end. Same math as :func:`dot_product_attention`, different rounding
    (an inference engine's kernel). Returns [B, T, H, hd] in q's dtype.
    """
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    k = jnp.repeat(k, heads // kv_heads, axis=2)
    v = jnp.repeat(v, heads // kv_heads, axis=2)
    slots = k.shape[1]
    blocks = -(-slots // block)
    pad = blocks * block - slots
    mask = jnp.broadcast_to(mask, (batch, 1, length, slots))
    if pad:
        k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, pad)))
    scale = 1.0 / math.sqrt(head_dim)
    # [blocks, B, block, H, hd] and [blocks, B, 1, T, block]: a lax.scan over key blocks (compiles once)
    k_blocks = jnp.moveaxis(k.reshape(batch, blocks, block, heads, head_dim), 1, 0)
    v_blocks = jnp.moveaxis(v.reshape(batch, blocks, block, heads, head_dim), 1, 0)
    mask_blocks = jnp.moveaxis(mask.reshape(batch, 1, length, blocks, block), 3, 0)
    q32 = q.astype(jnp.float32)

    def step(carry, xs):
        m, total, acc = carry
        kb, vb, mb = xs
        # Half-precision operands upcast: their products are exact in float32, so this is a half x half
        # matmul with float32 accumulation (XLA:CPU has no f16 x f16 -> f32 dot_general).
        scores = jnp.einsum("bthd,bshd->bhts", q32, kb.astype(jnp.float32))
        scores = (scores * scale).astype(softmax_dtype)
        scores = jnp.where(mb, scores, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(scores, axis=-1))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        p = jnp.exp(scores - m_safe[..., None])
        correction = jnp.exp(jnp.where(jnp.isfinite(m), m - m_safe, -jnp.inf))
        total = total * correction + jnp.sum(p, axis=-1)
        pv = jnp.einsum("bhts,bshd->bhtd", p.astype(q.dtype).astype(jnp.float32), vb.astype(jnp.float32))
        acc = acc * correction[..., None].astype(jnp.float32) + pv
        return (m_new, total, acc), None

    init = (jnp.full((batch, heads, length), -jnp.inf, softmax_dtype),
            jnp.zeros((batch, heads, length), softmax_dtype),
            jnp.zeros((batch, heads, length, head_dim), jnp.float32))
    (_, total, acc), _ = jax.lax.scan(step, init, (k_blocks, v_blocks, mask_blocks))
    out = acc / jnp.maximum(total, jnp.finfo(softmax_dtype).tiny)[..., None].astype(jnp.float32)
    return jnp.transpose(out, (0, 2, 1, 3)).astype(q.dtype)


def _project(x, weight, bias, compute):
    y = jnp.einsum("btd,dnh->btnh", x, weight.astype(compute))
    if bias is not None:
        y = y + bias.astype(compute)
    return y


def _fused_qkv(x, q_proj, k_proj, v_proj, biases, compute):
    """q, k, v from one matmul against the concatenated [D, (H + 2 KV) hd] weight."""
    d, heads, head_dim = q_proj.shape
    kv_heads = k_proj.shape[1]
    weight = jnp.concatenate(
        [q_proj.reshape(d, heads * head_dim), k_proj.reshape(d, kv_heads * head_dim),
         v_proj.reshape(d, kv_heads * head_dim)], axis=-1).astype(compute)
    q, k, v = jnp.split(x @ weight, [heads * head_dim, (heads + kv_heads) * head_dim], axis=-1)
    q = q.reshape(*x.shape[:2], heads, head_dim)
    k = k.reshape(*x.shape[:2], kv_heads, head_dim)
    v = v.reshape(*x.shape[:2], kv_heads, head_dim)
    return tuple(t if b is None else t + b.astype(compute) for t, b in zip((q, k, v), biases))


def attention(
    x: jax.Array,
    rope: tuple[jax.Array, jax.Array],
    q_proj: jax.Array,
    k_proj: jax.Array,
    v_proj: jax.Array,
    o_proj: jax.Array,
    *,
    q_bias: jax.Array | None = None,
    k_bias: jax.Array | None = None,
    v_bias: jax.Array | None = None,
    policy: DtypePolicy,
    sliding_window: int | None = None,
    implementation: Implementation = None,
    segment_ids: jax.Array | None = None,
    cache: tuple[jax.Array, jax.Array, jax.Array] | None = None,
    attention_allowed: jax.Array | None = None,
    query_indices: jax.Array | None = None,
    kernels: KernelOptions = TRAINING_KERNELS,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """GQA attention with RoPE and an optional KV-cache write. x: [B, T, D]; rope: (cos, sin) [B, T, hd].

    Weights: q_proj [D, H, hd], k_proj / v_proj [D, KV, hd], o_proj [H, hd, D]; optional biases
    [H or KV, hd]. Inputs and weights are cast to ``policy.compute_dtype``.

    attention_allowed: [B, T, T] bool (no cache), ANDed with the causal (and segment / window) mask.
    query_indices: [B, P] int (no cache): queries only at these positions (keys/values from all T,
      masks taken at the queries' own slots); the output is [B, P, D].
    cache: ``(k [B, KV, S, hd], v [B, KV, S, hd], lengths [B])`` (heads-major, the layout the decode
      matmuls read) with ``lengths`` the number of slots filled *before* this call; the T new keys are
      written at slots ``lengths .. lengths + T``. ``lengths`` None: the rows start afresh (a fresh
      prefill): the T keys are written at slots ``0 .. T`` and the queries attend causally among the T
      new tokens only, not over all S slots. float32 on CPU (the XLA implementation, no
      ``attention_block``) attends with :func:`grouped_cache_attention` on the cache as stored.
    kernels: ``fused_qkv`` (one QKV matmul) and ``attention_block`` (the online-softmax kernel, its
      statistics in ``policy.softmax_dtype``); the default is the training kernels.
    Returns (y [B, T, D] compute dtype, (k, v) updated or None).
    """
    compute = policy.compute_dtype
    x = x.astype(compute)
    biases = (q_bias, k_bias, v_bias)
    if kernels.fused_qkv:
        if query_indices is not None:
            raise ValueError("kernels.fused_qkv: not supported together with query_indices")
        q, k, v = _fused_qkv(x, q_proj, k_proj, v_proj, biases, compute)
        q = apply_rope(q, *rope)
        k = apply_rope(k, *rope)
    else:
        if query_indices is None:
            q = apply_rope(_project(x, q_proj, q_bias, compute), *rope)
        else:
            if cache is not None:
                raise ValueError("query_indices: not supported together with a KV cache")
            take = lambda a: jnp.take_along_axis(a, query_indices[:, :, None], axis=1)  # noqa: E731
            q = apply_rope(_project(take(x), q_proj, q_bias, compute), *(take(r) for r in rope))
        k = apply_rope(_project(x, k_proj, k_bias, compute), *rope)
        v = _project(x, v_proj, v_bias, compute)
    new_cache = None
    if cache is None:
        mask = None
        is_causal = segment_ids is None and attention_allowed is None and query_indices is None
        if not is_causal:
            mask = attention_mask(
                x.shape[1], x.shape[1], segment_ids=segment_ids, sliding_window=sliding_window,
                allowed=attention_allowed,
            )
        if query_indices is not None:  # the rows of the queries' own slots
            mask = jnp.broadcast_to(mask, (x.shape[0],) + mask.shape[1:])
            mask = jnp.take_along_axis(mask, query_indices[:, None, :, None], axis=2)
    else:
        if segment_ids is not None or attention_allowed is not None:
            raise ValueError("segment_ids / attention_allowed: not supported together with a KV cache "
                             "(decode one sequence per row)")
        cache_k, cache_v, lengths = cache
        if lengths is None:
            # the rows start afresh: the T tokens go to slots 0..T-1 and attend among themselves only
            # (the no-cache causal attention, not all S slots under a mask)
            if x.shape[1] > cache_k.shape[2]:
                raise ValueError(f"cache: {x.shape[1]} tokens do not fit a cache of {cache_k.shape[2]} slots")
            start = (0,) * cache_k.ndim
            cache_k = jax.lax.dynamic_update_slice(cache_k, jnp.swapaxes(k, 1, 2).astype(cache_k.dtype), start)
            cache_v = jax.lax.dynamic_update_slice(cache_v, jnp.swapaxes(v, 1, 2).astype(cache_v.dtype), start)
            new_cache = (cache_k, cache_v)
            k = k.astype(cache_k.dtype).astype(q.dtype)  # what a later step reads back from the cache
            v = v.astype(cache_v.dtype).astype(q.dtype)
            return _attend_and_project(q, k, v, o_proj, None, True, sliding_window, implementation, kernels,
                                       policy, compute), new_cache
        cache_k = _write_slots(cache_k, k, lengths)
        cache_v = _write_slots(cache_v, v, lengths)
        new_cache = (cache_k, cache_v)
        mask = attention_mask(
            x.shape[1],
            cache_k.shape[2],
            query_offset=lengths,
            key_valid_length=lengths + x.shape[1],
            sliding_window=sliding_window,
        )
        is_causal = False
        k, v = cache_k.astype(q.dtype), cache_v.astype(q.dtype)
        if (kernels.attention_block is None and q.dtype == jnp.float32 and implementation in (None, "xla")
                and jax.default_backend() == "cpu"):
            out = grouped_cache_attention(q, k, v, mask)  # the cache as stored: [B, KV, S, hd]
            return _grouped_output_projection(out, o_proj.astype(compute)), new_cache
        k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # the other kernels take [B, S, KV, hd]
    return _attend_and_project(q, k, v, o_proj, mask, is_causal, sliding_window, implementation, kernels,
                               policy, compute), new_cache


def _attend_and_project(q, k, v, o_proj, mask, is_causal, sliding_window, implementation, kernels, policy, compute):
    """The attention kernel the options pick, on q [B, T, H, hd], k, v [B, S, KV, hd], then o_proj."""
    if kernels.attention_block is not None:
        if mask is None:  # the online kernel takes an explicit mask
            mask = attention_mask(q.shape[1], k.shape[1], sliding_window=sliding_window)
        out = online_softmax_attention(q, k, v, mask, block=kernels.attention_block,
                                       softmax_dtype=policy.softmax_dtype)
    else:
        out = dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, sliding_window=sliding_window,
                                    implementation=implementation)
    return jnp.einsum("btnh,nhd->btd", out, o_proj.astype(compute))


class Attention(nnx.Module):
    """Multi-head attention with grouped KV heads (GQA), RoPE, optional q/k/v bias.

    Weights: q_proj [D, H, hd], k_proj/v_proj [D, KV, hd], o_proj [H, hd, D].
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        qkv_bias: bool = False,
        sliding_window: int | None = None,
        implementation: Implementation = None,
        init_std: float = 0.02,
        policy: DtypePolicy | str | None = None,
        rngs: nnx.Rngs,
    ):
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_kv_heads: must divide num_heads ({num_heads}), got {num_kv_heads}"
            )
        if implementation not in (None, "xla", "cudnn"):
            raise ValueError(
                f"attention implementation: expected None, 'xla' or 'cudnn', got {implementation!r}"
            )
        self.policy = get_policy(policy)
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.sliding_window = sliding_window
        self.implementation = implementation
        dtype = self.policy.param_dtype
        d = hidden_size
        self.q_proj = param(rngs, (d, num_heads, head_dim), ("embed", "heads", "head_dim"), std=init_std, dtype=dtype)
        self.k_proj = param(rngs, (d, num_kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), std=init_std, dtype=dtype)
        self.v_proj = param(rngs, (d, num_kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), std=init_std, dtype=dtype)
        self.o_proj = param(rngs, (num_heads, head_dim, d), ("heads", "head_dim", "embed"), std=init_std, dtype=dtype)
        if qkv_bias:
            self.q_bias = zeros_param((num_heads, head_dim), ("heads", "head_dim"), dtype=dtype, weight_decay=False)
            self.k_bias = zeros_param((num_kv_heads, head_dim), ("kv_heads", "head_dim"), dtype=dtype, weight_decay=False)
            self.v_bias = zeros_param((num_kv_heads, head_dim), ("kv_heads", "head_dim"), dtype=dtype, weight_decay=False)
        else:
            self.q_bias = self.k_bias = self.v_bias = None

    def __call__(
        self,
        x: jax.Array,
        rope: tuple[jax.Array, jax.Array],
        *,
        segment_ids: jax.Array | None = None,
        cache: tuple[jax.Array, jax.Array, jax.Array] | None = None,
        attention_allowed: jax.Array | None = None,
        query_indices: jax.Array | None = None,
        kernels: KernelOptions = TRAINING_KERNELS,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """x: [B, T, D]; rope: (cos, sin) [B, T, hd] float32. See :func:`attention` for the arguments.

        Returns (y [B, T, D], (k, v) updated or None).
        """
        bias = lambda b: None if b is None else b[...]  # noqa: E731
        return attention(
            x, rope, self.q_proj[...], self.k_proj[...], self.v_proj[...], self.o_proj[...],
            q_bias=bias(self.q_bias), k_bias=bias(self.k_bias), v_bias=bias(self.v_bias), policy=self.policy,
            sliding_window=self.sliding_window, implementation=self.implementation, segment_ids=segment_ids,
            cache=cache, attention_allowed=attention_allowed, query_indices=query_indices, kernels=kernels,
        )

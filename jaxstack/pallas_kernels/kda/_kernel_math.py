"""The per-chunk KDA step shared by the GPU (Triton) and TPU (Mosaic) Pallas kernels.

Written for the intersection of what both Pallas backends lower (checked by cross-lowering tests):
  * no value slicing (Triton) and no ``dynamic_slice`` / ``cumsum`` (Mosaic): rows and columns are
    extracted with masked reductions against a 2-D iota, and loops are ``lax.fori_loop``s;
  * every array is 2-D (``[C, 1]`` / ``[1, K]`` vectors), matmuls are 2-D ``dot_general`` with float32
    accumulation at HIGHEST precision (IEEE float32 on both backends);
  * the in-chunk gate cumsum ``G`` is computed outside the kernel (float32), as fla does.

Numerics: the pairwise decay ``exp(G_i - G_j)`` is formed column by column with the exponent masked to
``-inf`` for ``i < j`` *before* ``exp``, so it is exact and never overflows for any gate (softplus or
safe). ``(I + Akk)^-1`` is never formed: the forward substitution is applied to the right-hand side
directly, ``Vn = (I + Akk)^-1 Diag(beta) (V - (K * e^G) S)`` (FlashKDA's fold; same value as ``U - W S``).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

_HI = lax.Precision.HIGHEST
_F32 = jnp.float32


def _dot(a, b):
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=_HI, preferred_element_type=_F32)


def _dot_tn(a, b):
    """``a^T b`` for 2-D ``a [C, M]``, ``b [C, N]``."""
    return lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=_HI, preferred_element_type=_F32)


def chunk_step(q, k, v, G, beta, S):
    """One chunk. ``q`` (pre-scaled), ``k``, ``G`` ``[C, K]``; ``v`` ``[C, BV]``; ``beta`` ``[C, 1]``;
    ``S`` ``[K, BV]`` (the state entering the chunk). All float32. Returns ``(o [C, BV], S_out)``."""
    C, K = q.shape
    row_c1 = lax.broadcasted_iota(jnp.int32, (C, 1), 0)
    col_cc = lax.broadcasted_iota(jnp.int32, (C, C), 1)
    zero = jnp.zeros((C, C), _F32)

    def column(j, carry):
        Aqk, Akk = carry
        sel = row_c1 == j
        kj = jnp.sum(jnp.where(sel, k, 0.0), axis=0, keepdims=True)           # [1, K]
        Gj = jnp.sum(jnp.where(sel, G, 0.0), axis=0, keepdims=True)           # [1, K]
        diff = G - Gj
        d_ge = jnp.exp(jnp.where(row_c1 >= j, diff, -jnp.inf))                 # mask before exp
        d_gt = jnp.exp(jnp.where(row_c1 > j, diff, -jnp.inf))
        a_qk = jnp.sum(q * kj * d_ge, axis=1, keepdims=True)                   # [C, 1]
        a_kk = jnp.sum(k * kj * d_gt, axis=1, keepdims=True)
        at_j = col_cc == j
        return jnp.where(at_j, a_qk, Aqk), jnp.where(at_j, a_kk, Akk)

    Aqk, Akk = lax.fori_loop(0, C, column, (zero, zero))
    Akk = Akk * beta

    eG = jnp.exp(G)                                                            # G <= 0
    rhs = beta * (v - _dot(k * eG, S))                                         # [C, BV]

    def substitute(j, R):
        # Row j of R is final; remove its contribution from the later rows (column j of Akk).
        rj = jnp.sum(jnp.where(row_c1 == j, R, 0.0), axis=0, keepdims=True)    # [1, BV]
        lj = jnp.sum(jnp.where(col_cc == j, Akk, 0.0), axis=1, keepdims=True)  # [C, 1]
        return R - lj * rj

    Vn = lax.fori_loop(0, C, substitute, rhs)
    o = _dot(q * eG, S) + _dot(Aqk, Vn)

    GC = jnp.sum(jnp.where(row_c1 == C - 1, G, 0.0), axis=0, keepdims=True)    # [1, K] last row
    kg = k * jnp.exp(GC - G)                                                   # exponent <= 0
    # Row-scale S by exp(GC) without transposing a vector: diag(exp(GC)) S = (I * exp(GC))^T-free form.
    row_k = lax.broadcasted_iota(jnp.int32, (K, K), 0)
    col_k = lax.broadcasted_iota(jnp.int32, (K, K), 1)
    decay = jnp.where(row_k == col_k, jnp.exp(GC), 0.0)                        # diag(exp(G_C)) [K, K]
    S_out = _dot(decay, S) + _dot_tn(kg, Vn)
    return o, S_out

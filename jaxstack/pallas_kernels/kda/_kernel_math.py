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


# --------------------------------------------------------------------------------------------------
# Backward. Per chunk, with q pre-scaled, S the state entering the chunk, dSo the cotangent of the
# state leaving it and do the cotangent of o (forward quantities as in chunk_step; T = (I + Akk)^-1):
#
#   u = v - (K e^G) S,  Vn = T Diag(beta) u,  dVn = Aqk^T do + Kg dSo          (Kg = K e^(G_C - G))
#   drhs = T^T dVn                                     (back substitution; dv = beta * drhs)
#   dS_in = (Q e^G)^T do + Diag(e^G_C) dSo - (K e^G)^T Diag(beta) drhs          (the dh recurrence)
#   dAqk = tril(do Vn^T),  dAkk = -stril(drhs Vn^T),  dbeta = rowsum(drhs * u) + rowsum(dAkk * Akk0)
#
# and the decay-weighted Gram matrices A[i, j] = sum_d x_id k_jd exp(G_id - G_jd) are differentiated
# column by column with the same masked-before-exp factors as the forward (dG = x dx - k dk_right,
# exact for the pairwise form). dG is the gradient wrt the in-chunk cumsum G; the caller turns it into
# dg with a reverse in-chunk cumsum. dS_in does not depend on S, so the dh scan needs no states.
# --------------------------------------------------------------------------------------------------


def _dot_nt(a, b):
    """``a b^T`` for 2-D ``a [M, D]``, ``b [N, D]``."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=_HI, preferred_element_type=_F32)


def _col(x, j, col):
    """Column ``j`` of ``x [R, C]`` as ``[R, 1]`` (masked reduction; no value slicing)."""
    return jnp.sum(jnp.where(col == j, x, 0.0), axis=1, keepdims=True)


def _row(x, j, row):
    """Row ``j`` of ``x [R, C]`` as ``[1, C]``."""
    return jnp.sum(jnp.where(row == j, x, 0.0), axis=0, keepdims=True)


def grams(q, k, G):
    """``(Aqk, Akk0)`` ``[C, C]``: ``Aqk`` lower incl. the diagonal, ``Akk0`` strictly lower, beta not
    folded in (``A[i, j] = sum_d x_id k_jd exp(G_id - G_jd)``, exponent masked before exp)."""
    C, _ = q.shape
    row_c1 = lax.broadcasted_iota(jnp.int32, (C, 1), 0)
    col_cc = lax.broadcasted_iota(jnp.int32, (C, C), 1)
    zero = jnp.zeros((C, C), _F32)

    def column(j, carry):
        Aqk, Akk = carry
        kj = _row(k, j, row_c1)
        diff = G - _row(G, j, row_c1)
        d_ge = jnp.exp(jnp.where(row_c1 >= j, diff, -jnp.inf))
        d_gt = jnp.exp(jnp.where(row_c1 > j, diff, -jnp.inf))
        at_j = col_cc == j
        Aqk = jnp.where(at_j, jnp.sum(q * kj * d_ge, axis=1, keepdims=True), Aqk)
        Akk = jnp.where(at_j, jnp.sum(k * kj * d_gt, axis=1, keepdims=True), Akk)
        return Aqk, Akk

    return lax.fori_loop(0, C, column, (zero, zero))


def solve_lower(L, R):
    """``(I + L)^-1 R`` for strictly lower ``L [C, C]`` (forward substitution), ``R [C, N]``."""
    C = L.shape[0]
    row_c1 = lax.broadcasted_iota(jnp.int32, (C, 1), 0)
    col_cc = lax.broadcasted_iota(jnp.int32, (C, C), 1)

    def step(j, R):
        return R - _col(L, j, col_cc) * _row(R, j, row_c1)

    return lax.fori_loop(0, C, step, R)


def solve_upper_t(L, R):
    """``(I + L)^-T R`` for strictly lower ``L [C, C]`` (back substitution), ``R [C, N]``.

    Row ``i`` of the solution is final once rows ``> i`` are; it is then removed from the earlier rows
    with weights ``L[i, :]``, taken as a column of ``L^T`` (formed by a matmul with the identity, which
    both backends lower; a value transpose is not needed)."""
    C = L.shape[0]
    row_c1 = lax.broadcasted_iota(jnp.int32, (C, 1), 0)
    row_cc = lax.broadcasted_iota(jnp.int32, (C, C), 0)
    col_cc = lax.broadcasted_iota(jnp.int32, (C, C), 1)
    LT = _dot_tn(L, jnp.where(row_cc == col_cc, 1.0, 0.0).astype(_F32))

    def step(t, R):
        i = C - 1 - t
        return R - _col(LT, i, col_cc) * _row(R, i, row_c1)

    return lax.fori_loop(0, C, step, R)


def _last_row(G):
    C = G.shape[0]
    return _row(G, C - 1, lax.broadcasted_iota(jnp.int32, (C, 1), 0))


def _diag_scale(d, K):
    """``Diag(d)`` for a ``[1, K]`` row ``d`` as a ``[K, K]`` matrix (row-scales by a matmul)."""
    row_k = lax.broadcasted_iota(jnp.int32, (K, K), 0)
    col_k = lax.broadcasted_iota(jnp.int32, (K, K), 1)
    return jnp.where(row_k == col_k, d, 0.0)


def chunk_dstate(q, k, G, beta, do, dSo):
    """The dh recurrence for one chunk: ``dS_in [K, BV]`` from ``dSo [K, BV]`` (state cotangent leaving
    the chunk) and ``do [C, BV]``. ``q`` pre-scaled, ``q, k, G [C, K]``, ``beta [C, 1]``. float32."""
    K = q.shape[1]
    Aqk, Akk0 = grams(q, k, G)
    Akk = Akk0 * beta
    eG = jnp.exp(G)
    GC = _last_row(G)
    kg = k * jnp.exp(GC - G)                                                   # exponent <= 0
    dVn = _dot_tn(Aqk, do) + _dot(kg, dSo)
    drhs = solve_upper_t(Akk, dVn)
    return (_dot_tn(q * eG, do) + _dot(_diag_scale(jnp.exp(GC), K), dSo)
            - _dot_tn(k * eG, beta * drhs))


def chunk_bwd(q, k, v, G, beta, S, do, dSo):
    """Gradients of one chunk given the entering state ``S [K, BV]`` and the cotangents ``do [C, BV]``,
    ``dSo [K, BV]``. ``q`` pre-scaled; ``q, k, G [C, K]``; ``v [C, BV]``; ``beta [C, 1]``. float32.

    Returns ``(dq_scaled [C, K], dk [C, K], dv [C, BV], dG [C, K], dbeta [C, 1])`` where ``dq_scaled``
    is the gradient wrt the pre-scaled q (multiply by ``scale``). With V split into blocks, every output
    except ``dv`` is this block's partial sum (the caller adds the blocks)."""
    C, K = q.shape
    BV = v.shape[1]
    row_c1 = lax.broadcasted_iota(jnp.int32, (C, 1), 0)
    row_cc = lax.broadcasted_iota(jnp.int32, (C, C), 0)
    col_cc = lax.broadcasted_iota(jnp.int32, (C, C), 1)

    Aqk, Akk0 = grams(q, k, G)
    Akk = Akk0 * beta
    eG = jnp.exp(G)
    keG = k * eG
    u = v - _dot(keG, S)
    Vn = solve_lower(Akk, beta * u)
    GC = _last_row(G)
    eGk = jnp.exp(GC - G)                                                      # exponent <= 0
    kg = k * eGk

    dVn = _dot_tn(Aqk, do) + _dot(kg, dSo)
    drhs = solve_upper_t(Akk, dVn)
    dAqk = jnp.where(row_cc >= col_cc, _dot_nt(do, Vn), 0.0)
    dAkk = jnp.where(row_cc > col_cc, -_dot_nt(drhs, Vn), 0.0)
    dv = beta * drhs
    dbeta = jnp.sum(drhs * u, axis=1, keepdims=True) + jnp.sum(dAkk * Akk0, axis=1, keepdims=True)
    dAkk0 = beta * dAkk
    dqeG = _dot_nt(do, S)                                                      # d(q e^G)
    dkeG = -_dot_nt(beta * drhs, S)                                            # d(k e^G)
    dkg = _dot_nt(Vn, dSo)                                                     # d(k e^(G_C - G))

    def column(j, carry):
        dq_l, dk_l, dk_r = carry
        kj = _row(k, j, row_c1)
        diff = G - _row(G, j, row_c1)
        e_ge = jnp.exp(jnp.where(row_c1 >= j, diff, -jnp.inf))                 # mask before exp
        e_gt = jnp.exp(jnp.where(row_c1 > j, diff, -jnp.inf))
        aq = _col(dAqk, j, col_cc)                                             # [C, 1]
        ak = _col(dAkk0, j, col_cc)
        dq_l = dq_l + aq * kj * e_ge
        dk_l = dk_l + ak * kj * e_gt
        rj = jnp.sum(aq * q * e_ge + ak * k * e_gt, axis=0, keepdims=True)     # [1, K]
        return dq_l, dk_l, jnp.where(row_c1 == j, rj, dk_r)

    zero = jnp.zeros((C, K), _F32)
    dq_l, dk_l, dk_r = lax.fori_loop(0, C, column, (zero, zero, zero))

    dq = dq_l + eG * dqeG
    dk = dk_l + dk_r + eG * dkeG + eGk * dkg
    dG = q * dq_l + k * dk_l - k * dk_r + q * eG * dqeG + keG * dkeG - kg * dkg
    # G_C (the last row of G) also scales the carried state and every row of kg.
    ones = jnp.ones((C, BV), _F32)
    dGC = jnp.exp(GC) * _dot_nt(ones, S * dSo) + jnp.sum(kg * dkg, axis=0, keepdims=True)  # rows equal
    dG = dG + jnp.where(row_c1 == C - 1, dGC, 0.0)
    return dq, dk, dv, dG, dbeta


def bwd_chunk_kernel(q_ref, k_ref, v_ref, g_ref, b_ref, do_ref, s_ref, dh_ref,
                     dq_ref, dk_ref, dv_ref, dg_ref, db_ref, *, scale):
    """The per-chunk backward kernel body shared by the GPU and TPU forms: loads one chunk's blocks
    (any dtype), runs :func:`chunk_bwd` in float32 and stores dq, dk, dv, dG, dbeta."""
    f32 = lambda r: r[...].astype(jnp.float32)
    dq, dk, dv, dG, db = chunk_bwd(f32(q_ref) * scale, f32(k_ref), f32(v_ref), f32(g_ref), f32(b_ref),
                                   f32(s_ref), f32(do_ref), f32(dh_ref))
    dq_ref[...] = dq * scale
    dk_ref[...] = dk
    dv_ref[...] = dv
    dg_ref[...] = dG
    db_ref[...] = db

"""Chunkwise KDA in plain ``jnp``/``lax`` (the ``"xla"`` backend, and the backward of the Pallas paths).

Per (batch, head, chunk of C tokens), with ``q`` pre-scaled and ``G = cumsum(g)`` restarting at every
chunk (so ``G`` is non-increasing along the chunk, ``G <= 0``)::

    Aqk[i, j] =          sum_d q_id k_jd exp(G_id - G_jd)   for i >= j, else 0      [C, C]
    Akk[i, j] = beta_i * sum_d k_id k_jd exp(G_id - G_jd)   for i >  j, else 0      [C, C]
    Tinv      = (I + Akk)^-1                    (unit lower-triangular, forward substitution)
    W = Tinv Diag(beta) (K * exp(G)),  U = Tinv Diag(beta) V                          (WY / UT form)
    Vn = U - W S                                         (pseudo-values; S = state entering the chunk)
    O  = (Q * exp(G)) S + Aqk Vn
    S' = Diag(exp(G_C)) S + (K * exp(G_C - G))^T Vn                  (G_C = the chunk's last row of G)

Work layout: everything except the state recurrence is batched over all chunks at once (einsums with
a chunk axis); the ``lax.scan`` over chunks only carries the state (``Vn = U - W S`` and the state
update, two ``[C, K] x [K, V]`` matmuls per step), and ``O`` is computed for all chunks afterwards from
the stacked per-chunk entering states (fla's chunk algorithm).

Numerics (why the code looks the way it does):
  * Pairwise decays ``exp(G_i - G_j)`` are only ever formed with ``i >= j`` (exponent <= 0). The chunk
    is split into sub-chunks of ``BC = gcd(C, 8)`` tokens (:func:`decay_gram`):
      - diagonal sub-chunk blocks are exact: the ``[BC, BC, K]`` exponent tensor is masked to ``-inf``
        *before* ``exp`` (masking after exp gives ``inf * 0 = NaN`` gradients at strong decay);
      - off-diagonal blocks (row sub-chunk r > column sub-chunk c) factor the decay through two
        reference points, ``b_r = G[first row of r]`` and ``e_c = G[last row of c]``:
        ``exp(G_i - b_r) * exp(b_r - e_c) * exp(e_c - G_j)``, all three exponents <= 0 (the middle one
        masked to -inf before exp when r <= c). Nothing overflows even for the unbounded softplus
        gate; the only exps are ``C*BC*K + O(C*K)`` per chunk, and each row sub-chunk is one
        ``[BC, K] x [K, C]`` matmul.
    Their VJP is hand-written (recompute the factors; ``dG = q*dq + k*dk_lhs - k*dk_rhs``, exact for
    the pairwise form, so no gradient flows through the reference points).
  * ``Tinv`` is a blocked forward substitution (8-row diagonal blocks merged with matmuls) with a
    closed-form VJP (``dL = -tril(T^T dT T^T, -1)``).
  * The function is ``jax.checkpoint``-ed with a policy that keeps only Aqk, Akk, Tinv ([C, C] per
    chunk) and the states / pseudo-values of the chunk scan (``[K, V]`` per chunk, ``[C, V]`` per
    chunk): the backward recomputes the cheap elementwise parts but neither the intra-chunk matrices
    nor the sequential scan. Memory is O(T * (C + V) + T / C * K * V) per head, as fla's kernels store.
Computation is float32 (float64 for float64 inputs); the state and the gate cumsum never leave it.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from jaxstack.pallas_kernels.kda import _common

_HI = lax.Precision.HIGHEST
# Sub-chunk length BC of the intra-chunk factoring (BC = gcd(C, SUB_CHUNK)). Diagonal sub-chunk blocks
# cost C*BC*K exps per chunk (exact, elementwise); the off-diagonal blocks are batched matmuls through
# reference points. 8 measured fastest on CPU at C = 32 and 64 (16: the exact blocks cost more than
# the larger matmuls save; 4: too many tiny matmuls).
SUB_CHUNK = 8
# chunk_size must be a multiple of this (or a power of two below it).
_CHUNK_MULTIPLE = 8


def _einsum(spec, *xs):
    return jnp.einsum(spec, *xs, precision=_HI)


def _sub_chunk(C, sub_chunk):
    return math.gcd(int(C), int(sub_chunk))


@jax.custom_vjp
def unit_lower_inverse(L):
    """``(I + L)^-1`` for strictly lower-triangular ``L`` (``[..., C, C]``).

    Only the strict lower triangle of ``L`` is read. Diagonal blocks of up to 8 rows are inverted by
    forward substitution (row i of ``X`` is ``e_i - L[i, :i] X[:i]``); blocks are then merged
    pairwise with matmuls, ``[[A, 0], [B, D]]^-1 = [[A^-1, 0], [-D^-1 B A^-1, D^-1]]``.
    """
    return _unit_lower_inverse_fwd(L)[0]


def _substitute(L):
    C = L.shape[-1]
    eye = jnp.eye(C, dtype=L.dtype)
    X = jnp.broadcast_to(eye, L.shape)
    for i in range(1, C):                                    # static: C <= 8
        xi = eye[i] - jnp.einsum("...m,...mn->...n", L[..., i, :i], X[..., :i, :], precision=_HI)
        X = X.at[..., i, :].set(xi)
    return X


def _blocked_inverse(L):
    C = L.shape[-1]
    if C <= 8 or C % 2:
        return _substitute(L)
    h = C // 2
    Ai = _blocked_inverse(L[..., :h, :h])
    Di = _blocked_inverse(L[..., h:, h:])
    Bi = -_einsum("...ij,...jk,...kl->...il", Di, L[..., h:, :h], Ai)
    top = jnp.concatenate([Ai, jnp.zeros_like(Ai)], axis=-1)
    return jnp.concatenate([top, jnp.concatenate([Bi, Di], axis=-1)], axis=-2)


def _unit_lower_inverse_fwd(L):
    X = _blocked_inverse(jnp.tril(L, -1))
    X = checkpoint_name(X, "kda_Tinv")
    return X, X


def _unit_lower_inverse_bwd(X, dX):
    # X = (I + L)^-1  =>  dL = -X^T dX X^T, restricted to the strict lower triangle the forward read.
    dL = -_einsum("...ji,...jk,...lk->...il", X, dX, X)
    return (jnp.tril(dL, -1),)


unit_lower_inverse.defvjp(_unit_lower_inverse_fwd, _unit_lower_inverse_bwd)


def _in_chunk_cumsum(g):
    """``cumsum`` over the chunk axis (-2) as a matmul with a lower-triangular ones matrix: one
    batched GEMM (XLA:CPU's cumsum is several times slower at these shapes)."""
    C = g.shape[-2]
    return _einsum("ij,...jk->...ik", jnp.tril(jnp.ones((C, C), g.dtype)), g)


# --------------------------------------------------------------------------------------------------
# The decay-weighted Gram matrices, with a hand-written VJP.
#
#   A[s, i, j] = sum_d x[s, i, d] k[j, d] exp(G[i, d] - G[j, d])   for i >= j (0 above the diagonal)
#
# for S stacked left operands x (here q and k), per chunk. Sub-chunks of BC rows:
#   * diagonal BC x BC blocks: exact, exponent masked to -inf before exp ([N, NC, BC, BC, K] exps);
#   * off-diagonal blocks (row block r > column block c) through two reference points, b_r = G at
#     the first row of r and e_c = G at the last row of c (e_c >= b_r since c precedes r):
#       exp(G_i - G_j) = exp(G_i - b_r) * exp(b_r - e_c) * exp(e_c - G_j),
#     all three exponents <= 0, so nothing overflows for any gate. The middle factor only depends on
#     the block pair, so the k-side tensor for row block r is (m[r, c(j)] * k_j exp(e_c - G_j)) and
#     every row block is one [S*BC, K] x [K, C] matmul; exps are O(C*K + NC^2*K) per chunk.
# The backward recomputes these factors (residuals = the inputs) and uses
#   dG = sum_s x_s * dx_s - k * dk,
# which holds for the exact pairwise form, so no derivative flows through the reference points.
# --------------------------------------------------------------------------------------------------


def _ladder(G, BC):
    """``G [N, C, K]`` -> ``row [N, NC, BC, K] = exp(G_i - b_r)``, ``col = exp(e_c - G_j)`` and
    ``m [N, NC(r), NC(c), K] = exp(b_r - e_c)`` for ``r > c`` (exponent masked to -inf otherwise)."""
    N, C, K = G.shape
    NC = C // BC
    Gs = G.reshape(N, NC, BC, K)
    b, e = Gs[:, :, :1], Gs[:, :, -1:]
    rr = jnp.arange(NC)
    lower = (rr[:, None] > rr[None, :])[..., None]
    m = jnp.exp(jnp.where(lower, b[:, :, None, 0] - e[:, None, :, 0], -jnp.inf))
    return jnp.exp(Gs - b), jnp.exp(e - Gs), m


def _diag_decay(G, BC):
    """Exact in-sub-chunk decays ``exp(G_i - G_j)``, ``i >= j``, with the exponent masked to -inf
    before exp (0 above the diagonal): ``[N, NC, BC, BC, K]``."""
    N, C, K = G.shape
    Gs = G.reshape(N, C // BC, BC, K)
    ii = jnp.arange(BC)[:, None]
    jj = jnp.arange(BC)[None, :]
    return jnp.exp(jnp.where((ii >= jj)[..., None], Gs[:, :, :, None] - Gs[:, :, None], -jnp.inf))


def _gram_impl(BC, x, k, G):
    N, S, C, K = x.shape
    NC = C // BC
    xs = x.reshape(N, S, NC, BC, K)
    ks = k.reshape(N, NC, BC, K)
    Ad = _einsum("nsrik,nrijk->nsrij", xs, ks[:, :, None] * _diag_decay(G, BC))   # [N, S, NC, BC, BC]
    eye = jnp.eye(NC, dtype=x.dtype)[:, None, :, None]
    A = (Ad[..., :, :, None, :] * eye).reshape(N, S, C, C)                          # block diagonal
    if NC > 1:
        row, col, m = _ladder(G, BC)
        kt = (m[:, :, :, None, :] * (ks * col)[:, None]).reshape(N, NC, C, K)     # [N, NC(r), C, K]
        A = A + _einsum("nsrik,nrjk->nsrij", xs * row[:, None], kt).reshape(N, S, C, C)
    return A


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gram(BC, x, k, G):
    return _gram_impl(BC, x, k, G)


def _gram_fwd(BC, x, k, G):
    return _gram_impl(BC, x, k, G), (x, k, G)


def _gram_bwd(BC, res, dA):
    x, k, G = res
    N, S, C, K = x.shape
    NC = C // BC
    xs = x.reshape(N, S, NC, BC, K)
    ks = k.reshape(N, NC, BC, K)
    # Diagonal blocks (entries above the diagonal meet E = 0, so dA needs no mask).
    dAd = jnp.einsum("nsricj,rc->nsrij", dA.reshape(N, S, NC, BC, NC, BC), jnp.eye(NC, dtype=dA.dtype))
    E = _diag_decay(G, BC)
    dx = jnp.sum(dAd[..., None] * (ks[:, :, None] * E)[:, None], axis=-2)
    dk = jnp.sum(_einsum("nsrij,nsrik->nrijk", dAd, xs) * E, axis=2)
    if NC > 1:
        # Off-diagonal blocks (m = 0 for c >= r, so again no mask on dA).
        row, col, m = _ladder(G, BC)
        kt = (m[:, :, :, None, :] * (ks * col)[:, None]).reshape(N, NC, C, K)
        dAo = dA.reshape(N, S, NC, BC, C)
        dx = dx + _einsum("nsrij,nrjk->nsrik", dAo, kt) * row[:, None]
        dkt = _einsum("nsrij,nsrik->nrjk", dAo, xs * row[:, None]).reshape(N, NC, NC, BC, K)
        dk = dk + jnp.einsum("nrcjk,nrck->ncjk", dkt, m) * col
    dx = dx.reshape(N, S, C, K)
    dk = dk.reshape(N, C, K)
    dG = jnp.sum(x * dx, axis=1) - k * dk
    return dx, dk, dG


_gram.defvjp(_gram_fwd, _gram_bwd)


def decay_gram(x, k, G, sub_chunk=SUB_CHUNK):
    """``A[..., s, i, j] = sum_d x[..., s, i, d] k[..., j, d] exp(G[..., i, d] - G[..., j, d])`` for
    ``i >= j``, else 0. ``x [..., S, C, K]``, ``k``/``G [..., C, K]`` -> ``[..., S, C, C]``."""
    S, C, K = x.shape[-3:]
    bshape = x.shape[:-3]
    n = math.prod(bshape)
    BC = _sub_chunk(C, sub_chunk)
    A = _gram(BC, x.reshape(n, S, C, K), k.reshape(n, C, K), G.reshape(n, C, K))
    return A.reshape(bshape + (S, C, C))


def intra_chunk(q, k, g, beta, sub_chunk=SUB_CHUNK):
    """Per-chunk matrices. Inputs ``[..., C, K]`` (``beta [..., C]``) in the compute dtype.

    Returns ``(G, Aqk, Akk)``: ``G`` in-chunk cumsum ``[..., C, K]``; ``Aqk`` lower incl. diagonal and
    ``Akk`` strictly lower with beta folded into its rows, both ``[..., C, C]``.
    """
    G = _in_chunk_cumsum(g)
    A = decay_gram(jnp.stack([q, k], axis=-3), k, G, sub_chunk)
    C = q.shape[-2]
    Aqk = A[..., 0, :, :]
    Akk = jnp.where(jnp.tril(jnp.ones((C, C), bool), -1), A[..., 1, :, :], 0) * beta[..., :, None]
    return G, Aqk, Akk


def chunk_core(q, k, v, g, beta, h0, *, scale, segments=None, sub_chunk=SUB_CHUNK):
    """Chunked KDA on the chunk layout.

    Args:
      q, k, g: ``[B, H, NT, C, K]``; v: ``[B, H, NT, C, V]``; beta: ``[B, H, NT, C]`` (compute dtype).
      h0: ``[N, H, K, V]`` initial states (N = B without segments).
      segments: ``None`` for B independent sequences, or a :class:`_common.Segments` (B must be 1)
        describing packed sequences laid out on chunk boundaries.

    Returns:
      ``(o [B, H, NT, C, V], final [N, H, K, V])`` in the compute dtype.
    """
    return _chunk_core(q, k, v, g, beta, h0, segments, scale=scale, sub_chunk=sub_chunk)


def _chunk_prep(q, k, v, g, beta, scale, sub_chunk):
    G, Aqk, Akk = intra_chunk(q, k, g, beta, sub_chunk)
    Aqk, Akk = _name(Aqk, "kda_Aqk"), _name(Akk, "kda_Akk")
    Tinv = unit_lower_inverse(Akk)
    eG = jnp.exp(G)
    GC = G[..., -1:, :]
    W = _einsum("...ij,...jk->...ik", Tinv, beta[..., None] * k * eG)
    U = _einsum("...ij,...jv->...iv", Tinv, beta[..., None] * v)
    qg = q * scale * eG
    kg = k * jnp.exp(GC - G)
    return Aqk * scale, W, U, qg, kg, jnp.exp(GC[..., 0, :])


def _name(x, name):
    return checkpoint_name(x, name)


# What the backward keeps from the forward (everything else is recomputed from the inputs): the
# per-chunk matrices Aqk, Akk, (I + Akk)^-1 ([C, C] per chunk), the state entering each chunk ([K, V]
# per chunk) and the pseudo-values Vn ([C, V] per chunk), i.e. O(T * (C + V) + T / C * K * V) per head.
# This keeps the backward from re-running the intra-chunk work and the sequential state scan.
_SAVED = ("kda_Aqk", "kda_Akk", "kda_Tinv", "kda_states")


def _chunk_core(q, k, v, g, beta, h0, segments, *, scale, sub_chunk):
    # Static config goes through a closure so jax.checkpoint sees only arrays.
    def run(q, k, v, g, beta, h0, segments):
        Aqk, W, U, qg, kg, gC = _chunk_prep(q, k, v, g, beta, scale, sub_chunk)
        xs = tuple(jnp.moveaxis(x, 2, 0) for x in (W, U, kg, gC))   # chunk-major

        # The only sequential part: the state recurrence over chunks (two [C, K] x [K, V] matmuls per
        # step). Outputs are batched over all chunks afterwards.
        def chunk_step(S, x):
            W_c, U_c, kg_c, gC_c = x
            Vn = _name(U_c - _einsum("bhck,bhkv->bhcv", W_c, S), "kda_states")
            return gC_c[..., None] * S + _einsum("bhck,bhcv->bhkv", kg_c, Vn), S

        if segments is None:
            final, S_in = lax.scan(chunk_step, h0, xs)
        else:
            def seg_step(carry, x):
                S, finals = carry
                xc, n, first, last = x
                S = jnp.where(first, h0[n][None], S)
                S, S_c = chunk_step(S, xc)
                finals = lax.dynamic_update_index_in_dim(
                    finals, jnp.where(last, S[0], finals[n]), n, 0)
                return (S, finals), S_c

            S0 = jnp.zeros((1,) + h0.shape[1:], h0.dtype)
            (_, final), S_in = lax.scan(seg_step, (S0, h0),
                                        (xs, segments.seq, segments.first, segments.last))
        S_in = _name(jnp.moveaxis(S_in, 0, 2), "kda_states")           # [B, H, NT, K, V]
        Vn = U - _einsum("...ck,...kv->...cv", W, S_in)
        o = _einsum("...ck,...kv->...cv", qg, S_in) + _einsum("...ij,...jv->...iv", Aqk, Vn)
        return o, final

    policy = jax.checkpoint_policies.save_only_these_names(*_SAVED)
    return jax.checkpoint(run, policy=policy)(q, k, v, g, beta, h0, segments)


def kda_chunk(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
              cu_seqlens=None, chunk_size=64):
    """Chunkwise KDA (same contract as :func:`jaxstack.pallas_kernels.kda.kda` with ``backend="xla"``).

    ``chunk_size`` in {16, 32, 64} (any multiple of 8, or a power of two below 8). T need not be a
    multiple of it (the tail is zero-padded, which is exact).
    """
    _common.validate(q, k, v, g, beta, initial_state, cu_seqlens)
    return run_chunked(chunk_core, q, k, v, g, beta, scale=scale, initial_state=initial_state,
                       output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                       chunk_size=chunk_size)


def run_chunked(core, q, k, v, g, beta, *, scale, initial_state, output_final_state, cu_seqlens,
                chunk_size, compute_dtype=None):
    """Shared driver: padding / varlen packing to the chunk layout, ``core`` call, and unpacking.

    ``core(q, k, v, g, beta, h0, scale=..., segments=...)`` works on the chunk layout (see
    :func:`chunk_core`).
    """
    C = int(chunk_size)
    M = _CHUNK_MULTIPLE
    if C < 1 or (C > M and C % M) or (C < M and C & (C - 1)):
        raise ValueError(f"kda: chunk_size must be a multiple of {M} (or a power of two below), got {C}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    cd = compute_dtype or _common.compute_dtype(q, k, v, g, beta)
    scale = _common.default_scale(scale, K)
    out_dtype = v.dtype
    q, k, v, g, beta = (x.astype(cd) for x in (q, k, v, g, beta))
    cu = _common.as_cu(cu_seqlens)
    N = B if cu is None else cu.shape[0] - 1
    h0 = (jnp.zeros((N, H, K, V), cd) if initial_state is None
          else jnp.asarray(initial_state).astype(cd))

    if cu is None:
        chunks = [_common.to_chunks(x, C) for x in (q, k, v, g, beta)]
        o, final = core(*chunks, h0, scale=scale, segments=None)
        o = _common.from_chunks(o, T)
    else:
        segs, src, valid, pos = _common.varlen_layout(cu, T, C)

        def pack(x):
            s = jnp.take(x[0], src, axis=0)
            s = jnp.where(valid.reshape((-1,) + (1,) * (s.ndim - 1)), s, 0)
            return _common.to_chunks(s[None], C)

        o, final = core(*(pack(x) for x in (q, k, v, g, beta)), h0, scale=scale, segments=segs)
        o = _common.from_chunks(o, o.shape[2] * C)[0]
        o = jnp.take(o, pos, axis=0)
        o = jnp.where((jnp.arange(T) < cu[-1])[:, None, None], o, 0)[None]
    return o.astype(out_dtype), (final if output_final_state else None)


__all__ = ["kda_chunk", "chunk_core", "intra_chunk", "decay_gram", "unit_lower_inverse", "run_chunked"]

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
  * Pairwise decays ``exp(G_i - G_j)`` are only ever formed with ``i >= j`` (exponent <= 0)
    (:func:`decay_gram`):
      - the chunk is cut into diagonal blocks of ``BC`` tokens (``C = BC * 2^m``) that are exact: the
        ``[BC, BC, K]`` exponent tensor is masked to ``-inf`` *before* ``exp`` (masking after exp gives
        ``inf * 0 = NaN`` gradients at strong decay);
      - everything below them is a binary hierarchy of lower-left quadrants: in every 2h-block on the
        diagonal, the h x h quadrant (rows of the second half, columns of the first) factors the decay
        through two reference points, ``b = G[first row of the second half]`` and
        ``e = G[last row of the first half]``: ``exp(G_i - b) * exp(b - e) * exp(e - G_j)``, all three
        exponents <= 0. Nothing overflows even for the unbounded softplus gate; each level is one
        batched ``[h, K] x [K, h]`` matmul, O(C * K) exps, and the matmuls only touch the lower
        triangle.
    Their VJP is hand-written (recompute the factors; ``dG = q*dq + k*dk_lhs - k*dk_rhs``, exact for
    the pairwise form, so no gradient flows through the reference points).
  * ``Tinv`` is a blocked forward substitution (8-row diagonal blocks merged with matmuls) with a
    closed-form VJP (``dL = -tril(T^T dT T^T, -1)``).
  * The chunk-level state recurrence (:func:`state_scan`) has a hand-written VJP: a reverse scan that
    carries ``dS`` (two matmuls per chunk, like the forward); the weight-style gradients are batched
    over all chunks afterwards.
  * The function is ``jax.checkpoint``-ed with a policy that keeps only the raw Gram ``[2, C, C]``,
    ``Tinv`` ``[C, C]``, ``W``/``U`` ``[C, K + V]`` per chunk and the states entering each chunk
    (``[K, V]`` per chunk): the backward recomputes the cheap elementwise parts but neither the
    intra-chunk matrices nor the sequential scan. Memory is O(T * (C + K + V) + T / C * K * V) per head.
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
# Target size BC of the exact diagonal blocks (BC = C / 2^m, the smallest such size >= SUB_CHUNK; see
# _sub_chunk). Diagonal blocks cost C*BC*K exps per chunk; everything below them is assembled from
# lower-left quadrants, one batched matmul per level of the binary hierarchy. On CPU at C = 64, BC = 2
# and 4 measured alike and both faster than 8 (the [BC, BC, K] exact tensor dominates at 8).
SUB_CHUNK = 4
# chunk_size must be a multiple of this (or a power of two below it).
_CHUNK_MULTIPLE = 8


def _einsum(spec, *xs):
    return jnp.einsum(spec, *xs, precision=_HI)


def _sub_chunk(C, sub_chunk):
    """Diagonal block size BC = C / 2^m for the largest m with 2^m | C and C / 2^m >= sub_chunk
    (C itself when sub_chunk >= C)."""
    C, BC = int(C), int(C)
    while BC % 2 == 0 and BC // 2 >= int(sub_chunk):
        BC //= 2
    return BC


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
# for S stacked left operands x (here q and k), per chunk, built bottom-up over a binary hierarchy of
# blocks (C = BC * 2^m):
#   * diagonal BC x BC blocks: exact, exponent masked to -inf before exp ([N, C/BC, BC, BC, K] exps);
#   * then, for h = BC, 2 BC, ..., C/2, every 2h-block on the diagonal is assembled from its two
#     h-blocks and its lower-left h x h quadrant (rows i in the second half, columns j in the first),
#     which factors the decay through two reference points, b = G at the first row of the second half
#     and e = G at the last row of the first half (e >= b since G is non-increasing):
#       exp(G_i - G_j) = exp(G_i - b) * exp(b - e) * exp(e - G_j),
#     all three exponents <= 0, so nothing overflows for any gate. Each quadrant is one
#     [h, K] x [K, h] matmul (batched over all quadrants of the level); the elementwise work is
#     O(C * K) per level, O(C * K * log2(C / BC)) in all, and the matmuls touch only the lower triangle.
# The backward recomputes these factors (residuals = the inputs) and uses
#   dG = sum_s x_s * dx_s - k * dk,
# which holds for the exact pairwise form, so no derivative flows through the reference points.
# --------------------------------------------------------------------------------------------------


def _diag_decay(G, BC):
    """Exact in-block decays ``exp(G_i - G_j)``, ``i >= j``, with the exponent masked to -inf before
    exp (0 above the diagonal): ``G [N, C, K] -> [N, C/BC, BC, BC, K]``."""
    N, C, K = G.shape
    Gs = G.reshape(N, C // BC, BC, K)
    ii = jnp.arange(BC)[:, None]
    jj = jnp.arange(BC)[None, :]
    return jnp.exp(jnp.where((ii >= jj)[..., None], Gs[:, :, :, None] - Gs[:, :, None], -jnp.inf))


def _diag_blocks(x, k, G, BC):
    """The exact diagonal ``BC x BC`` blocks: ``[N, S, C/BC, BC, BC]``."""
    N, S, C, K = x.shape
    NC = C // BC
    E = _diag_decay(G, BC)
    return _einsum("nsrik,nrijk->nsrij", x.reshape(N, S, NC, BC, K), k.reshape(N, NC, BC, K)[:, :, None] * E)


def _diag_blocks_bwd(x, k, G, BC, dAd):
    """VJP of :func:`_diag_blocks` wrt x and k (entries above the diagonal meet E = 0: no mask)."""
    N, S, C, K = x.shape
    NC = C // BC
    E = _diag_decay(G, BC)
    xs = x.reshape(N, S, NC, BC, K)
    ks = k.reshape(N, NC, BC, K)
    dx = jnp.sum(dAd[..., None] * (ks[:, :, None] * E)[:, None], axis=-2)
    dk = jnp.sum(_einsum("nsrij,nsrik->nrijk", dAd, xs) * E, axis=2)
    return dx.reshape(N, S, C, K), dk.reshape(N, C, K)


def _levels(C, BC):
    """Quadrant sizes h of the hierarchy, bottom-up: BC, 2 BC, ..., C / 2."""
    h, out = BC, []
    while h < C:
        out.append(h)
        h *= 2
    return out


def _quadrant_factors(x, k, G, h):
    """Left/right operands of the lower-left quadrants of size ``h``:
    ``P [N, S, nb, h, K] = x_i exp(G_i - b)`` (rows of the second halves) and
    ``Q [N, nb, h, K] = k_j exp(e - G_j) exp(b - e)`` (columns of the first halves), plus the two
    factors alone (for the backward)."""
    N, S, C, K = x.shape
    nb = C // (2 * h)
    Gs = G.reshape(N, nb, 2, h, K)
    b, e = Gs[:, :, 1, :1], Gs[:, :, 0, -1:]
    row = jnp.exp(Gs[:, :, 1] - b)
    col = jnp.exp(e - Gs[:, :, 0]) * jnp.exp(b - e)
    P = x.reshape(N, S, nb, 2, h, K)[:, :, :, 1] * row[:, None]
    Q = k.reshape(N, nb, 2, h, K)[:, :, 0] * col
    return P, Q, row, col


def _gram_impl(BC, x, k, G):
    N, S, C, _ = x.shape
    A = _diag_blocks(x, k, G, BC)                                                 # [N, S, NC, BC, BC]
    for h in _levels(C, BC):
        nb = C // (2 * h)
        P, Q, _, _ = _quadrant_factors(x, k, G, h)
        off = _einsum("nsbik,nbjk->nsbij", P, Q)                                  # [N, S, nb, h, h]
        D = A.reshape(N, S, nb, 2, h, h)
        top = jnp.concatenate([D[:, :, :, 0], jnp.zeros_like(off)], axis=-1)
        bottom = jnp.concatenate([off, D[:, :, :, 1]], axis=-1)
        A = jnp.concatenate([top, bottom], axis=-2)                               # [N, S, nb, 2h, 2h]
    return A.reshape(N, S, C, C)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gram(BC, x, k, G):
    return _gram_impl(BC, x, k, G)


def _gram_fwd(BC, x, k, G):
    return _gram_impl(BC, x, k, G), (x, k, G)


def _gram_bwd(BC, res, dA):
    x, k, G = res
    N, S, C, K = x.shape
    dx = jnp.zeros_like(x)
    dk = jnp.zeros_like(k)
    dB = dA.reshape(N, S, 1, C, C)              # the diagonal blocks still to be split, top-down
    for h in reversed(_levels(C, BC)):
        nb = C // (2 * h)
        r = dB.reshape(N, S, nb, 2, h, 2, h)
        d_off = r[:, :, :, 1, :, 0]                                               # [N, S, nb, h, h]
        dB = jnp.stack([r[:, :, :, 0, :, 0], r[:, :, :, 1, :, 1]], axis=3).reshape(N, S, 2 * nb, h, h)
        P, Q, row, col = _quadrant_factors(x, k, G, h)
        dP = _einsum("nsbij,nbjk->nsbik", d_off, Q) * row[:, None]                # d x (second halves)
        dQ = _einsum("nsbij,nsbik->nbjk", d_off, P) * col                         # d k (first halves)
        dx = dx + jnp.stack([jnp.zeros_like(dP), dP], axis=3).reshape(N, S, C, K)
        dk = dk + jnp.stack([dQ, jnp.zeros_like(dQ)], axis=2).reshape(N, C, K)
    # Diagonal blocks (what is left of dA after the quadrants were split off).
    ddx, ddk = _diag_blocks_bwd(x, k, G, BC, dB)
    dx = dx + ddx
    dk = dk + ddk
    dG = jnp.sum(x * dx, axis=1) - k * dk
    return dx, dk, dG


_gram.defvjp(_gram_fwd, _gram_bwd)


def decay_gram(x, k, G, sub_chunk=None):
    """``A[..., s, i, j] = sum_d x[..., s, i, d] k[..., j, d] exp(G[..., i, d] - G[..., j, d])`` for
    ``i >= j``, else 0. ``x [..., S, C, K]``, ``k``/``G [..., C, K]`` -> ``[..., S, C, C]``."""
    S, C, K = x.shape[-3:]
    sub_chunk = SUB_CHUNK if sub_chunk is None else sub_chunk
    bshape = x.shape[:-3]
    n = math.prod(bshape)
    BC = _sub_chunk(C, sub_chunk)
    A = _gram(BC, x.reshape(n, S, C, K), k.reshape(n, C, K), G.reshape(n, C, K))
    return A.reshape(bshape + (S, C, C))


def intra_chunk(q, k, g, beta, sub_chunk=None):
    """Per-chunk matrices. Inputs ``[..., C, K]`` (``beta [..., C]``) in the compute dtype.

    Returns ``(G, Aqk, Akk)``: ``G`` in-chunk cumsum ``[..., C, K]``; ``Aqk`` lower incl. diagonal and
    ``Akk`` strictly lower with beta folded into its rows, both ``[..., C, C]``.
    """
    G = _in_chunk_cumsum(g)
    # Named (saved by the chunk core's checkpoint policy) *before* beta is folded in: the gradient
    # wrt beta needs the raw Gram, and saving only the product would make the backward re-run it.
    A = _name(decay_gram(jnp.stack([q, k], axis=-3), k, G, sub_chunk), "kda_A")
    C = q.shape[-2]
    Aqk = A[..., 0, :, :]
    Akk = jnp.where(jnp.tril(jnp.ones((C, C), bool), -1), A[..., 1, :, :], 0) * beta[..., :, None]
    return G, Aqk, Akk


def chunk_core(q, k, v, g, beta, h0, *, scale, segments=None, sub_chunk=None):
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
    Tinv = unit_lower_inverse(Akk)
    eG = jnp.exp(G)
    GC = G[..., -1:, :]
    W = _name(_einsum("...ij,...jk->...ik", Tinv, beta[..., None] * k * eG), "kda_WU")
    U = _name(_einsum("...ij,...jv->...iv", Tinv, beta[..., None] * v), "kda_WU")
    qg = q * scale * eG
    kg = k * jnp.exp(GC - G)
    return Aqk * scale, W, U, qg, kg, jnp.exp(GC[..., 0, :])


def _name(x, name):
    return checkpoint_name(x, name)


# What the backward keeps from the forward (everything else is recomputed from the inputs): the raw
# decay Grams ([2, C, C] per chunk, before beta is folded in), (I + Akk)^-1 ([C, C]), W and U
# ([C, K + V]) and the state entering each chunk ([K, V]), i.e. O(T * (C + K + V) + T / C * K * V) per
# head. This keeps the backward from re-running the intra-chunk work and the sequential state scan.
_SAVED = ("kda_A", "kda_Tinv", "kda_WU", "kda_states")


def _chunk_core(q, k, v, g, beta, h0, segments, *, scale, sub_chunk):
    # Static config goes through a closure so jax.checkpoint sees only arrays.
    def run(q, k, v, g, beta, h0, segments):
        Aqk, W, U, qg, kg, gC = _chunk_prep(q, k, v, g, beta, scale, sub_chunk)
        xs = tuple(jnp.moveaxis(x, 2, 0) for x in (W, U, kg, gC))   # chunk-major

        # The only sequential part: the state recurrence over chunks (two [C, K] x [K, V] matmuls per
        # step, and a hand-written reverse scan of the same cost for the backward). Outputs are
        # batched over all chunks afterwards.
        S_in, final = state_scan(h0, *xs, segments)
        S_in = _name(jnp.moveaxis(S_in, 0, 2), "kda_states")           # [B, H, NT, K, V]
        Vn = U - _einsum("...ck,...kv->...cv", W, S_in)
        o = _einsum("...ck,...kv->...cv", qg, S_in) + _einsum("...ij,...jv->...iv", Aqk, Vn)
        return o, final

    policy = jax.checkpoint_policies.save_only_these_names(*_SAVED)
    return jax.checkpoint(run, policy=policy)(q, k, v, g, beta, h0, segments)


# --------------------------------------------------------------------------------------------------
# The chunk-level state recurrence, with a hand-written VJP (a reverse scan carrying dS).
#
#   Vn_c = U_c - W_c S_c,     S_{c+1} = Diag(gC_c) S_c + kg_c^T Vn_c
#
# Backward, with dS = dL/dS_{c+1} (the state leaving chunk c) and dS_in[c] the outside cotangent of S_c:
#   dVn_c = kg_c dS,   dS_c = Diag(gC_c) dS - W_c^T dVn_c + dS_in[c]
#   dU_c = dVn_c,  dW_c = -dVn_c S_c^T,  dkg_c = Vn_c dS^T,  dgC_c = rowsum(S_c * dS)
# Only the two matmuls per chunk are sequential; the weight-style gradients are batched afterwards.
# Residuals: the states entering each chunk (which the forward returns anyway) and the inputs.
# --------------------------------------------------------------------------------------------------


def _step_fwd(S, W_c, U_c, kg_c, gC_c):
    Vn = U_c - _einsum("...ck,...kv->...cv", W_c, S)
    return gC_c[..., None] * S + _einsum("...ck,...cv->...kv", kg_c, Vn)


def _state_scan_impl(h0, W, U, kg, gC, segments):
    if segments is None:
        def step(S, x):
            return _step_fwd(S, *x), S

        final, S_in = lax.scan(step, h0, (W, U, kg, gC))
        return S_in, final

    def seg_step(carry, x):
        S, finals = carry
        xc, n, first, last = x
        S = jnp.where(first, h0[n][None], S)
        S_next = _step_fwd(S, *xc)
        finals = lax.dynamic_update_index_in_dim(finals, jnp.where(last, S_next[0], finals[n]), n, 0)
        return (S_next, finals), S

    S0 = jnp.zeros((1,) + h0.shape[1:], h0.dtype)
    (_, final), S_in = lax.scan(seg_step, (S0, h0), ((W, U, kg, gC), segments.seq, segments.first,
                                                     segments.last))
    return S_in, final


@jax.custom_vjp
def state_scan(h0, W, U, kg, gC, segments):
    """States entering each chunk and the final states of the chunk recurrence (chunk-major inputs).

    Args:
      h0: ``[N, H, K, V]`` initial states; W, kg: ``[NT, B, H, C, K]``; U: ``[NT, B, H, C, V]``;
        gC: ``[NT, B, H, K]`` (the chunk's total decay, ``exp(G_C)``); segments: ``None`` (B
        independent sequences, N = B) or a :class:`_common.Segments` (B = 1, packed sequences).

    Returns:
      ``(S_in [NT, B, H, K, V], final [N, H, K, V])``.
    """
    return _state_scan_impl(h0, W, U, kg, gC, segments)


def _state_scan_fwd(h0, W, U, kg, gC, segments):
    S_in, final = _state_scan_impl(h0, W, U, kg, gC, segments)
    S_in = _name(S_in, "kda_states")
    return (S_in, final), (S_in, W, U, kg, gC, segments)


def _state_scan_bwd(res, cts):
    S_in, W, U, kg, gC, segments = res
    dS_in, dfinal = cts

    def back(dS, S_c, W_c, kg_c, gC_c, dS_in_c):
        dVn = _einsum("...ck,...kv->...cv", kg_c, dS)
        dS_c = gC_c[..., None] * dS - _einsum("...ck,...cv->...kv", W_c, dVn) + dS_in_c
        return dS_c, dVn

    if segments is None:
        def step(dS, x):
            S_c, W_c, kg_c, gC_c, dS_in_c = x
            dS_c, dVn = back(dS, S_c, W_c, kg_c, gC_c, dS_in_c)
            return dS_c, (dVn, dS)

        dh0, (dVn, dS_out) = lax.scan(step, dfinal, (S_in, W, kg, gC, dS_in), reverse=True)
    else:
        def seg_step(carry, x):
            dS, dh0 = carry
            (S_c, W_c, kg_c, gC_c, dS_in_c), n, first, last = x
            # The state leaving a sequence's last chunk is that sequence's final state; the next
            # chunk starts another sequence from its own h0, so nothing flows back across.
            dS = jnp.where(last, dfinal[n][None], dS)
            dS_c, dVn = back(dS, S_c, W_c, kg_c, gC_c, dS_in_c)
            dh0 = lax.dynamic_update_index_in_dim(dh0, jnp.where(first, dS_c[0], dh0[n]), n, 0)
            return (dS_c, dh0), (dVn, dS)

        # A sequence that owns no chunk passes h0 straight to its final state.
        dh0_init = jnp.where((segments.nchunks == 0)[:, None, None, None], dfinal, 0)
        (_, dh0), (dVn, dS_out) = lax.scan(
            seg_step, (jnp.zeros_like(S_in[0]), dh0_init),
            ((S_in, W, kg, gC, dS_in), segments.seq, segments.first, segments.last), reverse=True)
    Vn = U - _einsum("...ck,...kv->...cv", W, S_in)
    dW = -_einsum("...cv,...kv->...ck", dVn, S_in)
    dkg = _einsum("...cv,...kv->...ck", Vn, dS_out)
    dgC = jnp.sum(S_in * dS_out, axis=-1)
    return dh0, dW, dVn, dkg, dgC, None


state_scan.defvjp(_state_scan_fwd, _state_scan_bwd)


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

"""Forward stages of the chunkwise KDA (plain ``jnp``/``lax``), each a pure function.

The stages, in the order :mod:`~jaxstack.pallas_kernels.kda.chunk` composes them (its docstring has the
equations; the hand-written backward of each stage is in :mod:`~jaxstack.pallas_kernels.kda.chunk_bwd`):

  1. :func:`in_chunk_cumsum`: the gate cumsum ``G`` restarting at every chunk;
  2. :func:`gram`: the decay-weighted Gram matrices ``Aqk`` / ``Akk`` (before beta and the scale);
  3. :func:`blocked_inverse`: ``(I + Akk)^-1`` by blocked forward substitution;
  4. :func:`state_scan_fwd`: the chunk-level state recurrence, the only sequential part.

Every array is in the compute dtype (float32, float64 for float64 inputs).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

_HI = lax.Precision.HIGHEST
# Target size BC of the exact diagonal blocks (BC = C / 2^m, the smallest such size >= SUB_CHUNK; see
# sub_chunk_size). Diagonal blocks cost C*BC*K exps per chunk; everything below them is assembled from
# lower-left quadrants, one batched matmul per level of the binary hierarchy. On CPU at C = 64, BC = 2
# and 4 measured alike and both faster than 8 (the [BC, BC, K] exact tensor dominates at 8).
SUB_CHUNK = 4


def einsum_hi(spec, *xs):
    """``jnp.einsum`` at HIGHEST precision (the chunk form must match the float32 oracle)."""
    return jnp.einsum(spec, *xs, precision=_HI)


def sub_chunk_size(C, sub_chunk):
    """Diagonal block size BC = C / 2^m for the largest m with 2^m | C and C / 2^m >= sub_chunk
    (C itself when sub_chunk >= C)."""
    C, BC = int(C), int(C)
    while BC % 2 == 0 and BC // 2 >= int(sub_chunk):
        BC //= 2
    return BC


def in_chunk_cumsum(g):
    """``cumsum`` over the chunk axis (-2) as a matmul with a lower-triangular ones matrix: one
    batched GEMM (XLA:CPU's cumsum is several times slower at these shapes)."""
    C = g.shape[-2]
    return einsum_hi("ij,...jk->...ik", jnp.tril(jnp.ones((C, C), g.dtype)), g)


# --------------------------------------------------------------------------------------------------
# (I + L)^-1 for strictly lower-triangular L.
# --------------------------------------------------------------------------------------------------


def _substitute(L):
    C = L.shape[-1]
    eye = jnp.eye(C, dtype=L.dtype)
    X = jnp.broadcast_to(eye, L.shape)
    for i in range(1, C):                                    # static: C <= 8
        xi = eye[i] - jnp.einsum("...m,...mn->...n", L[..., i, :i], X[..., :i, :], precision=_HI)
        X = X.at[..., i, :].set(xi)
    return X


def blocked_inverse(L):
    """``(I + L)^-1`` for strictly lower-triangular ``L [..., C, C]`` (the upper triangle must be 0).

    Diagonal blocks of up to 8 rows are inverted by forward substitution (row i of ``X`` is
    ``e_i - L[i, :i] X[:i]``); blocks are then merged pairwise with matmuls,
    ``[[A, 0], [B, D]]^-1 = [[A^-1, 0], [-D^-1 B A^-1, D^-1]]``.
    """
    C = L.shape[-1]
    if C <= 8 or C % 2:
        return _substitute(L)
    h = C // 2
    Ai = blocked_inverse(L[..., :h, :h])
    Di = blocked_inverse(L[..., h:, h:])
    Bi = -einsum_hi("...ij,...jk,...kl->...il", Di, L[..., h:, :h], Ai)
    top = jnp.concatenate([Ai, jnp.zeros_like(Ai)], axis=-1)
    return jnp.concatenate([top, jnp.concatenate([Bi, Di], axis=-1)], axis=-2)


# --------------------------------------------------------------------------------------------------
# The decay-weighted Gram matrices.
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
# --------------------------------------------------------------------------------------------------


def diag_decay(G, BC):
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
    E = diag_decay(G, BC)
    return einsum_hi("nsrik,nrijk->nsrij", x.reshape(N, S, NC, BC, K), k.reshape(N, NC, BC, K)[:, :, None] * E)


def levels(C, BC):
    """Quadrant sizes h of the hierarchy, bottom-up: BC, 2 BC, ..., C / 2."""
    h, out = BC, []
    while h < C:
        out.append(h)
        h *= 2
    return out


def quadrant_factors(x, k, G, h):
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


def gram(BC, x, k, G):
    """The Gram matrices above for ``x [N, S, C, K]``, ``k``/``G [N, C, K]`` with diagonal blocks of
    ``BC`` rows: ``[N, S, C, C]``, lower triangle incl. the diagonal (0 above)."""
    N, S, C, _ = x.shape
    A = _diag_blocks(x, k, G, BC)                                                 # [N, S, NC, BC, BC]
    for h in levels(C, BC):
        nb = C // (2 * h)
        P, Q, _, _ = quadrant_factors(x, k, G, h)
        off = einsum_hi("nsbik,nbjk->nsbij", P, Q)                                # [N, S, nb, h, h]
        D = A.reshape(N, S, nb, 2, h, h)
        top = jnp.concatenate([D[:, :, :, 0], jnp.zeros_like(off)], axis=-1)
        bot = jnp.concatenate([off, D[:, :, :, 1]], axis=-1)
        A = jnp.concatenate([top, bot], axis=-2)                                  # [N, S, nb, 2h, 2h]
    return A.reshape(N, S, C, C)


# --------------------------------------------------------------------------------------------------
# The chunk-level state recurrence (chunk-major inputs):
#
#   Vn_c = U_c - W_c S_c,     S_{c+1} = Diag(gC_c) S_c + kg_c^T Vn_c
# --------------------------------------------------------------------------------------------------


def _step(S, W_c, U_c, kg_c, gC_c):
    Vn = U_c - einsum_hi("...ck,...kv->...cv", W_c, S)
    return gC_c[..., None] * S + einsum_hi("...ck,...cv->...kv", kg_c, Vn)


def state_scan_fwd(h0, W, U, kg, gC, segments):
    """States entering each chunk and the final states (see ``chunk.state_scan`` for the shapes).

    With ``segments`` (B = 1, packed sequences) the carry restarts from ``h0[seq]`` at each sequence's
    first chunk, and the state leaving its last chunk is recorded as that sequence's final state.
    """
    if segments is None:
        def step(S, x):
            return _step(S, *x), S

        final, S_in = lax.scan(step, h0, (W, U, kg, gC))
        return S_in, final

    def seg_step(carry, x):
        S, finals = carry
        xc, n, first, last = x
        S = jnp.where(first, h0[n][None], S)
        S_next = _step(S, *xc)
        finals = lax.dynamic_update_index_in_dim(finals, jnp.where(last, S_next[0], finals[n]), n, 0)
        return (S_next, finals), S

    S0 = jnp.zeros((1,) + h0.shape[1:], h0.dtype)
    (_, final), S_in = lax.scan(seg_step, (S0, h0), ((W, U, kg, gC), segments.seq, segments.first,
                                                     segments.last))
    return S_in, final

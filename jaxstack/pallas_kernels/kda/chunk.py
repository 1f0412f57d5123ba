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

Numerics (why the code looks the way it does):
  * Pairwise decays ``exp(G_i - G_j)`` are only ever formed with ``i >= j`` (exponent <= 0). The chunk
    is split into sub-chunks of ``BC = min(16, C)`` tokens:
      - diagonal sub-chunk blocks are exact: the ``[BC, BC, K]`` exponent tensor is masked to ``-inf``
        *before* ``exp`` (masking after exp gives ``inf * 0 = NaN`` gradients at strong decay);
      - off-diagonal blocks (row sub-chunk r > column sub-chunk c) factor the decay through a reference
        point ``gn = G[first row of r]``: ``exp(G_i - gn) * exp(gn - G_j)``, both exponents <= 0 because
        the column tokens precede ``gn`` and the row tokens follow it. So nothing overflows even for the
        unbounded softplus gate, and the pairwise tensors are ``[C, BC, K]`` and ``[C/BC, C, K]`` per chunk instead of ``[C, C, K]``.
  * ``Tinv`` is computed by forward substitution with a closed-form VJP (``dL = -tril(T^T dT T^T, -1)``)
    so reverse mode does not store C intermediate matrices.
  * The whole function is ``jax.checkpoint``-ed and the chunk scan body too: the backward stores only
    the inputs and one ``[K, V]`` state per chunk.
Computation is float32 (float64 for float64 inputs); the state and the gate cumsum never leave it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxstack.pallas_kernels.kda import _common

_HI = lax.Precision.HIGHEST
# Sub-chunk length. The exact diagonal blocks cost C*BC*K exps per chunk and the factored
# off-diagonal ones C*C/BC*K; BC = 8 ~ sqrt(64) balances the two (measured fastest on CPU).
SUB_CHUNK = 8


def _einsum(spec, *xs):
    return jnp.einsum(spec, *xs, precision=_HI)


@jax.custom_vjp
def unit_lower_inverse(L):
    """``(I + L)^-1`` for strictly lower-triangular ``L`` (``[..., C, C]``) by forward substitution.

    Only the strict lower triangle of ``L`` is read. Row i of ``X = (I + L)^-1`` is
    ``e_i - L[i, :i] X[:i]``; rows are produced in order.
    """
    return _unit_lower_inverse_fwd(L)[0]


def _unit_lower_inverse_fwd(L):
    C = L.shape[-1]
    L = jnp.tril(L, -1)
    eye = jnp.eye(C, dtype=L.dtype)
    X0 = jnp.broadcast_to(eye, L.shape)

    def row(i, X):
        Li = lax.dynamic_index_in_dim(L, i, axis=L.ndim - 2, keepdims=False)   # [..., C], zero for >= i
        ei = lax.dynamic_index_in_dim(eye, i, axis=0, keepdims=False)
        xi = ei - jnp.einsum("...m,...mn->...n", Li, X, precision=_HI)
        return lax.dynamic_update_index_in_dim(X, xi, i, axis=X.ndim - 2)

    X = lax.fori_loop(1, C, row, X0)
    return X, X


def _unit_lower_inverse_bwd(X, dX):
    # X = (I + L)^-1  =>  dL = -X^T dX X^T, restricted to the strict lower triangle the forward read.
    dL = -_einsum("...ji,...jk,...lk->...il", X, dX, X)
    return (jnp.tril(dL, -1),)


unit_lower_inverse.defvjp(_unit_lower_inverse_fwd, _unit_lower_inverse_bwd)


def intra_chunk(q, k, g, beta, sub_chunk=SUB_CHUNK):
    """Per-chunk matrices. Inputs ``[..., C, K]`` (``beta [..., C]``) in the compute dtype.

    Returns ``(G, Aqk, Akk)``: ``G`` in-chunk cumsum ``[..., C, K]``; ``Aqk`` lower incl. diagonal and
    ``Akk`` strictly lower with beta folded into its rows, both ``[..., C, C]``.
    """
    C, K = q.shape[-2:]
    BC = min(sub_chunk, C)
    if C % BC:
        raise ValueError(f"chunk_size {C} must be a multiple of the sub-chunk size {BC}")
    NC = C // BC
    G = jnp.cumsum(g, axis=-2)
    bshape = q.shape[:-2]
    Gs, qs, ks = (x.reshape(bshape + (NC, BC, K)) for x in (G, q, k))

    # Diagonal sub-chunk blocks: exact pairwise decay, masked to -inf before exp. One exp tensor serves
    # both matrices (Akk differs only by excluding the diagonal, which is masked on the [BC, BC] result).
    ii = jnp.arange(BC)[:, None]
    jj = jnp.arange(BC)[None, :]
    diff = Gs[..., :, None, :] - Gs[..., None, :, :]                 # [..., NC, BC(i), BC(j), K]
    kD = ks[..., None, :, :] * jnp.exp(jnp.where((ii >= jj)[..., None], diff, -jnp.inf))
    Aqk_d = _einsum("...nik,...nijk->...nij", qs, kD)
    Akk_d = jnp.where(ii > jj, _einsum("...nik,...nijk->...nij", ks, kD), 0.0)

    # Off-diagonal blocks through the reference point gn_r = G at the first row of sub-chunk r: row
    # factor exp(G_i - gn_r) (row i follows gn_r) times column factor exp(gn_r - G_j) for the columns
    # j < r * BC only (they precede gn_r); the others are masked to -inf before exp. Each row block is
    # one [BC, K] x [K, C] matmul.
    gn = Gs[..., :, :1, :]                                             # [..., NC, 1, K]
    qn = qs * jnp.exp(Gs - gn)                                         # exponents <= 0
    kn = ks * jnp.exp(Gs - gn)
    before = (jnp.arange(C)[None, :] < (jnp.arange(NC) * BC)[:, None])[..., None]   # [NC, C, 1]
    kt = k[..., None, :, :] * jnp.exp(jnp.where(before, gn - G[..., None, :, :], -jnp.inf))  # [.., NC, C, K]
    Aqk_o = _einsum("...rik,...rjk->...rij", qn, kt).reshape(bshape + (C, C))
    Akk_o = _einsum("...rik,...rjk->...rij", kn, kt).reshape(bshape + (C, C))

    def block_diag(d):                                                 # [..., NC, BC, BC] -> [..., C, C]
        eye = jnp.eye(NC, dtype=d.dtype)[:, None, :, None]
        return (d[..., :, :, None, :] * eye).reshape(bshape + (C, C))

    Aqk = Aqk_o + block_diag(Aqk_d)
    Akk = (Akk_o + block_diag(Akk_d)) * beta[..., :, None]
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
    Tinv = unit_lower_inverse(Akk)
    eG = jnp.exp(G)
    GC = G[..., -1:, :]
    W = _einsum("...ij,...jk->...ik", Tinv, beta[..., None] * k * eG)
    U = _einsum("...ij,...jv->...iv", Tinv, beta[..., None] * v)
    qg = q * scale * eG
    kg = k * jnp.exp(GC - G)
    return Aqk * scale, W, U, qg, kg, jnp.exp(GC[..., 0, :])


def _chunk_core(q, k, v, g, beta, h0, segments, *, scale, sub_chunk):
    # Static config goes through a closure so jax.checkpoint sees only arrays.
    def run(q, k, v, g, beta, h0, segments):
        Aqk, W, U, qg, kg, gC = _chunk_prep(q, k, v, g, beta, scale, sub_chunk)
        xs = tuple(jnp.moveaxis(x, 2, 0) for x in (Aqk, W, U, qg, kg, gC))   # chunk-major

        def chunk_step(S, x):
            Aqk_c, W_c, U_c, qg_c, kg_c, gC_c = x
            Vn = U_c - _einsum("bhck,bhkv->bhcv", W_c, S)
            o = _einsum("bhck,bhkv->bhcv", qg_c, S) + _einsum("bhij,bhjv->bhiv", Aqk_c, Vn)
            S = gC_c[..., None] * S + _einsum("bhck,bhcv->bhkv", kg_c, Vn)
            return S, o

        step = jax.checkpoint(chunk_step)
        if segments is None:
            S, o = lax.scan(step, h0, xs)
            final = S
        else:
            def seg_step(carry, x):
                S, finals = carry
                xc, n, first, last = x
                S = jnp.where(first, h0[n][None], S)
                S, o = step(S, xc)
                finals = lax.dynamic_update_index_in_dim(
                    finals, jnp.where(last, S[0], finals[n]), n, 0)
                return (S, finals), o

            S0 = jnp.zeros((1,) + h0.shape[1:], h0.dtype)
            (_, final), o = lax.scan(seg_step, (S0, h0),
                                     (xs, segments.seq, segments.first, segments.last))
        return jnp.moveaxis(o, 0, 2), final

    return jax.checkpoint(run)(q, k, v, g, beta, h0, segments)


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
    if C < 1 or (C > SUB_CHUNK and C % SUB_CHUNK) or (C < SUB_CHUNK and C & (C - 1)):
        raise ValueError(f"kda: chunk_size must be a multiple of {SUB_CHUNK} (or a power of two below), got {C}")
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


__all__ = ["kda_chunk", "chunk_core", "intra_chunk", "unit_lower_inverse", "run_chunked"]

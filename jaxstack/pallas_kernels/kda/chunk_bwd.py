"""Hand-written backward of the chunkwise KDA stages (the VJP rules ``chunk.py`` wires in).

One function per forward stage of :mod:`~jaxstack.pallas_kernels.kda.chunk_fwd`; the rest of the
chunk form (elementwise gates, ``W``/``U``, the output) is differentiated by JAX under the checkpoint
policy of ``chunk.py``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxstack.pallas_kernels.kda.chunk_fwd import diag_decay, einsum_hi, levels, quadrant_factors


def inverse_bwd(X, dX):
    """VJP of ``X = (I + L)^-1`` wrt the strictly lower ``L`` the forward read:
    ``dL = -tril(X^T dX X^T, -1)``."""
    dL = -einsum_hi("...ji,...jk,...lk->...il", X, dX, X)
    return jnp.tril(dL, -1)


# --------------------------------------------------------------------------------------------------
# The decay-weighted Gram matrices (chunk_fwd.gram). The backward recomputes the quadrant factors from
# the inputs (the only residuals) and splits dA top-down, level by level, into the quadrants' and the
# diagonal blocks' cotangents. Then
#   dG = sum_s x_s * dx_s - k * dk,
# which holds for the exact pairwise form exp(G_i - G_j), so no derivative flows through the
# reference points b and e.
# --------------------------------------------------------------------------------------------------


def _diag_blocks_bwd(x, k, G, BC, dAd):
    """VJP of the exact diagonal blocks wrt x and k (entries above the diagonal meet E = 0: no mask)."""
    N, S, C, K = x.shape
    NC = C // BC
    E = diag_decay(G, BC)
    xs = x.reshape(N, S, NC, BC, K)
    ks = k.reshape(N, NC, BC, K)
    dx = jnp.sum(dAd[..., None] * (ks[:, :, None] * E)[:, None], axis=-2)
    dk = jnp.sum(einsum_hi("nsrij,nsrik->nrijk", dAd, xs) * E, axis=2)
    return dx.reshape(N, S, C, K), dk.reshape(N, C, K)


def gram_bwd(BC, x, k, G, dA):
    """VJP of ``chunk_fwd.gram(BC, x, k, G)`` for the cotangent ``dA [N, S, C, C]``:
    ``(dx [N, S, C, K], dk [N, C, K], dG [N, C, K])``."""
    N, S, C, K = x.shape
    dx = jnp.zeros_like(x)
    dk = jnp.zeros_like(k)
    dB = dA.reshape(N, S, 1, C, C)              # the diagonal blocks still to be split, top-down
    for h in reversed(levels(C, BC)):
        nb = C // (2 * h)
        r = dB.reshape(N, S, nb, 2, h, 2, h)
        d_off = r[:, :, :, 1, :, 0]                                               # [N, S, nb, h, h]
        dB = jnp.stack([r[:, :, :, 0, :, 0], r[:, :, :, 1, :, 1]], axis=3).reshape(N, S, 2 * nb, h, h)
        P, Q, row, col = quadrant_factors(x, k, G, h)
        dP = einsum_hi("nsbij,nbjk->nsbik", d_off, Q) * row[:, None]              # d x (second halves)
        dQ = einsum_hi("nsbij,nsbik->nbjk", d_off, P) * col                       # d k (first halves)
        dx = dx + jnp.stack([jnp.zeros_like(dP), dP], axis=3).reshape(N, S, C, K)
        dk = dk + jnp.stack([dQ, jnp.zeros_like(dQ)], axis=2).reshape(N, C, K)
    # Diagonal blocks (what is left of dA after the quadrants were split off).
    ddx, ddk = _diag_blocks_bwd(x, k, G, BC, dB)
    dx = dx + ddx
    dk = dk + ddk
    dG = jnp.sum(x * dx, axis=1) - k * dk
    return dx, dk, dG


# --------------------------------------------------------------------------------------------------
# The chunk-level state recurrence (chunk_fwd.state_scan_fwd): a reverse scan carrying dS.
#
# With dS = dL/dS_{c+1} (the state leaving chunk c) and dS_in[c] the outside cotangent of S_c:
#   dVn_c = kg_c dS,   dS_c = Diag(gC_c) dS - W_c^T dVn_c + dS_in[c]
#   dU_c = dVn_c,  dW_c = -dVn_c S_c^T,  dkg_c = Vn_c dS^T,  dgC_c = rowsum(S_c * dS)
# Only the two matmuls per chunk are sequential; the weight-style gradients are batched afterwards.
# Residuals: the states entering each chunk (which the forward returns anyway) and the inputs.
# --------------------------------------------------------------------------------------------------


def state_scan_bwd(S_in, W, U, kg, gC, segments, dS_in, dfinal):
    """VJP of ``chunk.state_scan`` (chunk-major, shapes as there): ``(dh0, dW, dU, dkg, dgC)``."""

    def back(dS, S_c, W_c, kg_c, gC_c, dS_in_c):
        dVn = einsum_hi("...ck,...kv->...cv", kg_c, dS)
        dS_c = gC_c[..., None] * dS - einsum_hi("...ck,...cv->...kv", W_c, dVn) + dS_in_c
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
    Vn = U - einsum_hi("...ck,...kv->...cv", W, S_in)
    dW = -einsum_hi("...cv,...kv->...ck", dVn, S_in)
    dkg = einsum_hi("...cv,...kv->...ck", Vn, dS_out)
    dgC = jnp.sum(S_in * dS_out, axis=-1)
    return dh0, dW, dVn, dkg, dgC

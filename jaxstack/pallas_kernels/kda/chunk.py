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

Modules: this file composes the stages and wires their VJPs and the checkpoint policy (the public
:func:`kda_chunk` and :func:`chunk_core`); the forward stages are in ``chunk_fwd.py``, their hand-written
backward in ``chunk_bwd.py``, the padding / varlen driver (shared with the Pallas paths) in ``runner.py``.
A plain, unoptimised statement of the same algorithm is ``reference.naive_chunk``.

Work layout: everything except the state recurrence is batched over all chunks at once (einsums with
a chunk axis); the ``lax.scan`` over chunks only carries the state (``Vn = U - W S`` and the state
update, two ``[C, K] x [K, V]`` matmuls per step), and ``O`` is computed for all chunks afterwards from
the stacked per-chunk entering states (fla's chunk algorithm).

Numerics (why the code looks the way it does):
  * Pairwise decays ``exp(G_i - G_j)`` are only ever formed with ``i >= j`` (exponent <= 0)
    (:func:`decay_gram`, ``chunk_fwd.gram``):
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
from jax.ad_checkpoint import checkpoint_name

from jaxstack.pallas_kernels.kda import _common, chunk_bwd, chunk_fwd
from jaxstack.pallas_kernels.kda.chunk_fwd import einsum_hi
from jaxstack.pallas_kernels.kda.runner import run_chunked


@jax.custom_vjp
def unit_lower_inverse(L):
    """``(I + L)^-1`` for strictly lower-triangular ``L`` (``[..., C, C]``).

    Only the strict lower triangle of ``L`` is read (``chunk_fwd.blocked_inverse``); the VJP is the
    closed form ``chunk_bwd.inverse_bwd``.
    """
    return _unit_lower_inverse_fwd(L)[0]


def _unit_lower_inverse_fwd(L):
    X = chunk_fwd.blocked_inverse(jnp.tril(L, -1))
    X = checkpoint_name(X, "kda_Tinv")
    return X, X


def _unit_lower_inverse_bwd(X, dX):
    return (chunk_bwd.inverse_bwd(X, dX),)


unit_lower_inverse.defvjp(_unit_lower_inverse_fwd, _unit_lower_inverse_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gram(BC, x, k, G):
    return chunk_fwd.gram(BC, x, k, G)


def _gram_fwd(BC, x, k, G):
    return chunk_fwd.gram(BC, x, k, G), (x, k, G)


def _gram_bwd(BC, res, dA):
    return chunk_bwd.gram_bwd(BC, *res, dA)


_gram.defvjp(_gram_fwd, _gram_bwd)


def decay_gram(x, k, G, sub_chunk=None):
    """``A[..., s, i, j] = sum_d x[..., s, i, d] k[..., j, d] exp(G[..., i, d] - G[..., j, d])`` for
    ``i >= j``, else 0. ``x [..., S, C, K]``, ``k``/``G [..., C, K]`` -> ``[..., S, C, C]``."""
    S, C, K = x.shape[-3:]
    sub_chunk = chunk_fwd.SUB_CHUNK if sub_chunk is None else sub_chunk
    bshape = x.shape[:-3]
    n = math.prod(bshape)
    BC = chunk_fwd.sub_chunk_size(C, sub_chunk)
    A = _gram(BC, x.reshape(n, S, C, K), k.reshape(n, C, K), G.reshape(n, C, K))
    return A.reshape(bshape + (S, C, C))


def intra_chunk(q, k, g, beta, sub_chunk=None):
    """Per-chunk matrices. Inputs ``[..., C, K]`` (``beta [..., C]``) in the compute dtype.

    Returns ``(G, Aqk, Akk)``: ``G`` in-chunk cumsum ``[..., C, K]``; ``Aqk`` lower incl. diagonal and
    ``Akk`` strictly lower with beta folded into its rows, both ``[..., C, C]``.
    """
    G = chunk_fwd.in_chunk_cumsum(g)
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
    W = _name(einsum_hi("...ij,...jk->...ik", Tinv, beta[..., None] * k * eG), "kda_WU")
    U = _name(einsum_hi("...ij,...jv->...iv", Tinv, beta[..., None] * v), "kda_WU")
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
        Vn = U - einsum_hi("...ck,...kv->...cv", W, S_in)
        o = einsum_hi("...ck,...kv->...cv", qg, S_in) + einsum_hi("...ij,...jv->...iv", Aqk, Vn)
        return o, final

    policy = jax.checkpoint_policies.save_only_these_names(*_SAVED)
    return jax.checkpoint(run, policy=policy)(q, k, v, g, beta, h0, segments)


@jax.custom_vjp
def state_scan(h0, W, U, kg, gC, segments):
    """States entering each chunk and the final states of the chunk recurrence (chunk-major inputs).

    ``Vn_c = U_c - W_c S_c``, ``S_{c+1} = Diag(gC_c) S_c + kg_c^T Vn_c`` (``chunk_fwd.state_scan_fwd``);
    the VJP is a reverse scan carrying ``dS`` (``chunk_bwd.state_scan_bwd``).

    Args:
      h0: ``[N, H, K, V]`` initial states; W, kg: ``[NT, B, H, C, K]``; U: ``[NT, B, H, C, V]``;
        gC: ``[NT, B, H, K]`` (the chunk's total decay, ``exp(G_C)``); segments: ``None`` (B
        independent sequences, N = B) or a :class:`_common.Segments` (B = 1, packed sequences).

    Returns:
      ``(S_in [NT, B, H, K, V], final [N, H, K, V])``.
    """
    return chunk_fwd.state_scan_fwd(h0, W, U, kg, gC, segments)


def _state_scan_fwd(h0, W, U, kg, gC, segments):
    S_in, final = chunk_fwd.state_scan_fwd(h0, W, U, kg, gC, segments)
    S_in = _name(S_in, "kda_states")
    return (S_in, final), (S_in, W, U, kg, gC, segments)


def _state_scan_bwd(res, cts):
    S_in, W, U, kg, gC, segments = res
    dS_in, dfinal = cts
    return chunk_bwd.state_scan_bwd(S_in, W, U, kg, gC, segments, dS_in, dfinal) + (None,)


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


__all__ = ["kda_chunk", "chunk_core", "intra_chunk", "decay_gram", "unit_lower_inverse", "state_scan"]

"""KDA forward as a Pallas kernel in the GPU (Triton-backend) form: the state is a loop carry.

Grid ``(N, H, V // BV)``: one program per (sequence, head, V-block). It owns a ``[K, BV]`` float32
state and walks its sequence's chunks in order with ``lax.fori_loop`` (Triton has no scratch memory,
so the state lives in registers as the loop carry). Inputs are in the stream layout built by
``pallas.py``: per head a flat ``[L, D]`` stream in which sequence ``n`` owns chunks
``[cstart[n], cstart[n] + nchunks[n])``; that serves both a batch (N = B, NT chunks each) and packed
varlen sequences. Block shapes must be powers of two (Triton), so ``pallas.py`` pads K and V.

Backward (``pallas_call`` has no reverse-mode rule; ``pallas.py`` wires these into its ``custom_vjp``):
  * :func:`kda_bwd_dh_gpu`: the reverse-chunk ``dh`` scan, same grid and loop-carry shape as the
    forward, walking each sequence's chunks backwards from its final-state cotangent and writing the
    cotangent of every chunk's outgoing state and of the initial state;
  * :func:`kda_bwd_chunk_gpu`: the fused per-chunk dq/dk/dv/dG/dbeta kernel, grid
    ``(chunks, H, V // BV)``, fully parallel; dq/dk/dG/dbeta come back as per-V-block partial sums.
The states entering each chunk come from the forward kernel with ``return_states=True``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jaxstack.pallas_kernels.kda._kernel_math import (
    bwd_chunk_kernel,
    chunk_dstate,
    chunk_step,
)


def _kernel(cstart_ref, nch_ref, q_ref, k_ref, v_ref, g_ref, b_ref, h0_ref, *outs, C, scale, states):
    # states=False: outs = (o, ht). states=True (the backward's recompute): outs = (ht, entering states);
    # o is neither stored nor (after dead-code elimination) computed.
    (ht_ref, st_ref), o_ref = (outs, None) if states else ((outs[1], None), outs[0])
    n = pl.program_id(0)
    c0 = cstart_ref[n]
    nc = nch_ref[n]

    def body(i, S):
        rows = pl.ds(pl.multiple_of((c0 + i) * C, C), C)
        q = q_ref[rows, :].astype(jnp.float32) * scale
        k = k_ref[rows, :].astype(jnp.float32)
        v = v_ref[rows, :].astype(jnp.float32)
        G = g_ref[rows, :].astype(jnp.float32)
        beta = b_ref[rows, :].astype(jnp.float32)
        if states:                                   # the state entering each chunk (for the backward)
            K = S.shape[0]
            st_ref[pl.ds(pl.multiple_of((c0 + i) * K, K), K), :] = S
        o, S = chunk_step(q, k, v, G, beta, S)
        if not states:
            o_ref[rows, :] = o.astype(o_ref.dtype)
        return S

    S = lax.fori_loop(0, nc, body, h0_ref[...].astype(jnp.float32))
    ht_ref[...] = S.astype(ht_ref.dtype)


def kda_fwd_gpu(q, k, v, G, beta, h0, cstart, nchunks, *, chunk_size, scale, block_v=None,
                interpret=False, num_warps=4, num_stages=1, return_states=False):
    """Pallas (Triton form) KDA forward on the stream layout.

    Args:
      q, k, G: ``[H, L, K]`` (G = in-chunk cumsum of g, float32); v: ``[H, L, V]``; beta: ``[H, L, 1]``.
      h0: ``[N, H, K, V]`` float32. cstart, nchunks: int32 ``[N]``. K, V, BV powers of two >= 16.

    Returns:
      ``(o [H, L, V] in v's dtype, ht [N, H, K, V] float32)``; with ``return_states`` (the backward's
      recompute) instead ``(ht, states)``: the state entering every chunk, ``[H, L // chunk_size, K, V]``
      float32 (rows of chunks that no sequence owns are left unwritten: mask them), and no ``o``.
    """
    H, L, K = q.shape
    V = v.shape[-1]
    N = h0.shape[0]
    BV = block_v or min(V, 64)
    if V % BV:
        raise ValueError(f"kda_fwd_gpu: V={V} must be a multiple of block_v={BV}")
    kernel = functools.partial(_kernel, C=chunk_size, scale=scale, states=return_states)
    seq_spec = pl.BlockSpec((N,), lambda n, h, j: (0,))
    stream = lambda D: pl.BlockSpec((None, L, D), lambda n, h, j: (h, 0, 0))
    vstream = pl.BlockSpec((None, L, BV), lambda n, h, j: (h, 0, j))
    state = pl.BlockSpec((None, None, K, BV), lambda n, h, j: (n, h, 0, j))
    params = None
    if not interpret:
        from jax.experimental.pallas import triton as plt
        params = plt.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    out_shape = [jax.ShapeDtypeStruct((H, L, V), v.dtype), jax.ShapeDtypeStruct((N, H, K, V), jnp.float32)]
    out_specs = [vstream, state]
    NT = L // chunk_size
    if return_states:
        out_shape = [out_shape[1], jax.ShapeDtypeStruct((H, NT * K, V), jnp.float32)]
        out_specs = [state, pl.BlockSpec((None, NT * K, BV), lambda n, h, j: (h, 0, j))]
    out = pl.pallas_call(
        kernel,
        out_shape=tuple(out_shape),
        grid=(N, H, V // BV),
        in_specs=[seq_spec, seq_spec, stream(K), stream(K), vstream, stream(K), stream(1), state],
        out_specs=tuple(out_specs),
        compiler_params=params,
        interpret=interpret,
        name="kda_fwd_gpu",
    )(cstart, nchunks, q, k, v, G, beta, h0)
    if return_states:
        return out[0], out[1].reshape(H, NT, K, V)
    return out[0], out[1]


def _triton_params(interpret, num_warps, num_stages):
    if interpret:
        return None
    from jax.experimental.pallas import triton as plt
    return plt.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def _dh_kernel(cstart_ref, nch_ref, q_ref, k_ref, g_ref, b_ref, do_ref, dht_ref, dh_ref, dh0_ref, *,
               C, scale):
    n = pl.program_id(0)
    c0 = cstart_ref[n]
    nc = nch_ref[n]

    def body(i, dS):
        c = c0 + nc - 1 - i                                   # chunks in reverse order
        rows = pl.ds(pl.multiple_of(c * C, C), C)
        K = dS.shape[0]
        dh_ref[pl.ds(pl.multiple_of(c * K, K), K), :] = dS   # cotangent of the state leaving chunk c
        return chunk_dstate(q_ref[rows, :].astype(jnp.float32) * scale,
                            k_ref[rows, :].astype(jnp.float32), g_ref[rows, :].astype(jnp.float32),
                            b_ref[rows, :].astype(jnp.float32), do_ref[rows, :].astype(jnp.float32), dS)

    dS = lax.fori_loop(0, nc, body, dht_ref[...].astype(jnp.float32))
    dh0_ref[...] = dS


def kda_bwd_dh_gpu(q, k, G, beta, do, dht, cstart, nchunks, *, chunk_size, scale, block_v=None,
                   interpret=False, num_warps=4, num_stages=1):
    """Reverse-chunk state-gradient scan (Triton form): the ``dh`` carry walks each sequence's chunks
    backwards, starting from that sequence's final-state cotangent.

    Args:
      q, k, G: ``[H, L, K]``; beta: ``[H, L, 1]``; do: ``[H, L, V]`` (cotangent of o); dht:
      ``[N, H, K, V]`` float32 (cotangent of the final states); cstart, nchunks: int32 ``[N]``.

    Returns:
      ``(dh [H, L // C, K, V], dh0 [N, H, K, V])`` float32: ``dh[:, c]`` is the cotangent of the state
      leaving chunk c (rows of unowned chunks unwritten: mask them), ``dh0`` of the initial states.
    """
    H, L, K = q.shape
    V = do.shape[-1]
    N = dht.shape[0]
    NT = L // chunk_size
    BV = block_v or min(V, 64)
    if V % BV:
        raise ValueError(f"kda_bwd_dh_gpu: V={V} must be a multiple of block_v={BV}")
    kernel = functools.partial(_dh_kernel, C=chunk_size, scale=scale)
    seq_spec = pl.BlockSpec((N,), lambda n, h, j: (0,))
    stream = lambda D: pl.BlockSpec((None, L, D), lambda n, h, j: (h, 0, 0))
    vstream = pl.BlockSpec((None, L, BV), lambda n, h, j: (h, 0, j))
    state = pl.BlockSpec((None, None, K, BV), lambda n, h, j: (n, h, 0, j))
    dh, dh0 = pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((H, NT * K, V), jnp.float32),
                   jax.ShapeDtypeStruct((N, H, K, V), jnp.float32)),
        grid=(N, H, V // BV),
        in_specs=[seq_spec, seq_spec, stream(K), stream(K), stream(K), stream(1), vstream, state],
        out_specs=(pl.BlockSpec((None, NT * K, BV), lambda n, h, j: (h, 0, j)), state),
        compiler_params=_triton_params(interpret, num_warps, num_stages),
        interpret=interpret,
        name="kda_bwd_dh_gpu",
    )(cstart, nchunks, q, k, G, beta, do, dht)
    return dh.reshape(H, NT, K, V), dh0


def kda_bwd_chunk_gpu(q, k, v, G, beta, do, states, dh, *, chunk_size, scale, block_v=None,
                      interpret=False, num_warps=4, num_stages=1):
    """Fused per-chunk KDA backward (Triton form): one program per (chunk, head, V-block), all
    independent, computing dq, dk, dv, dG, dbeta from the recomputed in-chunk matrices, the state
    entering the chunk and the cotangent of the state leaving it.

    Args:
      q, k, G: ``[H, L, K]``; v, do: ``[H, L, V]``; beta: ``[H, L, 1]``; states, dh:
      ``[H, L // C, K, V]`` float32 (entering states from the forward recompute; ``dh`` from
      :func:`kda_bwd_dh_gpu`).

    Returns:
      float32 ``(dq [NV, H, L, K], dk [NV, H, L, K], dv [H, L, V], dG [NV, H, L, K],
      dbeta [NV, H, L, 1])``; ``NV = V // block_v`` partial sums to be added by the caller; ``dq`` is
      wrt the unscaled q; ``dG`` is wrt the in-chunk cumsum G.
    """
    H, L, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    NT = L // C
    BV = block_v or min(V, 64)
    if V % BV:
        raise ValueError(f"kda_bwd_chunk_gpu: V={V} must be a multiple of block_v={BV}")
    NV = V // BV
    kernel = functools.partial(bwd_chunk_kernel, scale=scale)
    blk = lambda D: pl.BlockSpec((None, C, D), lambda c, h, j: (h, c, 0))
    vblk = pl.BlockSpec((None, C, BV), lambda c, h, j: (h, c, j))
    sblk = pl.BlockSpec((None, K, BV), lambda c, h, j: (h, c, j))
    part = lambda D: pl.BlockSpec((None, None, C, D), lambda c, h, j: (j, h, c, 0))
    f32 = jnp.float32
    return pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((NV, H, L, K), f32), jax.ShapeDtypeStruct((NV, H, L, K), f32),
                   jax.ShapeDtypeStruct((H, L, V), f32), jax.ShapeDtypeStruct((NV, H, L, K), f32),
                   jax.ShapeDtypeStruct((NV, H, L, 1), f32)),
        grid=(NT, H, NV),
        in_specs=[blk(K), blk(K), vblk, blk(K), blk(1), vblk, sblk, sblk],
        out_specs=(part(K), part(K), vblk, part(K), part(1)),
        compiler_params=_triton_params(interpret, num_warps, num_stages),
        interpret=interpret,
        name="kda_bwd_chunk_gpu",
    )(q, k, v, G, beta, do, states.reshape(H, NT * K, V), dh.reshape(H, NT * K, V))

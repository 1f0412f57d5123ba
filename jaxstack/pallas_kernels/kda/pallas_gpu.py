"""KDA forward as a Pallas kernel in the GPU (Triton-backend) form: the state is a loop carry.

Grid ``(N, H, V // BV)``: one program per (sequence, head, V-block). It owns a ``[K, BV]`` float32
state and walks its sequence's chunks in order with ``lax.fori_loop`` (Triton has no scratch memory,
so the state lives in registers as the loop carry). Inputs are in the stream layout built by
``pallas.py``: per head a flat ``[L, D]`` stream in which sequence ``n`` owns chunks
``[cstart[n], cstart[n] + nchunks[n])``; that serves both a batch (N = B, NT chunks each) and packed
varlen sequences. Block shapes must be powers of two (Triton), so ``pallas.py`` pads K and V.

Forward only: ``pallas_call`` has no reverse-mode rule; ``pallas.py`` wraps it in a ``custom_vjp``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jaxstack.pallas_kernels.kda._kernel_math import chunk_step


def _kernel(cstart_ref, nch_ref, q_ref, k_ref, v_ref, g_ref, b_ref, h0_ref, o_ref, ht_ref, *, C, scale):
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
        o, S = chunk_step(q, k, v, G, beta, S)
        o_ref[rows, :] = o.astype(o_ref.dtype)
        return S

    S = lax.fori_loop(0, nc, body, h0_ref[...].astype(jnp.float32))
    ht_ref[...] = S.astype(ht_ref.dtype)


def kda_fwd_gpu(q, k, v, G, beta, h0, cstart, nchunks, *, chunk_size, scale, block_v=None,
                interpret=False, num_warps=4, num_stages=1):
    """Pallas (Triton form) KDA forward on the stream layout.

    Args:
      q, k, G: ``[H, L, K]`` (G = in-chunk cumsum of g, float32); v: ``[H, L, V]``; beta: ``[H, L, 1]``.
      h0: ``[N, H, K, V]`` float32. cstart, nchunks: int32 ``[N]``. K, V, BV powers of two >= 16.

    Returns:
      ``(o [H, L, V] in v's dtype, ht [N, H, K, V] float32)``.
    """
    H, L, K = q.shape
    V = v.shape[-1]
    N = h0.shape[0]
    BV = block_v or min(V, 64)
    if V % BV:
        raise ValueError(f"kda_fwd_gpu: V={V} must be a multiple of block_v={BV}")
    kernel = functools.partial(_kernel, C=chunk_size, scale=scale)
    seq_spec = pl.BlockSpec((N,), lambda n, h, j: (0,))
    stream = lambda D: pl.BlockSpec((None, L, D), lambda n, h, j: (h, 0, 0))
    vstream = pl.BlockSpec((None, L, BV), lambda n, h, j: (h, 0, j))
    state = pl.BlockSpec((None, None, K, BV), lambda n, h, j: (n, h, 0, j))
    params = None
    if not interpret:
        from jax.experimental.pallas import triton as plt
        params = plt.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    return pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((H, L, V), v.dtype),
                   jax.ShapeDtypeStruct((N, H, K, V), jnp.float32)),
        grid=(N, H, V // BV),
        in_specs=[seq_spec, seq_spec, stream(K), stream(K), vstream, stream(K), stream(1), state],
        out_specs=(vstream, state),
        compiler_params=params,
        interpret=interpret,
        name="kda_fwd_gpu",
    )(cstart, nchunks, q, k, v, G, beta, h0)

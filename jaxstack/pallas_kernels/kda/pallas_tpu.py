"""KDA forward as a Pallas kernel in the TPU (Mosaic) form: sequential chunk axis, state in VMEM.

Grid ``(H, NT)`` with dimension semantics ``("parallel", "arbitrary")``: the chunk axis runs in order
on one core and the ``[K, V]`` float32 state persists across grid steps in a VMEM scratch buffer.
Per-chunk metadata (owning sequence, first/last flags) is scalar-prefetched into SMEM, so the index
maps of the initial/final-state blocks follow the sequence that owns the current chunk; this one
kernel serves both a batch (N = B sequences of NT chunks, flattened) and packed varlen sequences.
Mosaic lowers neither ``cumsum`` nor ``dynamic_slice``, hence the shared ``_kernel_math`` step.

Forward only: ``pallas.py`` wraps it in a ``custom_vjp``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxstack.pallas_kernels.kda._kernel_math import chunk_step


def _kernel(seq_ref, first_ref, last_ref, q_ref, k_ref, v_ref, g_ref, b_ref, h0_ref, o_ref, ht_ref,
            s_ref, *, scale):
    c = pl.program_id(1)

    @pl.when(first_ref[c] != 0)
    def _():
        s_ref[...] = h0_ref[...].astype(jnp.float32)

    o, S = chunk_step(q_ref[...].astype(jnp.float32) * scale, k_ref[...].astype(jnp.float32),
                      v_ref[...].astype(jnp.float32), g_ref[...].astype(jnp.float32),
                      b_ref[...].astype(jnp.float32), s_ref[...])
    o_ref[...] = o.astype(o_ref.dtype)
    s_ref[...] = S

    @pl.when(last_ref[c] != 0)
    def _():
        ht_ref[...] = S.astype(ht_ref.dtype)


def kda_fwd_tpu(q, k, v, G, beta, h0, seq, first, last, *, chunk_size, scale, interpret=False):
    """Pallas (TPU form) KDA forward on the stream layout.

    Args:
      q, k, G: ``[H, L, K]`` (G float32 in-chunk cumsum); v: ``[H, L, V]``; beta: ``[H, L, 1]``;
      h0: ``[N, H, K, V]`` float32; seq, first, last: int32 ``[L // chunk_size]`` per-chunk metadata.

    Returns:
      ``(o [H, L, V] in v's dtype, ht [N, H, K, V] float32)``. ``ht[n]`` is written only when sequence
      n owns a chunk; the caller substitutes ``h0[n]`` for empty sequences.
    """
    H, L, K = q.shape
    V = v.shape[-1]
    N = h0.shape[0]
    C = chunk_size
    NT = L // C
    kernel = functools.partial(_kernel, scale=scale)
    blk = lambda D: pl.BlockSpec((None, C, D), lambda h, c, *_: (h, c, 0))
    state = pl.BlockSpec((None, None, K, V), lambda h, c, seq_ref, *_: (seq_ref[c], h, 0, 0))
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=3,
        grid=(H, NT),
        in_specs=[blk(K), blk(K), blk(V), blk(K), blk(1), state],
        out_specs=(blk(V), state),
        scratch_shapes=[pltpu.VMEM((K, V), jnp.float32)],
    )
    params = None
    if not interpret:
        params = pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"))
    return pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((H, L, V), v.dtype),
                   jax.ShapeDtypeStruct((N, H, K, V), jnp.float32)),
        grid_spec=grid_spec,
        compiler_params=params,
        interpret=interpret,
        name="kda_fwd_tpu",
    )(seq, first, last, q, k, v, G, beta, h0)

"""KDA forward as a Pallas kernel in the TPU (Mosaic) form: sequential chunk axis, state in VMEM.

Grid ``(H, NT)`` with dimension semantics ``("parallel", "arbitrary")``: the chunk axis runs in order
on one core and the ``[K, V]`` float32 state persists across grid steps in a VMEM scratch buffer.
Per-chunk metadata (owning sequence, first/last flags) is scalar-prefetched into SMEM, so the index
maps of the initial/final-state blocks follow the sequence that owns the current chunk; this one
kernel serves both a batch (N = B sequences of NT chunks, flattened) and packed varlen sequences.
Mosaic lowers neither ``cumsum`` nor ``dynamic_slice``, hence the shared ``_kernel_math`` step.

Backward (wired into ``pallas.py``'s ``custom_vjp``): :func:`kda_bwd_dh_tpu`, the reverse-chunk ``dh``
scan (same grid, chunk axis walked backwards, ``dh`` carry in VMEM scratch), and
:func:`kda_bwd_chunk_tpu`, the fused per-chunk dq/dk/dv/dG/dbeta kernel (grid ``(H, NT)``, all
parallel). The entering states come from the forward with ``return_states=True``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxstack.pallas_kernels.kda._kernel_math import (
    bwd_chunk_kernel,
    chunk_dstate,
    chunk_step,
)


def _kernel(seq_ref, first_ref, last_ref, q_ref, k_ref, v_ref, g_ref, b_ref, h0_ref, *rest, scale,
            states):
    # states=False: rest = (o, ht, scratch). states=True (the backward's recompute): rest = (ht,
    # entering states, scratch); o is neither stored nor (after dead-code elimination) computed.
    if states:
        ht_ref, st_ref, s_ref = rest
    else:
        o_ref, ht_ref, s_ref = rest
    c = pl.program_id(1)

    @pl.when(first_ref[c] != 0)
    def _():
        s_ref[...] = h0_ref[...].astype(jnp.float32)

    if states:                                      # the state entering each chunk (for the backward)
        st_ref[...] = s_ref[...]

    o, S = chunk_step(q_ref[...].astype(jnp.float32) * scale, k_ref[...].astype(jnp.float32),
                      v_ref[...].astype(jnp.float32), g_ref[...].astype(jnp.float32),
                      b_ref[...].astype(jnp.float32), s_ref[...])
    if not states:
        o_ref[...] = o.astype(o_ref.dtype)
    s_ref[...] = S

    @pl.when(last_ref[c] != 0)
    def _():
        ht_ref[...] = S.astype(ht_ref.dtype)


def kda_fwd_tpu(q, k, v, G, beta, h0, seq, first, last, *, chunk_size, scale, interpret=False,
                return_states=False):
    """Pallas (TPU form) KDA forward on the stream layout.

    Args:
      q, k, G: ``[H, L, K]`` (G float32 in-chunk cumsum); v: ``[H, L, V]``; beta: ``[H, L, 1]``;
      h0: ``[N, H, K, V]`` float32; seq, first, last: int32 ``[L // chunk_size]`` per-chunk metadata.

    Returns:
      ``(o [H, L, V] in v's dtype, ht [N, H, K, V] float32)``. ``ht[n]`` is written only when sequence
      n owns a chunk; the caller substitutes ``h0[n]`` for empty sequences. With ``return_states``
      (the backward's recompute) instead ``(ht, states)``: the state entering every chunk,
      ``[H, L // chunk_size, K, V]`` float32 (garbage for chunks no sequence owns: mask them), no ``o``.
    """
    H, L, K = q.shape
    V = v.shape[-1]
    N = h0.shape[0]
    C = chunk_size
    NT = L // C
    kernel = functools.partial(_kernel, scale=scale, states=return_states)
    blk = lambda D: pl.BlockSpec((None, C, D), lambda h, c, *_: (h, c, 0))
    state = pl.BlockSpec((None, None, K, V), lambda h, c, seq_ref, *_: (seq_ref[c], h, 0, 0))
    out_shape = [jax.ShapeDtypeStruct((H, L, V), v.dtype), jax.ShapeDtypeStruct((N, H, K, V), jnp.float32)]
    out_specs = [blk(V), state]
    if return_states:
        out_shape = [out_shape[1], jax.ShapeDtypeStruct((H, NT, K, V), jnp.float32)]
        out_specs = [state, pl.BlockSpec((None, None, K, V), lambda h, c, *_: (h, c, 0, 0))]
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=3,
        grid=(H, NT),
        in_specs=[blk(K), blk(K), blk(V), blk(K), blk(1), state],
        out_specs=tuple(out_specs),
        scratch_shapes=[pltpu.VMEM((K, V), jnp.float32)],
    )
    return pl.pallas_call(
        kernel,
        out_shape=tuple(out_shape),
        grid_spec=grid_spec,
        compiler_params=_params(interpret, ("parallel", "arbitrary")),
        interpret=interpret,
        name="kda_fwd_tpu",
    )(seq, first, last, q, k, v, G, beta, h0)


def _params(interpret, semantics):
    return None if interpret else pltpu.CompilerParams(dimension_semantics=semantics)


def _dh_kernel(seq_ref, first_ref, last_ref, q_ref, k_ref, g_ref, b_ref, do_ref, dht_ref, dh_ref, dh0_ref,
               s_ref, *, scale, NT):
    c = NT - 1 - pl.program_id(1)                              # chunks in reverse order

    @pl.when(last_ref[c] != 0)
    def _():
        s_ref[...] = dht_ref[...].astype(jnp.float32)

    dS = s_ref[...]
    dh_ref[...] = dS                                           # cotangent of the state leaving chunk c
    f32 = lambda r: r[...].astype(jnp.float32)
    dS = chunk_dstate(f32(q_ref) * scale, f32(k_ref), f32(g_ref), f32(b_ref), f32(do_ref), dS)
    s_ref[...] = dS

    @pl.when(first_ref[c] != 0)
    def _():
        dh0_ref[...] = dS


def kda_bwd_dh_tpu(q, k, G, beta, do, dht, seq, first, last, *, chunk_size, scale, interpret=False):
    """Reverse-chunk state-gradient scan (TPU form): grid ``(H, NT)`` with the chunk axis sequential
    and walked backwards (index maps read chunk ``NT - 1 - c``), the ``dh`` carry in a VMEM scratch,
    reset from a sequence's final-state cotangent at its last chunk, written out at its first.

    Args:
      q, k, G: ``[H, L, K]``; beta: ``[H, L, 1]``; do: ``[H, L, V]``; dht: ``[N, H, K, V]`` float32;
      seq, first, last: int32 ``[L // chunk_size]`` per-chunk metadata (as for the forward).

    Returns:
      ``(dh [H, L // C, K, V], dh0 [N, H, K, V])`` float32. ``dh0[n]`` is written only when sequence n
      owns a chunk (the caller substitutes ``dht[n]``); ``dh`` of unowned chunks is garbage (mask it).
    """
    H, L, K = q.shape
    V = do.shape[-1]
    N = dht.shape[0]
    C = chunk_size
    NT = L // C
    kernel = functools.partial(_dh_kernel, scale=scale, NT=NT)
    blk = lambda D: pl.BlockSpec((None, C, D), lambda h, c, *_: (h, NT - 1 - c, 0))
    state = pl.BlockSpec((None, None, K, V), lambda h, c, seq_ref, *_: (seq_ref[NT - 1 - c], h, 0, 0))
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=3,
        grid=(H, NT),
        in_specs=[blk(K), blk(K), blk(K), blk(1), blk(V), state],
        out_specs=(pl.BlockSpec((None, None, K, V), lambda h, c, *_: (h, NT - 1 - c, 0, 0)), state),
        scratch_shapes=[pltpu.VMEM((K, V), jnp.float32)],
    )
    return pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((H, NT, K, V), jnp.float32),
                   jax.ShapeDtypeStruct((N, H, K, V), jnp.float32)),
        grid_spec=grid_spec,
        compiler_params=_params(interpret, ("parallel", "arbitrary")),
        interpret=interpret,
        name="kda_bwd_dh_tpu",
    )(seq, first, last, q, k, G, beta, do, dht)


def kda_bwd_chunk_tpu(q, k, v, G, beta, do, states, dh, *, chunk_size, scale, interpret=False):
    """Fused per-chunk KDA backward (TPU form): grid ``(H, NT)``, both axes parallel, full ``[K, V]``
    state blocks in VMEM; dq, dk, dv, dG, dbeta of one chunk per step.

    Args:
      q, k, G: ``[H, L, K]``; v, do: ``[H, L, V]``; beta: ``[H, L, 1]``; states, dh:
      ``[H, L // C, K, V]`` float32.

    Returns:
      float32 ``(dq, dk [H, L, K], dv [H, L, V], dG [H, L, K], dbeta [H, L, 1])``; dq wrt the unscaled
      q, dG wrt the in-chunk cumsum G.
    """
    H, L, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    NT = L // C
    kernel = functools.partial(bwd_chunk_kernel, scale=scale)
    blk = lambda D: pl.BlockSpec((None, C, D), lambda h, c: (h, c, 0))
    sblk = pl.BlockSpec((None, None, K, V), lambda h, c: (h, c, 0, 0))
    f32 = jnp.float32
    return pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((H, L, K), f32), jax.ShapeDtypeStruct((H, L, K), f32),
                   jax.ShapeDtypeStruct((H, L, V), f32), jax.ShapeDtypeStruct((H, L, K), f32),
                   jax.ShapeDtypeStruct((H, L, 1), f32)),
        grid=(H, NT),
        in_specs=[blk(K), blk(K), blk(V), blk(K), blk(1), blk(V), sblk, sblk],
        out_specs=(blk(K), blk(K), blk(V), blk(K), blk(1)),
        compiler_params=_params(interpret, ("parallel", "parallel")),
        interpret=interpret,
        name="kda_bwd_chunk_tpu",
    )(q, k, v, G, beta, do, states, dh)

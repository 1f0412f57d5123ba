"""The chunk-layout driver shared by the XLA chunk form and the Pallas kernels: padding or varlen
packing onto chunk boundaries, the core call, and the unpacking back to ``[B, T, H, V]``."""

from __future__ import annotations

import jax.numpy as jnp

from jaxstack.pallas_kernels.kda import _common

# chunk_size must be a multiple of this (or a power of two below it).
_CHUNK_MULTIPLE = 8


def run_chunked(core, q, k, v, g, beta, *, scale, initial_state, output_final_state, cu_seqlens,
                chunk_size, compute_dtype=None):
    """Pads (or, with ``cu_seqlens``, packs) the inputs to the chunk layout, calls ``core``, unpacks.

    ``core(q, k, v, g, beta, h0, scale=..., segments=...)`` works on the chunk layout (see
    :func:`jaxstack.pallas_kernels.kda.chunk.chunk_core`). Padding is exact: padded tokens have
    ``g = beta = 0`` and ``q = k = v = 0``, so they neither decay nor write the state. Varlen packing
    starts every sequence on a chunk boundary (``_common.varlen_layout``).

    Returns:
      ``(o [B, T, H, V] in v's dtype, final [B|N, H, K, V] or None)``.
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

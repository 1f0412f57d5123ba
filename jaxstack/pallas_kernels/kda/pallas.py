"""Differentiable wrapper around the Pallas KDA forward kernels (GPU and TPU forms).

``pallas_call`` has no reverse-mode autodiff, so the kernels sit inside a ``jax.custom_vjp``. The
forward is the kernel; the backward is the VJP of the chunked XLA form (``chunk.chunk_core``) at the
same inputs (residuals = the inputs, so memory is O(inputs); the XLA backward recomputes its own
forward). A fused Pallas backward (reverse ``dh`` scan + dq/dk/dv/dg/dbeta) is future work.

Layout work done here, outside the kernels:
  * chunking and varlen packing (shared with the XLA path via ``chunk.run_chunked``);
  * the float32 in-chunk gate cumsum ``G`` (Mosaic cannot lower ``cumsum``);
  * flattening batch and chunks into one per-head stream ``[H, L, D]`` with a sequence table;
  * zero-padding K and V up to powers of two >= 16 (Triton loads and ``dot`` need them; zero channels
    are exact: a zero key channel never writes its state row and a zero value column stays zero).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxstack.pallas_kernels.kda import _common
from jaxstack.pallas_kernels.kda.chunk import chunk_core, run_chunked


def _pad_dim(D):
    return max(16, 1 << (int(D) - 1).bit_length())


def _pad_last(x, D):
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, D - x.shape[-1])])


def _stream(x):
    """``[B, H, NT, C, D] -> [H, B * NT * C, D]``."""
    B, H, NT, C = x.shape[:4]
    return jnp.moveaxis(x, 1, 0).reshape((H, B * NT * C) + x.shape[4:])


def _forward(cfg, q, k, v, g, beta, h0, segments):
    form, interpret, scale = cfg
    B, H, NT, C, K = q.shape
    V = v.shape[-1]
    Kp, Vp = _pad_dim(K), _pad_dim(V)
    segs = _common.batch_segments(B, NT) if segments is None else segments
    G = jnp.cumsum(g.astype(jnp.float32), axis=-2)
    qs, ks, Gs = (_stream(_pad_last(x, Kp)) for x in (q, k, G))
    vs = _stream(_pad_last(v, Vp))
    bs = _stream(beta[..., None])
    h0p = jnp.pad(h0.astype(jnp.float32), [(0, 0), (0, 0), (0, Kp - K), (0, Vp - V)])
    if form == "gpu":
        from jaxstack.pallas_kernels.kda.pallas_gpu import kda_fwd_gpu
        o, ht = kda_fwd_gpu(qs, ks, vs, Gs, bs, h0p, segs.cstart, segs.nchunks, chunk_size=C,
                            scale=scale, interpret=interpret)
    elif form == "tpu":
        from jaxstack.pallas_kernels.kda.pallas_tpu import kda_fwd_tpu
        i32 = lambda x: x.astype(jnp.int32)
        o, ht = kda_fwd_tpu(qs, ks, vs, Gs, bs, h0p, i32(segs.seq), i32(segs.first), i32(segs.last),
                            chunk_size=C, scale=scale, interpret=interpret)
        # A sequence that owns no chunk is never visited: its final state is its initial state.
        ht = jnp.where((segs.nchunks > 0)[:, None, None, None], ht, h0p)
    else:
        raise ValueError(f"kda_pallas: form must be 'gpu' or 'tpu', got {form!r}")
    o = o[..., :V].reshape(H, B, NT, C, V)
    return jnp.moveaxis(o, 0, 1), ht[:, :, :K, :V]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _pallas_core(cfg, q, k, v, g, beta, h0, segments):
    return _forward(cfg, q, k, v, g, beta, h0, segments)


def _pallas_core_fwd(cfg, q, k, v, g, beta, h0, segments):
    return _forward(cfg, q, k, v, g, beta, h0, segments), (q, k, v, g, beta, h0, segments)


def _pallas_core_bwd(cfg, res, cts):
    q, k, v, g, beta, h0, segments = res
    scale = cfg[2]
    _, vjp = jax.vjp(lambda *a: chunk_core(*a, scale=scale, segments=segments), q, k, v, g, beta, h0)
    return (*vjp(cts), None)


_pallas_core.defvjp(_pallas_core_fwd, _pallas_core_bwd)


def kda_pallas(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
               cu_seqlens=None, form="gpu", interpret=False, chunk_size=16):
    """KDA through a Pallas kernel; same contract as :func:`jaxstack.pallas_kernels.kda.kda`.

    ``form``: ``"gpu"`` (Triton-style, state as loop carry) or ``"tpu"`` (Mosaic-style, VMEM state).
    ``interpret=True`` runs either on CPU. ``chunk_size`` in {16, 32, 64}. Computes in float32.
    """
    _common.validate(q, k, v, g, beta, initial_state, cu_seqlens)
    if chunk_size not in (16, 32, 64):
        raise ValueError(f"kda_pallas: chunk_size must be 16, 32 or 64, got {chunk_size}")

    def core(q, k, v, g, beta, h0, *, scale, segments):
        return _pallas_core((form, bool(interpret), float(scale)), q, k, v, g, beta, h0, segments)

    return run_chunked(core, q, k, v, g, beta, scale=scale, initial_state=initial_state,
                       output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                       chunk_size=chunk_size, compute_dtype=jnp.float32)


__all__ = ["kda_pallas"]

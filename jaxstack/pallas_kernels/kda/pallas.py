"""Differentiable wrapper around the Pallas KDA kernels (GPU and TPU forms), forward and backward.

``pallas_call`` has no reverse-mode autodiff, so the kernels sit inside a ``jax.custom_vjp``. The
forward is the forward kernel. The backward is selectable with ``bwd``:

  * ``bwd="pallas"`` (default): three kernel launches, no XLA work beyond layout and two cumsums:
      1. the forward kernel again with ``return_states=True`` -> the state entering every chunk
         ``[H, NT, K, V]`` (recomputed, see below; this variant neither stores nor computes ``o``);
      2. the reverse-chunk ``dh`` scan (``kda_bwd_dh_{gpu,tpu}``) -> the cotangent of the state leaving
         every chunk ``[H, NT, K, V]`` and of the initial states, respecting varlen sequence boundaries
         (each sequence starts from its own final-state cotangent; its ``dh0`` is what leaves its first
         chunk; an empty sequence passes ``dht`` straight to ``dh0``);
      3. the fused per-chunk kernel (``kda_bwd_chunk_{gpu,tpu}``), fully parallel over chunks ->
         dq, dk, dv, dbeta and dG (the gradient wrt the in-chunk gate cumsum; ``dg`` is its reverse
         in-chunk cumsum, done here in float32).
    Both forms share the per-chunk math in ``_kernel_math.py`` (``chunk_dstate``, ``chunk_bwd``).
  * ``bwd="xla"``: the VJP of the chunked XLA form (``chunk.chunk_core``) at the same inputs.

Memory trade-off (``bwd="pallas"``): the residuals are the inputs only (O(inputs), as for ``"xla"``);
the per-chunk states are *recomputed* in the backward by one extra forward-kernel pass instead of being
saved by the forward. Saving them would cost ``T / C * K * V`` float32 per head and sequence for the
whole time between forward and backward (at C = 16, K = V = 128 that is 4 KiB per token and head, about
4x a bf16 q/k/v/g input set, and it would multiply with the number of layers under remat-free
training); recomputing costs one forward pass without the output (the intra-chunk matrices and
the substitution are still recomputed, so roughly a third of the backward's work). The backward
holds the states and ``dh`` (``2 * T / C * K * V`` float32 per head) only transiently.

What the GPU benchmark (``benchmarks/kda.py --gpu``) should compare for the backward: fwd+bwd time of
``backend="pallas"`` with ``bwd="pallas"`` vs ``bwd="xla"`` (same Pallas forward, XLA chunk backward),
vs fla's Triton ``chunk_kda`` fwd+bwd, at T >= 16k where launch overheads stop dominating; expect the
``dh`` scan (sequential over chunks, parallel only over N * H * V / BV programs) to be the long pole
at small B * H.

Layout work done here, outside the kernels:
  * chunking and varlen packing (shared with the XLA path via ``runner.run_chunked``);
  * the float32 in-chunk gate cumsum ``G`` (Mosaic cannot lower ``cumsum``) and, in the backward, the
    reverse cumsum turning ``dG`` into ``dg``;
  * flattening batch and chunks into one per-head stream ``[H, L, D]`` with a sequence table;
  * zero-padding K and V up to powers of two >= 16 (Triton loads and ``dot`` need them; zero channels
    are exact: a zero key channel never writes its state row and a zero value column stays zero);
  * summing the GPU backward's per-V-block partial dq/dk/dG/dbeta, and zeroing states / ``dh`` of the
    padding chunks no sequence owns (varlen), which the kernels leave unwritten.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxstack.pallas_kernels.kda import _common
from jaxstack.pallas_kernels.kda.chunk import chunk_core
from jaxstack.pallas_kernels.kda.runner import run_chunked


def _pad_dim(D):
    return max(16, 1 << (int(D) - 1).bit_length())


def _pad_last(x, D):
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, D - x.shape[-1])])


def _stream(x):
    """``[B, H, NT, C, D] -> [H, B * NT * C, D]``."""
    B, H, NT, C = x.shape[:4]
    return jnp.moveaxis(x, 1, 0).reshape((H, B * NT * C) + x.shape[4:])


BWDS = ("pallas", "xla")


def _forward(cfg, q, k, v, g, beta, h0, segments):
    form, interpret, scale = cfg[:3]
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
    form, interpret, scale, bwd = cfg
    if bwd == "pallas":
        return (*_backward(cfg, q, k, v, g, beta, h0, segments, *cts), None)
    _, vjp = jax.vjp(lambda *a: chunk_core(*a, scale=scale, segments=segments), q, k, v, g, beta, h0)
    return (*vjp(cts), None)


def _backward(cfg, q, k, v, g, beta, h0, segments, do, dht):
    """The Pallas backward on the chunk layout (see the module docstring). Returns the cotangents of
    ``(q, k, v, g, beta, h0)`` in their dtypes."""
    form, interpret, scale, _ = cfg
    B, H, NT, C, K = q.shape
    V = v.shape[-1]
    Kp, Vp = _pad_dim(K), _pad_dim(V)
    segs = _common.batch_segments(B, NT) if segments is None else segments
    f32 = jnp.float32
    G = jnp.cumsum(g.astype(f32), axis=-2)
    qs, ks, Gs = (_stream(_pad_last(x, Kp)) for x in (q, k, G))
    vs = _stream(_pad_last(v, Vp))
    dos = _stream(_pad_last(do.astype(f32), Vp))
    bs = _stream(beta[..., None])
    pad_state = lambda x: jnp.pad(x.astype(f32), [(0, 0), (0, 0), (0, Kp - K), (0, Vp - V)])
    h0p, dhtp = pad_state(h0), pad_state(dht)
    kw = dict(chunk_size=C, scale=scale, interpret=interpret)
    if form == "gpu":
        from jaxstack.pallas_kernels.kda import pallas_gpu as kern
        _, states = kern.kda_fwd_gpu(qs, ks, vs, Gs, bs, h0p, segs.cstart, segs.nchunks,
                                     return_states=True, **kw)
        dh, dh0 = kern.kda_bwd_dh_gpu(qs, ks, Gs, bs, dos, dhtp, segs.cstart, segs.nchunks, **kw)
    elif form == "tpu":
        from jaxstack.pallas_kernels.kda import pallas_tpu as kern
        i32 = lambda x: x.astype(jnp.int32)
        meta = (i32(segs.seq), i32(segs.first), i32(segs.last))
        _, states = kern.kda_fwd_tpu(qs, ks, vs, Gs, bs, h0p, *meta, return_states=True, **kw)
        dh, dh0 = kern.kda_bwd_dh_tpu(qs, ks, Gs, bs, dos, dhtp, *meta, **kw)
        # A sequence that owns no chunk is never visited: its final state is its initial state.
        dh0 = jnp.where((segs.nchunks > 0)[:, None, None, None], dh0, dhtp)
    else:
        raise ValueError(f"kda_pallas: form must be 'gpu' or 'tpu', got {form!r}")
    # Chunks past the last packed sequence are owned by nobody: the kernels leave (or fill) them with
    # garbage; zero them so the per-chunk kernel sees a clean zero state (its inputs there are zeros).
    in_use = (jnp.arange(B * NT) < jnp.sum(segs.nchunks))[None, :, None, None]
    states = jnp.where(in_use, states, 0.0)
    dh = jnp.where(in_use, dh, 0.0)
    if form == "gpu":
        dq, dk, dv, dG, db = kern.kda_bwd_chunk_gpu(qs, ks, vs, Gs, bs, dos, states, dh, **kw)
        dq, dk, dG, db = (jnp.sum(x, axis=0) for x in (dq, dk, dG, db))      # V-block partial sums
    else:
        dq, dk, dv, dG, db = kern.kda_bwd_chunk_tpu(qs, ks, vs, Gs, bs, dos, states, dh, **kw)

    def unstream(x, D):
        x = x[..., :D].reshape(H, B, NT, C, D)
        return jnp.moveaxis(x, 0, 1)

    dq, dk, dG = (unstream(x, K) for x in (dq, dk, dG))
    dv = unstream(dv, V)
    db = unstream(db, 1)[..., 0]
    dg = jnp.flip(jnp.cumsum(jnp.flip(dG, -2), axis=-2), -2)                  # G = cumsum(g) in-chunk
    dh0 = dh0[:, :, :K, :V]
    return tuple(d.astype(x.dtype) for d, x in zip((dq, dk, dv, dg, db, dh0), (q, k, v, g, beta, h0)))


_pallas_core.defvjp(_pallas_core_fwd, _pallas_core_bwd)


def kda_pallas(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
               cu_seqlens=None, form="gpu", interpret=False, chunk_size=16, bwd="pallas"):
    """KDA through a Pallas kernel; same contract as :func:`jaxstack.pallas_kernels.kda.kda`.

    ``form``: ``"gpu"`` (Triton-style, state as loop carry) or ``"tpu"`` (Mosaic-style, VMEM state).
    ``interpret=True`` runs either on CPU. ``chunk_size`` in {16, 32, 64}. Computes in float32.
    ``bwd``: ``"pallas"`` (the fused Pallas backward kernels of the same form) or ``"xla"`` (the VJP of
    the chunked XLA form); see the module docstring.
    """
    _common.validate(q, k, v, g, beta, initial_state, cu_seqlens)
    if chunk_size not in (16, 32, 64):
        raise ValueError(f"kda_pallas: chunk_size must be 16, 32 or 64, got {chunk_size}")
    if form not in ("gpu", "tpu"):
        raise ValueError(f"kda_pallas: form must be 'gpu' or 'tpu', got {form!r}")
    if bwd not in BWDS:
        raise ValueError(f"kda_pallas: bwd must be one of {BWDS}, got {bwd!r}")

    def core(q, k, v, g, beta, h0, *, scale, segments):
        return _pallas_core((form, bool(interpret), float(scale), bwd), q, k, v, g, beta, h0, segments)

    return run_chunked(core, q, k, v, g, beta, scale=scale, initial_state=initial_state,
                       output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                       chunk_size=chunk_size, compute_dtype=jnp.float32)


__all__ = ["kda_pallas"]

"""Kimi Delta Attention (KDA) as pure functions: reference, chunked XLA, and Pallas GPU/TPU kernels.

Public entry point::

    o, final_state = kda(q, k, v, g, beta, *, scale=None, initial_state=None,
                         output_final_state=False, cu_seqlens=None, backend="auto")

Shapes: q, k, g ``[B, T, H, K]``; v ``[B, T, H, V]``; beta ``[B, T, H]``; states ``[B, H, K, V]``
(``[N, H, K, V]`` with ``cu_seqlens [N + 1]``, B = 1). ``g`` is a per-channel log-decay (``<= 0``),
beta is post-sigmoid. Per head, with state ``S [K, V]``::

    S_t = (I - beta_t k_t k_t^T) Diag(exp g_t) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T (scale q_t)

``o`` has v's dtype; states and gate cumsums are float32 (float64 when the inputs are float64).

Backends: ``"reference"`` (token ``lax.scan``, the oracle), ``"xla"`` (chunked jnp, see ``chunk.py``),
``"pallas"`` (Triton-style kernel on GPU, Mosaic-style kernel on TPU; on CPU the GPU-form kernel runs in
interpret mode), ``"auto"`` (pallas on GPU/TPU, xla on CPU). All are differentiable; the Pallas paths use
a ``jax.custom_vjp`` whose backward is a fused Pallas backward of the same form (reverse ``dh`` scan +
per-chunk dq/dk/dv/dg/dbeta kernel; ``kda_pallas(..., bwd="xla")`` selects the VJP of the chunked XLA
form instead, see ``pallas.py``).

Also: :func:`kda_decode_step` (one token, for inference), the gates :func:`kda_gate_softplus`,
:func:`kda_gate_lower_bound` (in ``gates.py``), and ``reference.naive_chunk``, the chunk algorithm written
out plainly (a test oracle beside the token recurrence, not a backend). The ``"xla"`` chunk form is split
as fla splits its ops: ``chunk.py`` (entry, VJP wiring), ``chunk_fwd.py``, ``chunk_bwd.py``, ``runner.py``
(padding / varlen driver shared with the Pallas paths).
"""

from __future__ import annotations

import jax

from jaxstack.pallas_kernels.kda import _common
from jaxstack.pallas_kernels.kda.chunk import kda_chunk
from jaxstack.pallas_kernels.kda.gates import kda_gate_lower_bound, kda_gate_softplus
from jaxstack.pallas_kernels.kda.reference import kda_decode_step, kda_reference

BACKENDS = ("auto", "reference", "xla", "pallas")


def _default_platform():
    return jax.default_backend()


def resolve_backend(backend: str, platform: str | None = None) -> str:
    """Maps ``backend`` to one of ``reference``/``xla``/``pallas_gpu``/``pallas_tpu``/``pallas_interpret``."""
    if backend not in BACKENDS:
        raise ValueError(f"kda: backend must be one of {BACKENDS}, got {backend!r}")
    platform = platform or _default_platform()
    if backend == "auto":
        backend = "pallas" if platform in ("gpu", "cuda", "rocm", "tpu") else "xla"
    if backend != "pallas":
        return backend
    if platform in ("gpu", "cuda", "rocm"):
        return "pallas_gpu"
    if platform == "tpu":
        return "pallas_tpu"
    return "pallas_interpret"


def kda(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
        cu_seqlens=None, backend="auto", chunk_size=None):
    """Kimi Delta Attention over a sequence (see the module docstring for the math).

    Args:
      q, k: ``[B, T, H, K]`` queries / keys (L2-normalise them first, as Kimi Linear does).
      v: ``[B, T, H, V]`` values. Output dtype = ``v.dtype``.
      g: ``[B, T, H, K]`` log-space decay, ``<= 0`` (e.g. from :func:`kda_gate_softplus`).
      beta: ``[B, T, H]`` write strength in ``[0, 1]``.
      scale: q scale, default ``K ** -0.5``.
      initial_state: ``[B, H, K, V]`` (``[N, H, K, V]`` with cu_seqlens), float; default zeros.
      output_final_state: if True also return the final state, else ``None`` in its place.
      cu_seqlens: int ``[N + 1]`` start offsets of packed sequences (B must be 1), FlashAttention style.
      backend: ``"auto" | "reference" | "xla" | "pallas"``.
      chunk_size: chunk length for the chunked backends (default 64 for xla, 16 for pallas).

    Returns:
      ``(o [B, T, H, V], final_state [B|N, H, K, V] float32 or None)``.
    """
    _common.validate(q, k, v, g, beta, initial_state, cu_seqlens)
    kind = resolve_backend(backend)
    kw = dict(scale=scale, initial_state=initial_state, output_final_state=output_final_state,
              cu_seqlens=cu_seqlens)
    if kind == "reference":
        return kda_reference(q, k, v, g, beta, **kw)
    if kind == "xla":
        return kda_chunk(q, k, v, g, beta, chunk_size=chunk_size or 64, **kw)
    from jaxstack.pallas_kernels.kda import pallas  # imports Pallas lazily

    form = {"pallas_gpu": "gpu", "pallas_tpu": "tpu", "pallas_interpret": "gpu"}[kind]
    return pallas.kda_pallas(q, k, v, g, beta, form=form, interpret=(kind == "pallas_interpret"),
                             chunk_size=chunk_size or 16, **kw)


__all__ = ["kda", "kda_reference", "kda_chunk", "kda_decode_step", "kda_gate_softplus",
           "kda_gate_lower_bound", "resolve_backend", "BACKENDS"]

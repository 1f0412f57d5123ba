"""KDA gate activations: raw gate logits -> per-channel log-decay ``g <= 0`` (float32).

Two forms (fla ``fla/ops/kda/gate.py``):

* softplus (what the released Kimi-Linear-48B uses; unbounded decay)::

      g = -exp(A_log[h]) * softplus(g_raw + dt_bias[h])

* lower-bound "safe gate" (bounded in ``[lower_bound, 0)``)::

      g = lower_bound * sigmoid(exp(A_log[h]) * (g_raw + dt_bias[h]))      (A_log may be None)

Shapes: ``g_raw [..., H, K]``; ``A_log [H]``; ``dt_bias [H * K]`` (checkpoint layout) or ``[H, K]``.
Both are plain ``jnp`` so autodiff gives their gradients; the closed forms (tested) are

    softplus: dg/dg_raw = -exp(A_log) sigmoid(x),   dg/dA_log = g,   dg/ddt_bias = dg/dg_raw
    lower:    dg/dg_raw = lower_bound exp(A_log) s (1 - s),  s = sigmoid(exp(A_log) x)

with ``x = g_raw + dt_bias``. Computed in float32 whatever the input dtype (bf16 would round every
decay above 0.998 to 1.0, i.e. a channel that never forgets).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _prep(g_raw, A_log, dt_bias, name):
    if g_raw.ndim < 2:
        raise ValueError(f"{name}: g_raw must be [..., H, K], got shape {tuple(g_raw.shape)}")
    H, K = g_raw.shape[-2:]
    x = g_raw.astype(jnp.float32)
    if dt_bias is not None:
        dt_bias = jnp.asarray(dt_bias)
        if dt_bias.shape == (H * K,):
            dt_bias = dt_bias.reshape(H, K)
        if dt_bias.shape != (H, K):
            raise ValueError(f"{name}: dt_bias must be [H*K]={H * K} or [H, K]={(H, K)}, got {tuple(dt_bias.shape)}")
        x = x + dt_bias.astype(jnp.float32)
    a = None
    if A_log is not None:
        A_log = jnp.asarray(A_log)
        if A_log.size != H:
            raise ValueError(f"{name}: A_log must have H={H} entries, got shape {tuple(A_log.shape)}")
        a = jnp.exp(A_log.reshape(H).astype(jnp.float32))[:, None]       # [H, 1]
    return x, a


def kda_gate_softplus(g_raw, A_log, dt_bias=None):
    """``g = -exp(A_log[h]) * softplus(g_raw + dt_bias[h])``, float32 ``[..., H, K]``, ``g <= 0``."""
    x, a = _prep(g_raw, A_log, dt_bias, "kda_gate_softplus")
    sp = jax.nn.softplus(x)  # log1p(exp(-|x|)) + max(x, 0): no overflow for large x
    return -sp if a is None else -a * sp


def kda_gate_lower_bound(g_raw, A_log=None, dt_bias=None, *, lower_bound=-5.0):
    """Safe gate ``g = lower_bound * sigmoid(exp(A_log[h]) * (g_raw + dt_bias[h]))`` in ``[lower_bound, 0)``.

    ``lower_bound`` must be negative (fla requires ``[-5, 0)`` for its bounded-gate fast path; any
    negative value is valid here).
    """
    if not lower_bound < 0:
        raise ValueError(f"kda_gate_lower_bound: lower_bound must be < 0, got {lower_bound}")
    x, a = _prep(g_raw, A_log, dt_bias, "kda_gate_lower_bound")
    return lower_bound * jax.nn.sigmoid(x if a is None else a * x)


__all__ = ["kda_gate_softplus", "kda_gate_lower_bound"]

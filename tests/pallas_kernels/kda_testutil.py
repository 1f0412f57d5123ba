"""Input generators and small helpers for the KDA kernel tests (not a test module)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def x64():
    """Scoped float64 (``jax.enable_x64`` context), so other tests keep the float32 default."""
    return jax.enable_x64(True)


def make_inputs(B, T, H, K, V, *, seed=0, gate=1.0, n_states=None, dtype=np.float32, h0=True):
    """Unit-norm q/k (as Kimi Linear feeds them), softplus-gated g <= 0, beta in (0, 1)."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, T, H, K))
    k = rng.standard_normal((B, T, H, K))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((B, T, H, V))
    g = -gate * np.logaddexp(0.0, rng.standard_normal((B, T, H, K)))
    beta = 1.0 / (1.0 + np.exp(-rng.standard_normal((B, T, H))))
    s = rng.standard_normal((n_states or B, H, K, V)) if h0 else None
    cast = lambda x: None if x is None else np.asarray(x, dtype)
    return cast(q), cast(k), cast(v), cast(g), cast(beta), cast(s)


def loss_fn(f):
    """Scalar loss with cotangents on both o and the final state (non-trivial, data-dependent)."""
    def loss(q, k, v, g, beta, h0):
        o, ht = f(q, k, v, g, beta, initial_state=h0, output_final_state=True)
        o = o.astype(jnp.float32)
        return jnp.sum(o * jnp.cos(o)) + 0.5 * jnp.sum(jnp.sin(ht) * ht)
    return loss


_GRAD_CACHE = {}


def grads(f, args, key=None):
    """``jax.grad`` of :func:`loss_fn` wrt all six inputs, jitted; pass a hashable ``key`` naming ``f``
    to reuse the compiled function across parametrized cases of the same shapes."""
    if key is None:
        return jax.jit(jax.grad(loss_fn(f), argnums=tuple(range(6))))(*args)
    if key not in _GRAD_CACHE:
        _GRAD_CACHE[key] = jax.jit(jax.grad(loss_fn(f), argnums=tuple(range(6))))
    return _GRAD_CACHE[key](*args)


_FWD_CACHE = {}


def forward(backend, *, chunk_size=None, **static):
    """A cached jitted ``kda(..., backend=backend, output_final_state=True)`` taking
    ``(q, k, v, g, beta, initial_state[, cu_seqlens])``."""
    from jaxstack.pallas_kernels.kda import kda

    key = (backend, chunk_size, tuple(sorted(static.items())))
    if key not in _FWD_CACHE:
        def f(q, k, v, g, beta, h0=None, cu=None):
            return kda(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu,
                       backend=backend, chunk_size=chunk_size, **static)
        _FWD_CACHE[key] = jax.jit(f)
    return _FWD_CACHE[key]


GRAD_NAMES = ("dq", "dk", "dv", "dg", "dbeta", "dh0")


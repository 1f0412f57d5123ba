"""Short causal depthwise conv: against a plain loop, and decode-with-state equals the full sequence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxstack.layers.short_conv import ShortConvolution, causal_conv1d


def _loop_conv(x, w):
    """y[b, t, c] = silu(sum_j w[j, c] * x[b, t - (W-1) + j, c]) with zeros before t = 0 (float64)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    _B, T, _C = x.shape
    W = w.shape[0]
    y = np.zeros_like(x)
    for t in range(T):
        for j in range(W):
            src = t - (W - 1) + j
            if src >= 0:
                y[:, t] += w[j] * x[:, src]
    return y / (1 + np.exp(-y))


def test_matches_loop_and_state_carry():
    key = jax.random.key(0)
    x = jax.random.normal(key, (2, 9, 6), jnp.float32)
    w = jax.random.normal(jax.random.key(1), (4, 6), jnp.float32)
    y, state = causal_conv1d(x, w)
    np.testing.assert_allclose(np.asarray(y), _loop_conv(x, w), atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(state), np.asarray(x[:, -3:]))
    # Prefill 5 tokens, then decode one by one (and a 2-token chunk): identical to the full run.
    s = jnp.zeros((2, 3, 6))
    parts = []
    for lo, hi in ((0, 5), (5, 6), (6, 8), (8, 9)):
        out, s = causal_conv1d(x[:, lo:hi], w, conv_state=s)
        parts.append(out)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(parts, 1)), np.asarray(y), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(np.asarray(s), np.asarray(state))


def test_module_and_bad_inputs():
    conv = ShortConvolution(6, 4, rngs=nnx.Rngs(0))
    assert conv.weight.shape == (4, 6)
    y, s = conv(jnp.ones((1, 3, 6)))
    assert y.shape == (1, 3, 6) and s.shape == (1, 3, 6)
    with pytest.raises(ValueError, match="channels"):
        conv(jnp.ones((1, 3, 5)))
    with pytest.raises(ValueError, match="conv_state"):
        conv(jnp.ones((1, 3, 6)), jnp.zeros((1, 4, 6)))
    with pytest.raises(ValueError, match=r"\[B, T, C\]"):
        causal_conv1d(jnp.ones((3, 6)), jnp.ones((4, 6)))

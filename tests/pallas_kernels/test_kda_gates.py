"""Gate activations against their closed forms, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstack.pallas_kernels.kda import kda_gate_lower_bound, kda_gate_softplus
from jaxstack.testing import assert_close


def _raw(seed=0, H=3, K=4):
    rng = np.random.default_rng(seed)
    g_raw = rng.standard_normal((2, 5, H, K)).astype(np.float32) * 4   # includes |x| > 20 rarely
    g_raw[0, 0, 0, 0] = 60.0                                             # softplus overflow guard
    A_log = np.log(rng.uniform(1, 16, H)).astype(np.float32)
    dt_bias = rng.standard_normal(H * K).astype(np.float32)
    return g_raw, A_log, dt_bias


def test_softplus_gate_value_and_grads():
    g_raw, A_log, dt_bias = _raw()
    x = g_raw.astype(np.float64) + dt_bias.reshape(3, 4)
    a = np.exp(A_log.astype(np.float64))[:, None]
    expected = -a * np.logaddexp(0.0, x)
    g = kda_gate_softplus(g_raw, A_log, dt_bias)
    assert g.dtype == jnp.float32 and np.all(np.asarray(g) <= 0)
    assert_close(expected, g, dtype="float32")
    # Closed-form gradients of sum(w * g).
    w = np.random.default_rng(1).standard_normal(g_raw.shape)
    d_raw, d_A, d_dt = jax.grad(lambda r, A, d: jnp.sum(w * kda_gate_softplus(r, A, d)),
                                argnums=(0, 1, 2))(g_raw, A_log, dt_bias)
    sig = 1 / (1 + np.exp(-x))
    assert_close(-a * sig * w, d_raw, dtype="float32", name="dg_raw")
    assert_close(np.sum(w * expected, axis=(0, 1, 3)), d_A, dtype="float32", name="dA_log")
    assert_close(np.sum(-a * sig * w, axis=(0, 1)).reshape(-1), d_dt, dtype="float32", name="ddt_bias")


def test_softplus_gate_accepts_hk_dt_bias_and_no_dt_bias():
    g_raw, A_log, dt_bias = _raw()
    assert_close(kda_gate_softplus(g_raw, A_log, dt_bias), kda_gate_softplus(g_raw, A_log, dt_bias.reshape(3, 4)))
    assert_close(-np.exp(A_log)[:, None] * np.logaddexp(0, g_raw.astype(np.float64)),
                 kda_gate_softplus(g_raw, A_log))


@pytest.mark.parametrize("use_A", [True, False])
def test_lower_bound_gate_value_range_and_grads(use_A):
    g_raw, A_log, dt_bias = _raw(2)
    A = A_log if use_A else None
    x = g_raw.astype(np.float64) + dt_bias.reshape(3, 4)
    a = np.exp(A_log.astype(np.float64))[:, None] if use_A else 1.0
    s = 1 / (1 + np.exp(-a * x))
    g = kda_gate_lower_bound(g_raw, A, dt_bias, lower_bound=-5.0)
    assert_close(-5.0 * s, g, dtype="float32")
    assert np.all(np.asarray(g) >= -5.0) and np.all(np.asarray(g) <= 0)
    w = np.random.default_rng(3).standard_normal(g_raw.shape)
    d_raw = jax.grad(lambda r: jnp.sum(w * kda_gate_lower_bound(r, A, dt_bias, lower_bound=-5.0)))(g_raw)
    assert_close(-5.0 * a * s * (1 - s) * w, d_raw, dtype="float32", name="dg_raw")


def test_gate_errors_name_the_argument():
    g_raw, A_log, dt_bias = _raw()
    with pytest.raises(ValueError, match="dt_bias"):
        kda_gate_softplus(g_raw, A_log, dt_bias[:5])
    with pytest.raises(ValueError, match="A_log"):
        kda_gate_softplus(g_raw, A_log[:2], dt_bias)
    with pytest.raises(ValueError, match="lower_bound"):
        kda_gate_lower_bound(g_raw, A_log, dt_bias, lower_bound=0.5)

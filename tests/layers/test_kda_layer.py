"""KimiDeltaAttention layer: decode after prefill equals prefill of the longer sequence (conv cache
and recurrent state carried), chunk and recurrent paths agree, and float32 gate parameters.

Tolerance: float32 layers whose outputs are O(0.01..0.1); the chunk and recurrent kernels differ only
by summation order (measured ~1e-8), so 1e-6 max-abs is loose for rounding and far below any state or
conv-cache bug (a dropped conv tap or state moves outputs by ~1e-2 relative).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxstack.layers.kda import KimiDeltaAttention, l2_normalize
from jaxstack.precision import DtypePolicy

ATOL = 1e-6


@pytest.fixture(scope="module")
def layer():
    return KimiDeltaAttention(32, 2, 8, conv_kernel_size=4, backend="xla", chunk_size=16, init_std=0.2,
                              rngs=nnx.Rngs(0))


@nnx.jit(static_argnames=("mode",))
def _run(layer, x, state, mode):
    return layer(x, state=state, mode=mode)


def test_decode_after_prefill_equals_full(layer):
    x = jax.random.normal(jax.random.key(1), (2, 21, 32), jnp.float32)
    full, _ = _run(layer, x, None, "chunk")
    scale = float(jnp.abs(full).max())
    assert scale > 1e-3  # the layer does something measurable at this init
    state = layer.init_state(2, jnp.float32)
    y1, state = _run(layer, x[:, :17], state, "chunk")  # chunked prefill (crosses a chunk of 16)
    outs = [y1]
    for t in range(17, 21):  # recurrent decode, one token at a time
        before = state
        y, state = _run(layer, x[:, t : t + 1], state, None)
        outs.append(y)
    got = jnp.concatenate(outs, 1)
    np.testing.assert_allclose(np.asarray(got), np.asarray(full), atol=ATOL * max(scale, 1), rtol=0)
    # The conv state matters on its own: zeroing it before the last token changes that output.
    bad, _ = _run(layer, x[:, 20:], before.replace(conv=jnp.zeros_like(before.conv)), None)
    assert float(jnp.abs(bad - full[:, 20:]).max()) > 100 * ATOL


def test_recurrent_mode_equals_chunk_mode(layer):
    x = jax.random.normal(jax.random.key(2), (1, 19, 32), jnp.float32)
    chunk, _ = _run(layer, x, None, "chunk")
    recurrent, _ = _run(layer, x, None, "recurrent")
    np.testing.assert_allclose(np.asarray(recurrent), np.asarray(chunk), atol=ATOL, rtol=0)


def test_gate_params_float32_without_weight_decay():
    layer = KimiDeltaAttention(16, 2, 8, policy="bf16", rngs=nnx.Rngs(0))
    assert layer.A_log.dtype == jnp.float32 and layer.dt_bias.dtype == jnp.float32
    assert layer.q_proj.dtype == jnp.bfloat16
    for p in (layer.A_log, layer.dt_bias, layer.o_norm):
        assert p.get_metadata()["weight_decay"] is False
    # init ranges (fla / HF): A = exp(A_log) in [1, 16]; softplus(dt_bias) in [1e-3, 1e-1]
    a = np.exp(np.asarray(layer.A_log[...]))
    dt = np.log1p(np.exp(np.asarray(layer.dt_bias[...])))
    assert a.min() >= 1 and a.max() <= 16 and dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    y, _ = _run(layer, jnp.ones((1, 5, 16), jnp.bfloat16), None, "recurrent")
    assert y.dtype == jnp.bfloat16 and bool(jnp.isfinite(y).all())


def test_l2_normalize():
    x = jnp.array([[3.0, 4.0]])
    np.testing.assert_allclose(np.asarray(l2_normalize(x, policy=DtypePolicy())), [[0.6, 0.8]], rtol=1e-6)


def test_bad_inputs(layer):
    with pytest.raises(ValueError, match=r"x must be \[B, T, 32\]"):
        layer(jnp.ones((1, 3, 31)))
    with pytest.raises(ValueError, match="mode"):
        layer(jnp.ones((1, 3, 32)), mode="fused")
    with pytest.raises(ValueError, match="state must have conv"):
        layer(jnp.ones((2, 1, 32)), state=layer.init_state(1))
    with pytest.raises(ValueError, match="num_heads"):
        KimiDeltaAttention(16, 0, 8, rngs=nnx.Rngs(0))

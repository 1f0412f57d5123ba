"""The float32 CPU attention layout (heads-major matmuls, additive mask, normaliser after P @ V)
against ``jax.nn.dot_product_attention``'s XLA path: causal, explicit masks, GQA, sliding windows,
fully masked rows, a KV cache shape (S > T)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstack.layers import attention as A


def _qkv(B, T, S, H, KV, hd, seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((B, T, H, hd)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((B, S, KV, hd)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((B, S, KV, hd)), jnp.float32)
    return q, k, v


def _jax_nn(q, k, v, mask, is_causal, window):
    local = (window - 1, 0) if (is_causal and window is not None) else None
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, local_window_size=local,
                                        implementation="xla")


@pytest.mark.parametrize("H,KV", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("window", [None, 5])
def test_causal_matches_jax_nn(H, KV, window):
    q, k, v = _qkv(2, 13, 13, H, KV, 8)
    ours = A._float32_attention_cpu(q, k, v, mask=None, is_causal=True, sliding_window=window)
    # float32, 13 keys: the two layouts round differently in the last bits only
    np.testing.assert_allclose(np.asarray(ours), np.asarray(_jax_nn(q, k, v, None, True, window)), rtol=0, atol=2e-6)


def test_explicit_masks_cache_shape_and_fully_masked_rows():
    q, k, v = _qkv(2, 5, 9, 4, 2, 8, seed=1)
    rng = np.random.default_rng(2)
    mask = jnp.asarray(rng.random((2, 1, 5, 9)) < 0.6)
    mask = mask.at[1, 0, 3].set(False)  # a query that may see nothing
    ours = A._float32_attention_cpu(q, k, v, mask=mask, is_causal=False, sliding_window=None)
    ref = _jax_nn(q, k, v, mask, False, None)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=0, atol=2e-6)
    assert np.isfinite(np.asarray(ours)).all()  # the fully masked row attends uniformly, as jax's does


def test_dispatch_uses_it_only_for_float32_on_cpu():
    q, k, v = _qkv(1, 4, 4, 2, 2, 4)
    out = A.dot_product_attention(q, k, v, mask=None, is_causal=True, sliding_window=None, implementation=None)
    np.testing.assert_allclose(np.asarray(out), np.asarray(_jax_nn(q, k, v, None, True, None)), rtol=0, atol=2e-6)
    bf = A.dot_product_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), mask=None, is_causal=True,
                                 sliding_window=None, implementation=None)
    assert bf.dtype == jnp.bfloat16


@pytest.mark.parametrize("T,block", [(128, 64), (200, 64), (37, 8)])
@pytest.mark.parametrize("H,KV", [(4, 4), (6, 2)])
@pytest.mark.parametrize("window", [None, 5, 70])
def test_causal_blocked_matches_jax_nn(T, block, H, KV, window):
    """The block-skipping causal path, T a multiple of the block or not, windows shorter and longer
    than a block: jax.nn's XLA path on the full T x T logits. float32, <= 200 keys: reassociation only."""
    q, k, v = _qkv(2, T, T, H, KV, 16, seed=T)
    ours = A.causal_blocked_attention(q, k, v, block=block, sliding_window=window)
    ref = _jax_nn(q, k, v, None, True, window)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=0, atol=2e-6)


def test_causal_dispatch_uses_the_blocked_path_for_long_prompts():
    T = 2 * A.CAUSAL_BLOCK
    q, k, v = _qkv(1, T, T, 4, 2, 8, seed=3)
    jaxpr = str(jax.make_jaxpr(lambda q, k, v: A.dot_product_attention(
        q, k, v, mask=None, is_causal=True, sliding_window=None, implementation=None))(q, k, v))
    # one logits matmul per query block, each over its own key prefix: [.., 64, 64] then [.., 64, 128]
    assert f"{A.CAUSAL_BLOCK},{A.CAUSAL_BLOCK}]" in jaxpr.replace(" ", "") and f"{A.CAUSAL_BLOCK},{T}]" in jaxpr.replace(" ", "")
    out = A.dot_product_attention(q, k, v, mask=None, is_causal=True, sliding_window=None, implementation=None)
    np.testing.assert_allclose(np.asarray(out), np.asarray(_jax_nn(q, k, v, None, True, None)), rtol=0, atol=2e-6)

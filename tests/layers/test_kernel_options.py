"""Kernel options: the online-softmax attention, the split RMSNorm reduction and the fused QKV matmul are
the same math as the training kernels (different rounding), selectable through the model call."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxstack.layers.attention import attention_mask, dot_product_attention, online_softmax_attention
from jaxstack.layers.norms import rms_norm
from jaxstack.layers.options import TRAINING_KERNELS, KernelOptions
from jaxstack.models.configs import get_config
from jaxstack.models.llama import LlamaForCausalLM
from jaxstack.precision import DtypePolicy


def test_online_softmax_attention_matches_reference():
    # float32: the two only differ in summation order; 2e-6 is a few float32 ulps of O(1) outputs.
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (2, 9, 4, 8))
    k = jax.random.normal(keys[1], (2, 9, 2, 8))
    v = jax.random.normal(keys[2], (2, 9, 2, 8))
    mask = attention_mask(9, 9)
    expected = dot_product_attention(q, k, v, mask=None, is_causal=True, sliding_window=None, implementation=None)
    attend = jax.jit(online_softmax_attention, static_argnames=("block", "softmax_dtype"))
    for block in (4, 16):  # 4: several blocks with a ragged last one (9 keys); 16: one block
        out = attend(q, k, v, mask, block=block, softmax_dtype=jnp.float32)
        np.testing.assert_allclose(out, expected, atol=2e-6, rtol=0)


def test_chunked_norm_matches_reference():
    x = jax.random.normal(jax.random.key(0), (3, 5, 64))
    scale = jax.random.normal(jax.random.key(1), (64,))
    policy = DtypePolicy()
    # float32 partial sums vs one reduction: ~1e-7 relative; 1e-6 absolute on O(1) outputs.
    np.testing.assert_allclose(rms_norm(x, scale, eps=1e-5, policy=policy, chunks=4),
                               rms_norm(x, scale, eps=1e-5, policy=policy), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="norm_chunks"):
        rms_norm(x, scale, eps=1e-5, policy=policy, chunks=5)


def test_float16_attention_on_cpu_matches_float32():
    """layers.attention's float16-on-CPU path (XLA:CPU rejects jax's F16_F16_F32 dot under jit) vs the
    float32 computation: float16 rounding of probabilities and P @ V, ~1e-3 on O(1) outputs."""
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (2, 7, 4, 8)).astype(jnp.float16)
    k = jax.random.normal(keys[1], (2, 7, 2, 8)).astype(jnp.float16)
    v = jax.random.normal(keys[2], (2, 7, 2, 8)).astype(jnp.float16)
    for window in (None, 3):
        attend = jax.jit(lambda q, k, v, w=window: dot_product_attention(
            q, k, v, mask=None, is_causal=True, sliding_window=w, implementation=None))
        out = attend(q, k, v)
        expected = attend(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32))
        assert out.dtype == jnp.float16
        np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=4e-3, rtol=0)


def test_kernel_options_validate():
    assert KernelOptions() == TRAINING_KERNELS and hash(KernelOptions()) == hash(TRAINING_KERNELS)
    with pytest.raises(ValueError, match="attention_block"):
        KernelOptions(attention_block=0)
    with pytest.raises(ValueError, match="norm_chunks"):
        KernelOptions(norm_chunks=0)


@pytest.mark.parametrize("options", [KernelOptions(fused_qkv=True), KernelOptions(attention_block=4),
                                     KernelOptions(norm_chunks=4)], ids=["fused_qkv", "online_softmax", "chunked_norm"])
def test_model_kernel_options_same_math_different_kernel(options):
    """Through the model call: each option changes the computation (another jaxpr), float32 logits agree
    with the training kernels to float32 rounding, and the default call is the training kernels. Only
    the online softmax changes the bits on XLA:CPU (its dot and reduce kernels give the same
    per-element result for a fused QKV matmul or a split norm reduction); bfloat16 shows it."""
    config = get_config("llama-test")
    tokens = jax.random.randint(jax.random.key(1), (2, 11), 0, config.vocab_size)
    for policy in ("fp32", "bf16-mixed"):
        graphdef, state = nnx.split(LlamaForCausalLM(config, policy=policy, rngs=nnx.Rngs(0)))
        call = lambda s, t, k: nnx.merge(graphdef, s)(t, kernels=k).logits  # noqa: E731
        run = jax.jit(call, static_argnums=2)
        default, other = np.asarray(run(state, tokens, TRAINING_KERNELS)), np.asarray(run(state, tokens, options))
        assert str(jax.make_jaxpr(call, static_argnums=2)(state, tokens, options)) != str(
            jax.make_jaxpr(call, static_argnums=2)(state, tokens, TRAINING_KERNELS))
        np.testing.assert_array_equal(default, np.asarray(jax.jit(lambda s, t: nnx.merge(graphdef, s)(t).logits)(
            state, tokens)))
        if policy == "fp32":  # float32 reassociation on O(1) logits
            np.testing.assert_allclose(other, default, atol=1e-5, rtol=0)
        elif options.attention_block is not None:
            assert not np.array_equal(other, default)

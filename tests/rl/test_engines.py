"""Per-engine policies, the functional forward, and the rollout vs training engine agreement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxstack.layers.attention import attention_mask, dot_product_attention
from jaxstack.layers.norms import rms_norm
from jaxstack.models.configs import LlamaConfig, get_config
from jaxstack.models.llama import LlamaForCausalLM
from jaxstack.precision import DtypePolicy
from jaxstack.rl.engine import (
    KNOB_SETS,
    EngineKnobs,
    _rms_norm_chunked,
    forward,
    online_softmax_attention,
    rollout,
    token_logprobs,
)
from jaxstack.rl.loop import init_masters, score
from jaxstack.rl.policy import HEAD_KEY, EnginePolicy, engine_policy

# The fixed-seed tiny model of the acceptance tests: 2 layers, d = 64, GQA 4:2, vocab 64.
TINY = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                   num_kv_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
PROMPT, NEW, EOS = 6, 24, 2


@pytest.fixture(scope="module")
def masters():
    return init_masters(TINY, 0)


@pytest.fixture(scope="module")
def prompts():
    return jax.random.randint(jax.random.key(7), (8, PROMPT), 3, TINY.vocab_size)


def test_policy_is_hashable_static_and_validates():
    policy = engine_policy("bf16")
    assert hash(policy) == hash(EnginePolicy(compute_dtype="bf16"))
    assert policy.kv_cache_dtype == jnp.bfloat16 and policy.lm_head_dtype == jnp.bfloat16
    assert policy.softmax_dtype == jnp.float32 and policy.name == "bf16"

    @jax.jit
    def f(x, p=policy):
        return x.astype(p.compute_dtype)

    assert jax.jit(lambda x, p: x.astype(p.compute_dtype), static_argnums=1)(jnp.ones(2), policy).dtype == jnp.bfloat16
    assert f(jnp.ones(2)).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="compute_dtype"):
        EnginePolicy(compute_dtype="int8")
    with pytest.raises(ValueError, match="master_dtype"):
        EnginePolicy(master_dtype="bf16")
    with pytest.raises(ValueError, match="unknown engine policy"):
        engine_policy("fp8")


def test_weight_sync_is_one_cast(masters):
    policy = engine_policy("fp16", lm_head_dtype="f32")
    synced = policy.sync(masters)
    leaves = jax.tree.leaves({k: v for k, v in synced.items() if k != HEAD_KEY})
    assert all(x.dtype == jnp.float16 for x in leaves)
    assert len(leaves) == len(jax.tree.leaves(masters))
    # tied model: the head is the embedding table, in the LM-head dtype (float32: no half rounding)
    assert synced[HEAD_KEY].dtype == jnp.float32
    np.testing.assert_array_equal(synced[HEAD_KEY], masters["embed"]["embedding"])
    with pytest.raises(ValueError, match="master weights"):
        policy.sync(jax.tree.map(lambda x: x.astype(jnp.bfloat16), masters))


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_forward_with_knobs_off_is_the_model(dtype):
    """The engine forward with knobs off is LlamaForCausalLM op for op: bit-exact logits."""
    config = get_config("llama-test")  # untied head, 2 layers
    policy = engine_policy(dtype)
    model = LlamaForCausalLM(config, policy=DtypePolicy("f32", policy.compute_dtype, "f32"), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model, nnx.Param)
    masters = nnx.to_pure_dict(state)
    tokens = jax.random.randint(jax.random.key(1), (2, 11), 0, config.vocab_size)
    expected = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t).logits)(state, tokens)  # both jitted
    logits, _ = jax.jit(forward, static_argnames=("config", "policy"))(policy.sync(masters), tokens, config=config,
                                                                         policy=policy)
    np.testing.assert_array_equal(np.asarray(logits.astype(jnp.float32)), np.asarray(expected))


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
    np.testing.assert_allclose(_rms_norm_chunked(x, scale, eps=1e-5, policy=policy, chunks=4),
                               rms_norm(x, scale, eps=1e-5, policy=policy), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="norm_chunks"):
        _rms_norm_chunked(x, scale, eps=1e-5, policy=policy, chunks=5)


def _mismatch(masters, prompts, dtype, knobs):
    policy = engine_policy(dtype)
    result = rollout(masters, prompts, jax.random.key(3), 0.0, config=TINY, policy=policy, knobs=KNOB_SETS[knobs],
                     max_new_tokens=NEW, eos_id=EOS)
    logp, _ = score(masters, result.tokens, config=TINY, policy=policy, prompt_length=PROMPT)
    diff = np.abs(np.asarray(logp) - np.asarray(result.logprobs)) * np.asarray(result.mask)
    return diff, np.asarray(result.mask)


def test_f32_engines_agree_within_1e5(masters, prompts):
    diff, mask = _mismatch(masters, prompts, "fp32", "all")
    assert mask.sum() > 50
    assert diff.max() < 1e-5, diff.max()


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_same_kernel_control_within_1e6(masters, prompts, dtype):
    """All knobs off: the rollout recomputes the padded buffer with the training kernels; what is left
    is float32 log-softmax reduction order on a sliced vs a full logits array (< 1e-6 per token)."""
    diff, mask = _mismatch(masters, prompts, dtype, "none")
    assert mask.sum() > 50
    assert diff.max() < 1e-6, diff.max()


def test_bf16_mismatch_at_least_3x_fp16(masters, prompts):
    bf16, mask = _mismatch(masters, prompts, "bf16", "all")
    fp16, _ = _mismatch(masters, prompts, "fp16", "all")
    bf16_mean, fp16_mean = bf16.sum() / mask.sum(), fp16.sum() / mask.sum()
    assert fp16_mean > 0  # the knobs do change the kernels in half precision
    assert bf16_mean >= 3 * fp16_mean, (bf16_mean, fp16_mean)


def test_rollout_masks_after_eos_and_returns_sampled_logprobs(masters, prompts):
    # Force EOS: a head whose only non-zero logit is EOS's makes every first token EOS.
    forced = dict(masters)
    forced["embed"] = {"embedding": masters["embed"]["embedding"].at[EOS].mul(200.0)}
    result = rollout(forced, prompts, jax.random.key(0), 0.0, config=TINY, policy=engine_policy("fp32"),
                     knobs=EngineKnobs(kv_cache=True), max_new_tokens=5, eos_id=EOS)
    tokens, mask = np.asarray(result.tokens), np.asarray(result.mask)
    assert tokens.shape == (8, PROMPT + 5)
    first_eos = np.argmax(tokens[:, PROMPT:] == EOS, axis=1)
    for row in range(8):
        if result.finished[row]:
            assert mask[row, : first_eos[row] + 1].all() and not mask[row, first_eos[row] + 1:].any()
            assert (tokens[row, PROMPT + first_eos[row] + 1:] == 0).all()
    np.testing.assert_array_equal(result.lengths, mask.sum(1))


def test_token_logprobs_is_differentiable_to_masters(masters, prompts):
    tokens = jnp.concatenate([prompts, prompts], axis=1)
    grads = jax.jit(jax.grad(lambda m: token_logprobs(m, tokens, prompt_length=PROMPT, config=TINY,
                                                      policy=engine_policy("bf16")).sum()))(masters)
    leaves = jax.tree.leaves(grads)
    assert all(g.dtype == jnp.float32 for g in leaves)
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    with pytest.raises(ValueError, match="prompt_length"):
        token_logprobs(masters, tokens, prompt_length=0, config=TINY, policy=engine_policy("fp32"))


def test_knobs_validate():
    with pytest.raises(ValueError, match="attention_block"):
        EngineKnobs(attention_block=0)
    assert KNOB_SETS["none"].all_off and not KNOB_SETS["all"].all_off
    assert "kv_cache" in KNOB_SETS["all"].active()


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

"""Per-engine policies, weight sync, the engines over the real model, and rollout vs training agreement."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxstack.models.configs import LlamaConfig
from jaxstack.models.llama import LlamaForCausalLM
from jaxstack.rl.engine import KNOB_SETS, EngineKnobs, rollout, token_logprobs
from jaxstack.rl.loop import init_masters, score
from jaxstack.rl.policy import engine_policy, sync
from jaxstack.train.step import loss_fn

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


def test_policy_is_a_mixed_preset_and_validates():
    policy = engine_policy("bf16-mixed")
    assert policy.param_dtype == jnp.float32 and policy.compute_dtype == jnp.bfloat16
    assert policy.kv_cache_dtype == jnp.bfloat16 and policy.lm_head_dtype == jnp.bfloat16
    assert policy.softmax_dtype == jnp.float32 and policy.name == "bf16-mixed"
    assert jax.jit(lambda x, p: x.astype(p.compute_dtype), static_argnums=1)(jnp.ones(2), policy).dtype == jnp.bfloat16
    assert engine_policy("fp16-mixed", lm_head_dtype="f32").lm_head_dtype == jnp.float32
    # "fp16" stores the parameters in float16: not an RL engine (float32 masters)
    with pytest.raises(ValueError, match="fp16-mixed"):
        engine_policy("fp16")
    with pytest.raises(ValueError, match="unknown preset"):
        engine_policy("fp8")


def test_weight_sync_is_one_cast(masters):
    policy = engine_policy("fp16-mixed", lm_head_dtype="f32")
    synced = sync(masters, policy)
    flat = dict(nnx.to_flat_state(synced))
    assert all(v[...].dtype == jnp.float16 for path, v in flat.items() if path != ("lm_head",))
    assert len(flat) == len(jax.tree.leaves(masters)) + 1
    # tied model: the engine's head is its own cast of the embedding master, in the LM-head dtype
    np.testing.assert_array_equal(flat[("lm_head",)][...], masters["embed"]["embedding"][...].T)  # float32
    with pytest.raises(ValueError, match="master weights"):
        sync(jax.tree.map(lambda x: x.astype(jnp.bfloat16), masters), policy)


@pytest.mark.parametrize("dtype", [pytest.param("fp32", marks=pytest.mark.slow), "bf16-mixed", "fp16-mixed"])
def test_training_engine_with_knobs_off_is_the_training_step_forward(dtype):
    """The training engine's log-probs are those of the training step's forward (``train.step.loss_fn``)."""
    policy = engine_policy(dtype)
    masters = init_masters(TINY, 0)
    tokens = jax.random.randint(jax.random.key(1), (2, 11), 0, TINY.vocab_size)
    logp = jax.jit(lambda m, t: token_logprobs(m, t, prompt_length=1, config=TINY, policy=policy))(masters, tokens)
    # the trainer's step: the tied model under the same policy, float32 parameters cast at use
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: LlamaForCausalLM(TINY, policy=policy, rngs=nnx.Rngs(0))))
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": jnp.ones((2, 10))}
    loss, _ = jax.jit(lambda m: loss_fn(m, graphdef, batch))(masters)
    # the same logits: mean NLL agrees to float32 summation order (log_softmax vs optax's cross entropy)
    np.testing.assert_allclose(-np.asarray(logp).mean(), np.asarray(loss), rtol=1e-6)


@pytest.mark.parametrize("knob", ["kv_cache", "fused_qkv", "online_softmax", "chunked_norm", "f32_lm_head",
                                  "batch_padding"])
def test_each_knob_changes_the_rollout(masters, prompts, knob):
    """Each knob reaches the computation (the rollout's jaxpr differs from the knobs-off one); the online
    softmax and the one-sided f32 LM head change the float16 log-probs of the same sampled tokens. The
    others are bit-exact on XLA:CPU (the README's knob ablation; GPU GEMM vs GEMV is where they bite)."""
    policy = engine_policy("fp16-mixed")

    def run(knobs, trace=False):
        f = rollout.__wrapped__ if trace else rollout
        args = (masters, prompts, jax.random.key(3), 0.0)
        kwargs = dict(config=TINY, policy=policy, knobs=knobs, max_new_tokens=6, eos_id=-1)
        return str(jax.make_jaxpr(lambda *a: f(*a, **kwargs))(*args)) if trace else f(*args, **kwargs)

    assert run(KNOB_SETS[knob], trace=True) != run(KNOB_SETS["none"], trace=True)
    if knob in ("online_softmax", "f32_lm_head"):
        base, other = run(KNOB_SETS["none"]), run(KNOB_SETS[knob])
        same = np.asarray(base.tokens == other.tokens).all(axis=1)
        assert same.any()
        assert not np.array_equal(np.asarray(base.logprobs)[same], np.asarray(other.logprobs)[same])


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


@pytest.mark.parametrize("dtype", [pytest.param("fp32", marks=pytest.mark.slow), "bf16-mixed", "fp16-mixed"])
def test_same_kernel_control_within_1e6(masters, prompts, dtype):
    """All knobs off: the rollout recomputes the padded buffer with the training kernels; what is left
    is float32 log-softmax reduction order on a sliced vs a full logits array (< 1e-6 per token)."""
    diff, mask = _mismatch(masters, prompts, dtype, "none")
    assert mask.sum() > 50
    assert diff.max() < 1e-6, diff.max()


def test_bf16_mismatch_at_least_3x_fp16(masters, prompts):
    bf16, mask = _mismatch(masters, prompts, "bf16-mixed", "all")
    fp16, _ = _mismatch(masters, prompts, "fp16-mixed", "all")
    bf16_mean, fp16_mean = bf16.sum() / mask.sum(), fp16.sum() / mask.sum()
    assert fp16_mean > 0  # the knobs do change the kernels in half precision
    assert bf16_mean >= 3 * fp16_mean, (bf16_mean, fp16_mean)


def test_rollout_masks_after_eos_and_returns_sampled_logprobs(masters, prompts):
    # Force EOS: a head whose only non-zero logit is EOS's makes every first token EOS.
    forced = jax.tree.map(lambda x: x, masters)
    forced["embed"]["embedding"] = forced["embed"]["embedding"].replace(masters["embed"]["embedding"][...].at[EOS].mul(200.0))
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
                                                      policy=engine_policy("bf16-mixed")).sum()))(masters)
    leaves = jax.tree.leaves(grads)
    assert all(g.dtype == jnp.float32 for g in leaves)
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    with pytest.raises(ValueError, match="prompt_length"):
        token_logprobs(masters, tokens, prompt_length=0, config=TINY, policy=engine_policy("fp32"))


def test_knobs_validate():
    with pytest.raises(ValueError, match="attention_block"):
        EngineKnobs(attention_block=0)
    with pytest.raises(ValueError, match="norm_chunks"):
        EngineKnobs(norm_chunks=0)
    assert KNOB_SETS["none"].all_off and not KNOB_SETS["all"].all_off
    assert "kv_cache" in KNOB_SETS["all"].active()
    assert KNOB_SETS["all"].kernels == dataclasses.replace(KNOB_SETS["none"].kernels, fused_qkv=True,
                                                           attention_block=8, norm_chunks=4)

"""Model-level properties: scan == loop, packed sequences == separate sequences, policies, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxstack.models import LlamaForCausalLM, get_config, stack_layer_params
from jaxstack.models.configs import PRESETS
from jaxstack.precision import get_policy


@pytest.mark.parametrize("preset, atol", [("llama-test", 0.0), ("qwen2.5-test", 1e-5)])
def test_scan_layers_gives_identical_logits(preset, atol):
    """Bit-identical without biases. With q/k/v biases XLA:CPU folds the bias into the GEMM
    accumulator in one program and not the other (the scanned body and the unrolled loop are
    compiled separately), so equality holds to float32 rounding only: measured 4.9e-6 max-abs on
    logits of std ~1; bound 1e-5."""
    model = LlamaForCausalLM(get_config(preset, initializer_range=0.2), rngs=nnx.Rngs(0))
    scanned = stack_layer_params(model)
    assert scanned.config.scan_layers
    tokens = jax.random.randint(jax.random.key(1), (2, 11), 0, model.config.vocab_size)
    forward = nnx.jit(lambda m, t: m(t).logits)
    loop_logits, scan_logits = np.asarray(forward(model, tokens)), np.asarray(forward(scanned, tokens))
    assert np.std(loop_logits) > 0.3
    np.testing.assert_allclose(loop_logits, scan_logits, atol=atol, rtol=0)


def test_scan_model_from_config_has_stacked_params():
    model = LlamaForCausalLM(get_config("llama-test", scan_layers=True), rngs=nnx.Rngs(0))
    q = model.layers.attention.q_proj
    assert q.shape == (2, 64, 4, 16)
    assert q.get_metadata()["out_sharding"] == ("layers", "embed", "heads", "head_dim")


def test_packed_segments_equal_separate_sequences():
    model = LlamaForCausalLM(get_config("llama-test", initializer_range=0.2), rngs=nnx.Rngs(0))
    a = jax.random.randint(jax.random.key(1), (1, 5), 0, 256)
    b = jax.random.randint(jax.random.key(2), (1, 7), 0, 256)
    packed = jnp.concatenate([a, b], axis=1)
    segment_ids = jnp.asarray([[1] * 5 + [2] * 7])
    positions = jnp.asarray([list(range(5)) + list(range(7))])
    logits = model(packed, positions, segment_ids=segment_ids).logits
    np.testing.assert_allclose(np.asarray(logits[:, :5]), np.asarray(model(a).logits), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(logits[:, 5:]), np.asarray(model(b).logits), atol=1e-5, rtol=0)
    # without segment ids the second document would see the first: the outputs must differ
    leaky = model(packed, positions).logits
    assert float(jnp.max(jnp.abs(leaky[:, 5:] - logits[:, 5:]))) > 1e-3


def test_sliding_window_limits_context():
    window = 3
    model = LlamaForCausalLM(get_config("llama-test", sliding_window=window, initializer_range=0.2),
                             rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (1, 10), 0, 256)
    changed = tokens.at[0, 0].set((tokens[0, 0] + 1) % 256)
    a, b = model(tokens).logits, model(changed).logits
    # with 2 layers the receptive field is 2 * (window - 1) tokens back: position 0 reaches <= 4
    assert float(jnp.max(jnp.abs(a[0, 5:] - b[0, 5:]))) == 0.0
    assert float(jnp.max(jnp.abs(a[0, 1] - b[0, 1]))) > 0.0


@pytest.mark.parametrize("policy", ["bf16", "bf16-mixed", "fp16-mixed"])
def test_policies_set_dtypes_and_stay_close(policy):
    config = get_config("llama-test", initializer_range=0.05)
    reference = LlamaForCausalLM(config, rngs=nnx.Rngs(0))
    model = LlamaForCausalLM(config, policy=policy, rngs=nnx.Rngs(0))
    p = get_policy(policy)
    assert model.layers[0].attention.q_proj[...].dtype == p.param_dtype
    tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, 256)
    logits = model(tokens).logits
    assert logits.dtype == p.output_dtype
    # half-precision compute: relative error of a few roundings of a 2-layer net (bf16 eps 2^-8)
    ref = np.asarray(reference(tokens).logits)
    err = np.linalg.norm(np.asarray(logits, np.float32) - ref) / np.linalg.norm(ref)
    assert err < 3e-2, err


def test_smollm2_parameter_counts_match_published():
    # refs/smollm2_data.md 1.1: computed totals for the released configs (tied embeddings)
    assert PRESETS["smollm2-135m"].num_params() == 134_515_008
    assert PRESETS["smollm2-360m"].num_params() == 361_821_120
    assert PRESETS["smollm2-1.7b"].num_params() == 1_711_376_384


def test_abstract_smollm2_135m_shapes_match_config():
    config = PRESETS["smollm2-135m"]
    abstract = nnx.eval_shape(lambda: LlamaForCausalLM(config, rngs=nnx.Rngs(0)))
    total = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert total == config.num_params()


def test_bad_config_and_inputs_are_named():
    with pytest.raises(ValueError, match="num_kv_heads"):
        get_config("llama-test", num_kv_heads=3)
    with pytest.raises(ValueError, match="unknown"):
        get_config("no-such-model")
    model = LlamaForCausalLM(get_config("llama-test"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="positions"):
        model(jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 5), jnp.int32))


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("window", [None, 3])
def test_cache_fresh_prefill_equals_the_masked_cache_prefill(scan, window):
    """``cache_fresh`` (attend among the prompt's own tokens) gives the logits and cache of the plain
    cached prefill over all S slots under a mask, whatever the cache held before (its rows restart),
    with and without a sliding window, for the layer loop and the layer scan; a decode step after it
    agrees too. float32, 9 prompt tokens of 16 slots: reassociation only, bound 1e-5 on logits of std ~1
    and on keys of std ~2 (measured 2.1e-6 on keys)."""
    from jaxstack.models import init_cache

    config = get_config("llama-test", initializer_range=0.2, scan_layers=scan, sliding_window=window)
    model = LlamaForCausalLM(config, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, config.vocab_size)
    cache = init_cache(config, 2, 16)
    stale = jax.tree.map(lambda a: a + 7.0 if a.dtype == jnp.float32 else a + 3, cache)  # junk, lengths 3
    plain = model(tokens, cache=cache)
    fresh = model(tokens, cache=stale, cache_fresh=True)
    assert np.std(np.asarray(plain.logits)) > 0.3
    np.testing.assert_allclose(np.asarray(fresh.logits), np.asarray(plain.logits), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(np.asarray(fresh.cache.lengths), [9, 9])
    np.testing.assert_allclose(np.asarray(fresh.cache.k)[..., :9, :], np.asarray(plain.cache.k)[..., :9, :],
                               atol=1e-5, rtol=0)  # layer 0's exact; later layers carry its rounding
    step = jnp.array([[5], [6]])
    np.testing.assert_allclose(np.asarray(model(step, cache=fresh.cache).logits),
                               np.asarray(model(step, cache=plain.cache).logits), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="cache_fresh"):
        model(tokens, cache_fresh=True)

"""Decode with a KV cache equals the full forward pass; sampling filters behave as specified.

Tolerance 1e-5 max-abs on float32 logits (a handful of roundings; logits O(1)).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxstack.inference import SamplingConfig, generate, process_logits
from jaxstack.models import LlamaForCausalLM, get_config, init_cache


@pytest.fixture(scope="module", params=["loop", "scan", "sliding-window"])
def model(request):
    overrides = dict(initializer_range=0.2)
    if request.param == "scan":
        overrides["scan_layers"] = True
    if request.param == "sliding-window":
        overrides["sliding_window"] = 5
    return LlamaForCausalLM(get_config("qwen2.5-test", **overrides), rngs=nnx.Rngs(3))


def test_decode_steps_equal_full_forward(model):
    tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, model.config.vocab_size)
    full = model(tokens).logits
    cache = init_cache(model.config, 2, 16)
    out = model(tokens[:, :4], cache=cache)
    pieces = [out.logits]
    cache = out.cache
    for t in range(4, 12):  # one token at a time
        out = model(tokens[:, t : t + 1], cache=cache)
        cache = out.cache
        pieces.append(out.logits)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(pieces, 1)), np.asarray(full), atol=1e-5, rtol=0)
    assert np.asarray(cache.lengths).tolist() == [12, 12]


def test_greedy_generation_matches_forward_on_ragged_prompts(model):
    prompts = [[5, 9, 17, 3, 4, 8, 1], [7, 2], [100, 101, 102, 103]]
    config = SamplingConfig(max_new_tokens=6, temperature=0.0)
    result = generate(model, prompts, config)
    for row, prompt in enumerate(prompts):
        sequence = prompt + np.asarray(result.tokens[row]).tolist()
        logits = model(jnp.asarray([sequence])).logits[0]
        logprobs = jax.nn.log_softmax(logits, -1)
        for i in range(config.max_new_tokens):
            position = len(prompt) - 1 + i
            assert int(jnp.argmax(logits[position])) == sequence[position + 1]
            np.testing.assert_allclose(
                float(result.logprobs[row, i]), float(logprobs[position, sequence[position + 1]]), atol=1e-5
            )


def test_stop_tokens_end_rows():
    model = LlamaForCausalLM(get_config("llama-test"), rngs=nnx.Rngs(0))
    prompts = [[1, 2, 3], [4, 5]]
    first = generate(model, prompts, SamplingConfig(max_new_tokens=8, temperature=0.0))
    greedy = np.asarray(first.tokens[0]).tolist()
    stop = greedy[2]  # row 0's third greedy token
    n = greedy.index(stop) + 1  # the row ends at the first occurrence
    result = generate(model, prompts, SamplingConfig(max_new_tokens=8, temperature=0.0, stop_tokens=(stop,)))
    assert int(result.lengths[0]) == n and int(result.tokens[0, n - 1]) == stop
    assert np.all(np.asarray(result.tokens[0, n:]) == 0) and np.all(np.asarray(result.logprobs[0, n:]) == 0)
    np.testing.assert_array_equal(np.asarray(result.tokens[0, :n]), np.asarray(first.tokens[0, :n]))
    other = np.asarray(first.tokens[1]).tolist()
    assert int(result.lengths[1]) == (other.index(stop) + 1 if stop in other else 8)


def test_sampling_is_seeded_and_logprobs_are_consistent():
    model = LlamaForCausalLM(get_config("llama-test", initializer_range=0.2), rngs=nnx.Rngs(0))
    config = SamplingConfig(max_new_tokens=5, temperature=1.0)
    a = generate(model, [[1, 2, 3]], config, seed=7)
    b = generate(model, [[1, 2, 3]], config, seed=7)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    # at temperature 1 with no filtering the sampled distribution is the model's
    np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(a.sample_logprobs), atol=1e-6)


def test_process_logits_top_k_and_top_p():
    logits = jnp.log(jnp.asarray([[0.5, 0.25, 0.15, 0.1]]))
    top_k = process_logits(logits, SamplingConfig(top_k=2))
    assert np.isfinite(np.asarray(top_k))[0].tolist() == [True, True, False, False]
    top_p = process_logits(logits, SamplingConfig(top_p=0.7))  # 0.5 < 0.7 -> keep 0.25 too; 0.75 >= 0.7 stop
    assert np.isfinite(np.asarray(top_p))[0].tolist() == [True, True, False, False]
    tiny_p = process_logits(logits, SamplingConfig(top_p=0.1))
    assert np.isfinite(np.asarray(tiny_p))[0].tolist() == [True, False, False, False]


def test_bad_inputs_are_named():
    model = LlamaForCausalLM(get_config("llama-test"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        generate(model, [[1], [999]], SamplingConfig())
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=1.5)
    with pytest.raises(ValueError, match="tokens"):
        model(jnp.zeros((2, 3), jnp.float32))

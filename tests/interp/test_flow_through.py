"""The intervention flows through the sampler, the log-likelihood scorer and the RL engines.

* sampler: greedy generation with a zero edit equals generation without one; with an edit it equals
  greedy decoding by the uncached forward with the same edit, step by step (the window, in absolute
  positions, starts mid-generation for one row and in the prompt for the other);
* scorer: with an edit, prefix sharing on == off (it stays on: windows are per-request positions,
  which the tree layout keeps); a zero edit == no edit; a multi-row edit is refused;
* RL: the training engine's log-probs and (slow) a KV-cache rollout with padding rows carry the edit.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxstack.inference.sampler import SamplingConfig, generate
from jaxstack.inference.scoring import LoglikelihoodScorer
from jaxstack.interp import Intervention
from jaxstack.rl.engine import EngineKnobs, rollout, token_logprobs
from jaxstack.rl.policy import engine_policy

L, D = 4, 64


def _vector(seed=2):
    return jax.random.normal(jax.random.key(seed), (D,))


def test_sampler_greedy_with_an_edit_equals_uncached_stepwise_decoding(llama, run):
    prompts = [[5, 17, 99, 3, 42], [8, 8, 200, 61]]
    config = SamplingConfig(max_new_tokens=4, temperature=0.0)
    plain = generate(llama, prompts, config)
    zero = generate(llama, prompts, config, intervention=Intervention.none(L, D, batch=2))
    np.testing.assert_array_equal(np.asarray(zero.tokens), np.asarray(plain.tokens))
    np.testing.assert_array_equal(np.asarray(zero.logprobs), np.asarray(plain.logprobs))

    # row 0: the window opens at its 2nd generated token (position 6); row 1: inside its prompt
    edit = Intervention.add(_vector(), layers=[1, 2], num_layers=L, strength=jnp.asarray([6.0, 4.0]),
                            start=jnp.asarray([6, 2]))
    steered = generate(llama, prompts, config, intervention=edit)
    # the reference: greedy argmax of the full uncached forward over a (2, 9) buffer, one token at a time
    buffer = np.zeros((2, 9), np.int32)
    lengths = [len(p) for p in prompts]
    for row, prompt in enumerate(prompts):
        buffer[row, :len(prompt)] = prompt
    tokens, logprobs = np.zeros((2, 4), np.int32), np.zeros((2, 4))
    for step in range(4):
        logits = np.asarray(run(llama, jnp.asarray(buffer), edit).logits, np.float64)
        for row in range(2):
            at = lengths[row] + step - 1
            logp = logits[row, at] - np.log(np.exp(logits[row, at] - logits[row, at].max()).sum()) - logits[row, at].max()
            tokens[row, step] = int(np.argmax(logits[row, at]))
            logprobs[row, step] = logp[tokens[row, step]]
            buffer[row, at + 1] = tokens[row, step]
    np.testing.assert_array_equal(np.asarray(steered.tokens), tokens)
    np.testing.assert_allclose(np.asarray(steered.logprobs), logprobs, atol=1e-5, rtol=0)
    assert np.abs(np.asarray(steered.logprobs) - np.asarray(plain.logprobs)).max() > 1e-3  # the edit matters
    # row 0's first generated token comes from position 4, before its window: unchanged
    assert int(steered.tokens[0, 0]) == int(plain.tokens[0, 0])
    np.testing.assert_allclose(float(steered.logprobs[0, 0]), float(plain.logprobs[0, 0]), atol=1e-6)
    with pytest.raises(ValueError, match=r"intervention\.vectors"):
        generate(llama, prompts, config, intervention=Intervention.none(L, D, batch=3))


def test_scorer_with_an_edit_prefix_sharing_on_equals_off(llama):
    context_a, context_b = [5, 17, 99, 3], [8, 200, 61]
    requests = [(context_a, [42, 7]), (context_a, [11]), (context_a, [42, 9, 13]), (context_b, [1, 2]),
                (context_b, [250])]
    edit = Intervention.add(_vector(), layers=1, num_layers=L, strength=3.0, start=2)
    zero = Intervention.add(_vector(), layers=1, num_layers=L, strength=0.0, start=2)

    def score(intervention, share):
        scorer = LoglikelihoodScorer(llama, batch_size=4, share_prefix=share, intervention=intervention)
        assert scorer.share_prefix is share
        return np.asarray([ll for ll, _ in scorer.loglikelihood_tokens(requests, progress=False)])

    shared, separate = score(edit, True), score(edit, False)
    np.testing.assert_allclose(shared, separate, atol=1e-4, rtol=0)
    unedited = score(None, True)
    np.testing.assert_array_equal(score(zero, True), unedited)
    assert np.abs(shared - unedited).max() > 1e-2
    with pytest.raises(ValueError, match="one row"):
        LoglikelihoodScorer(llama, intervention=Intervention.none(L, D, batch=2))


def _rl_setup(llama):
    masters = nnx.state(llama, nnx.Param)
    policy = engine_policy("fp32")
    config = llama.config
    edit = Intervention.add(_vector(), layers=2, num_layers=L, strength=jnp.asarray([3.0, -2.0]), start=4)
    score = jax.jit(lambda m, t, e: token_logprobs(m, t, prompt_length=5, config=config, policy=policy,
                                                   intervention=e))
    return masters, policy, config, edit, score


def test_rl_training_engine_passes_the_edit_through(llama, run):
    masters, _, _, edit, score = _rl_setup(llama)
    tokens = jax.random.randint(jax.random.key(9), (2, 9), 0, 256)
    logits = run(llama, tokens, edit).logits
    expected = jnp.take_along_axis(jax.nn.log_softmax(logits[:, 4:-1], axis=-1), tokens[:, 5:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(np.asarray(score(masters, tokens, edit)), np.asarray(expected), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_rl_rollout_passes_the_edit_through(llama):
    """KV-cache rollout with a padding row: the sampled tokens' log-probs are those of the training
    engine's forward with the same edit (absolute positions agree between the two). Slow: it compiles
    the rollout (~3 s); the fast variant is the training-engine test above."""
    masters, policy, config, edit, score = _rl_setup(llama)
    prompts = jax.random.randint(jax.random.key(9), (2, 5), 0, 256)
    result = rollout(masters, prompts, jax.random.key(3), 0.0, config=config, policy=policy,
                     knobs=EngineKnobs(kv_cache=True, pad_rows=1), max_new_tokens=4, eos_id=-1, intervention=edit)
    rescored = score(masters, result.tokens, edit)
    np.testing.assert_allclose(np.asarray(result.logprobs), np.asarray(rescored), atol=1e-5, rtol=0)
    unedited = score(masters, result.tokens, edit.replace(scales=0 * edit.scales))
    assert np.abs(np.asarray(unedited) - np.asarray(rescored)).max() > 1e-3

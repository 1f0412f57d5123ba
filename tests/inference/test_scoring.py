"""Log-likelihood scoring vs a plain-numpy recomputation from full-forward logits; lm-eval's tokenisation
rules; one compilation per length bucket."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxstack.inference import scoring
from jaxstack.inference.scoring import LoglikelihoodScorer, encode_pair

REQUESTS = [
    ("To keep a cast-iron pan from rusting after washing it,", " dry it on a warm burner."),
    ("To keep a cast-iron pan from rusting after washing it, ", "leave it in the sink."),  # trailing space
    ("Чтобы быстро высушить валенки,", " их ставят у печки."),
    ("想让饺子不粘在一起，", " 水烧开后再下饺子。"),
    ("", " hello world"),  # empty context: the prefix token conditions
    ("The quick brown fox jumps over the lazy dog. " * 3, " The quick brown fox."),  # long: truncated from the left at 64 tokens
]


def _reference(model, tokenizer, requests, max_length):
    """Plain numpy over one full forward: all requests right-padded to 71 tokens (not one of the
    scorer's bucket widths, so a padding leak would show), float64 log-softmax, sum over the continuation."""
    rows = []
    for context, continuation in requests:
        context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
        rows.append(((context_ids + continuation_ids)[-(max_length + 1):], len(continuation_ids)))
    width = 71
    tokens = np.zeros((len(rows), width), np.int32)
    targets = np.zeros((len(rows), width), np.int32)
    for row, (whole, _) in enumerate(rows):
        tokens[row, : len(whole) - 1] = whole[:-1]
        targets[row, : len(whole) - 1] = whole[1:]
    graphdef, state = nnx.split(model)
    logits = np.asarray(jax.jit(lambda s, t: nnx.merge(graphdef, s)(t).logits)(state, jnp.asarray(tokens)))
    target, argmax = scoring.token_logprobs_reference(logits, targets)
    out = []
    for row, (whole, n) in enumerate(rows):
        end = len(whole) - 1
        span = slice(end - n, end)
        out.append((float(target[row, span].sum()), bool((argmax[row, span] == np.asarray(whole[-n:])).all())))
    return out


@pytest.mark.parametrize("share_prefix", [True, False])
def test_loglikelihoods_match_numpy_reference(random_model, tokenizer, share_prefix):
    scorer = LoglikelihoodScorer(random_model, tokenizer, batch_size=4, share_prefix=share_prefix)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = scorer.loglikelihoods(REQUESTS, progress=False)
    assert any("truncated from the left" in str(w.message) for w in caught), "truncation must be announced"
    reference = _reference(random_model, tokenizer, REQUESTS, max_length=64)
    for (ll, greedy), (ref_ll, ref_greedy) in zip(ours, reference):
        # float32 forward on both sides (padded + bucketed vs unpadded); sums of <= 64 log-probs of
        # magnitude ~6 accumulate ~1e-5 of float32 rounding. A wrong token alignment or a padding
        # leak moves a sum by O(1).
        assert ll == pytest.approx(ref_ll, abs=1e-4)
        assert greedy == ref_greedy


def test_token_logprobs_matches_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, size=(2, 5))
    target, top, index = scoring.token_logprobs(jnp.asarray(logits), jnp.asarray(targets), top_k=3)
    ref_target, ref_argmax = scoring.token_logprobs_reference(logits, targets)
    np.testing.assert_allclose(np.asarray(target), ref_target, atol=1e-5)  # float32 log-softmax of O(10) logits
    np.testing.assert_array_equal(np.asarray(index)[..., 0], ref_argmax)
    assert np.all(np.diff(np.asarray(top), axis=-1) <= 0)  # sorted descending


def test_encode_pair_follows_lm_eval(tokenizer):
    whole = tokenizer.encode("Hello world")
    context, continuation = encode_pair(tokenizer, "Hello ", "world")  # the space moves to the continuation
    assert context == tokenizer.encode("Hello") and context + continuation == whole
    assert encode_pair(tokenizer, "", " hi") == ([tokenizer.eos_id], tokenizer.encode(" hi"))
    eos_text = "<|endoftext|>"
    assert encode_pair(tokenizer, "", eos_text + " hi") == ([tokenizer.eos_id], tokenizer.encode(" hi"))
    with pytest.raises(ValueError, match="context: str"):
        encode_pair(tokenizer, None, " x")


def test_one_compilation_per_bucket(random_model, tokenizer):
    scorer = LoglikelihoodScorer(random_model, tokenizer, batch_size=4, share_prefix=False)
    assert scorer.buckets == (16, 20, 24, 28, 32, 40, 48, 56, 64)
    if not hasattr(scoring._forward_logprobs, "_cache_size"):
        pytest.skip("this jax version does not expose the jit cache size")
    before = scoring._forward_logprobs._cache_size()
    # 8 requests of different lengths whose inputs are all 21..24 tokens: one shape [4, 24]
    requests = [([1] * n, [5, 6, 7]) for n in (19, 20, 21, 22, 19, 20, 21, 22)]
    scorer.loglikelihood_tokens(requests, progress=False)
    assert scoring._forward_logprobs._cache_size() - before == 1


def test_one_compilation_per_bucket_shared_prefix(random_model, tokenizer):
    scorer = LoglikelihoodScorer(random_model, tokenizer, batch_size=4)
    assert scorer.share_prefix
    # 8 distinct contexts of 19..22 tokens, 3-token continuations: footprints 21..24 -> rows of 24,
    # 3 scored positions per row -> one [4, 24] x [4, 16] shape for both batches
    requests = [([1] * n + [k], [5, 6, 7]) for k, n in enumerate((18, 19, 20, 21, 18, 19, 20, 21))]
    scorer.loglikelihood_tokens(requests, progress=False)
    assert scorer._tree_scores._cache_size() == 1


def test_duplicates_scored_once_and_results_in_request_order(random_model, tokenizer):
    scorer = LoglikelihoodScorer(random_model, tokenizer, batch_size=2)
    a, b, c = [1, 2, 3, 4], [5, 6, 7, 8, 9, 10], [11, 12]
    out = scorer.score_sequences([a, b, a, c])
    assert [len(r.logprobs) for r in out] == [3, 5, 3, 1]
    np.testing.assert_array_equal(out[0].logprobs, out[2].logprobs)
    alone = scorer.score_sequences([c])[0]
    np.testing.assert_allclose(out[3].logprobs, alone.logprobs, rtol=0, atol=1e-6)


def test_continuation_longer_than_context_is_an_error(random_model, tokenizer):
    scorer = LoglikelihoodScorer(random_model, tokenizer)
    with pytest.raises(ValueError, match="more than the model's context of 64"):
        scorer.loglikelihood_tokens([([1], [5] * 65)], progress=False)
    with pytest.raises(ValueError, match="encodes to no tokens"):
        scorer.loglikelihood_tokens([([1], [])], progress=False)


def test_tokenizer_with_bos_post_processor(tokenizer):
    """A tokenizer whose post-processor adds BOS: BOS leads the context (as in lm-eval) and is the
    prefix for an empty context."""
    import copy

    from tokenizers import processors

    from jaxstack.data.tokenizer import Tokenizer

    backend = copy.deepcopy(tokenizer.backend)
    bos = backend.token_to_id("<|im_start|>")
    backend.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)])
    with_bos = Tokenizer(backend)
    context, continuation = encode_pair(with_bos, "Hello", " world")
    assert context[0] == bos and context[1:] == tokenizer.encode("Hello")
    assert context + continuation == [bos] + tokenizer.encode("Hello world")
    assert encode_pair(with_bos, "", " world") == ([bos], tokenizer.encode(" world"))
    assert scoring.prefix_token_id(tokenizer) == tokenizer.eos_id

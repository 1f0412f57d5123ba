"""Prefix-shared scoring (``LoglikelihoodScorer(share_prefix=True)``, the default for Llama-family
models): the tree mask and logits gather at model level, the greedy test without argmax, the packing,
the batched tokenisation, and end to end against the one-request-per-row path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxstack.inference import prefix_sharing, scoring
from jaxstack.inference.scoring import LoglikelihoodScorer, encode_pair, encode_pairs

# float32 forwards laid out differently (packed tree rows vs one request per row): per-token
# log-probs differ by float32 rounding of the attention/matmul sums (~1e-6); sums of <= 64 of them
# stay well inside 1e-4. Any mask or position error moves a sum by O(1).
ATOL = 1e-4


def _run(model, tokens, **kwargs):
    graphdef, state = nnx.split(model)
    return np.asarray(nnx.merge(graphdef, state)(jnp.asarray(tokens), **kwargs).logits)


def test_tree_row_equals_separate_sequences(random_model):
    """[context | branch 1 | branch 2] in one row with the tree mask and continued positions gives
    the logits of context+branch 1 and context+branch 2 run alone."""
    rng = np.random.default_rng(0)
    context, b1, b2 = (rng.integers(3, 300, n).tolist() for n in (7, 5, 4))
    row = context + b1 + b2
    positions = list(range(7)) + list(range(7, 12)) + list(range(7, 11))
    branch = [0] * 7 + [1] * 5 + [2] * 4
    segment = [1] * 16
    allowed = prefix_sharing.tree_attention_allowed(jnp.asarray([segment]), jnp.asarray([branch]))
    tree = _run(random_model, [row], positions=jnp.asarray([positions]), attention_allowed=allowed)[0]
    alone1 = _run(random_model, [context + b1])[0]
    alone2 = _run(random_model, [context + b2])[0]
    # float32 logits of magnitude ~10 computed over 16 vs 12 / 11 keys (masked keys add exact zeros,
    # but the matmul blocking differs): ~1e-6 apart; a leaked sibling key moves them by >1e-3 (below)
    np.testing.assert_allclose(tree[:12], alone1, rtol=0, atol=2e-5)
    np.testing.assert_allclose(tree[12:], alone2[7:], rtol=0, atol=2e-5)
    # and the mask matters: without it branch 2 would see branch 1
    leaky = _run(random_model, [row], positions=jnp.asarray([positions]))[0]
    assert np.abs(leaky[12:] - alone2[7:]).max() > 1e-3


@pytest.mark.parametrize("layers,scan,remat,window", [(2, False, False, None), (2, True, True, None),
                                                     (3, True, False, 4),
                                                     pytest.param(1, True, False, None, marks=pytest.mark.slow),
                                                     (1, False, False, 3)])
def test_logits_indices_equal_the_full_forward(layers, scan, remat, window):
    """Logits at the chosen positions (the last layer runs its queries and MLP only there) equal the
    full forward's at those positions, for the layer loop and the layer scan, with a tree mask too."""
    from jaxstack.models import LlamaForCausalLM, get_config

    config = get_config("llama-test", num_layers=layers, scan_layers=scan, remat=remat, sliding_window=window,
                        initializer_range=0.1)
    model = LlamaForCausalLM(config, rngs=nnx.Rngs(4))
    tokens = np.random.default_rng(1).integers(0, 300, (2, 9))
    indices = np.array([[8, 0, 3, 3], [2, 2, 5, 8]])
    full = _run(model, tokens)
    picked = _run(model, tokens, logits_indices=jnp.asarray(indices))
    # float32: the gathered last layer sums the same terms in another order (~1e-7 relative)
    np.testing.assert_allclose(picked, np.take_along_axis(full, indices[:, :, None], 1), rtol=0, atol=2e-5)
    allowed = prefix_sharing.tree_attention_allowed(jnp.asarray([[1] * 5 + [2] * 4] * 2), jnp.asarray([[0, 0, 1, 1, 2, 0, 1, 2, 2]] * 2))
    full = _run(model, tokens, attention_allowed=allowed)
    picked = _run(model, tokens, attention_allowed=allowed, logits_indices=jnp.asarray(indices))
    np.testing.assert_allclose(picked, np.take_along_axis(full, indices[:, :, None], 1), rtol=0, atol=2e-5)


def test_logits_indices_validation(random_model):
    tokens = np.random.default_rng(1).integers(0, 300, (2, 9))
    with pytest.raises(ValueError, match="logits_indices: expected an integer array"):
        _run(random_model, tokens, logits_indices=jnp.zeros((3, 2), jnp.int32))
    with pytest.raises(ValueError, match="attention_allowed: expected a bool array"):
        _run(random_model, tokens, attention_allowed=jnp.ones((2, 9, 8), bool))


def test_logits_indices_with_a_cache(random_model):
    """With a KV cache the layers run in full and the logits are gathered at the end."""
    from jaxstack.models.llama import init_cache

    tokens = jnp.asarray(np.random.default_rng(5).integers(0, 300, (2, 6)))
    cache = init_cache(random_model.config, 2, 16)
    full = random_model(tokens, cache=cache)
    picked = random_model(tokens, cache=cache, logits_indices=jnp.asarray([[5, 1], [0, 5]]))
    np.testing.assert_allclose(np.asarray(picked.logits), np.take_along_axis(np.asarray(full.logits),
                               np.array([[5, 1], [0, 5]])[:, :, None], 1), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(picked.cache.k), np.asarray(full.cache.k))


def test_target_logprobs_and_greedy_against_numpy_with_ties():
    rng = np.random.default_rng(2)
    logits = rng.integers(-3, 4, (3, 5, 11)).astype(np.float32)  # small integers: many exact ties
    targets = rng.integers(0, 11, (3, 5))
    targets[0, 0] = int(np.argmax(logits[0, 0]))  # the first maximum: greedy
    logits[0, 1, 10] = logits[0, 1].max()  # a second maximum at the last id: not greedy
    targets[0, 1] = 10
    ref_lp, ref_argmax = scoring.token_logprobs_reference(logits, targets)
    lp, greedy = jax.jit(scoring.target_logprobs_and_greedy)(jnp.asarray(logits), jnp.asarray(targets))
    np.testing.assert_allclose(np.asarray(lp), ref_lp, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(greedy), ref_argmax == targets)
    assert bool(greedy[0, 0]) and not bool(greedy[0, 1])


def _greedy_continuation(model, context, n):
    tokens = list(context)
    for _ in range(n):
        tokens.append(int(np.argmax(_run(model, [tokens])[0, -1])))
    return tokens[len(context):]


def test_shared_prefix_equals_per_request_path(random_model, tokenizer):
    """Many shapes at once: 2- and 4-way groups, a greedy continuation, duplicates, one-token
    continuations, a one-token context, a group too long for one row (split into pieces that repeat
    the context), and left-truncated requests; small batches so pieces pack several per row."""
    rng = np.random.default_rng(3)
    ctx = [rng.integers(3, 300, n).tolist() for n in (12, 1, 30, 5)]
    greedy = _greedy_continuation(random_model, ctx[0], 4)
    requests = [(ctx[0], greedy), (ctx[0], [7, 8, 9, 10]), (ctx[0], greedy)]          # duplicate
    requests += [(ctx[1], [c]) for c in (4, 5, 6, 7)]                                 # 4-way, 1 token
    requests += [(ctx[2], rng.integers(3, 300, 20).tolist()) for _ in range(3)]      # 30 + 3 x 19 > 64
    requests += [(ctx[3], [11, 12]), (ctx[3], [13])]
    requests += [(rng.integers(3, 300, 60).tolist(), rng.integers(3, 300, 9).tolist())]  # truncated
    shared = LoglikelihoodScorer(random_model, tokenizer, batch_size=2, share_prefix=True)
    alone = LoglikelihoodScorer(random_model, tokenizer, batch_size=3, share_prefix=False)
    with pytest.warns(UserWarning, match="1 of 13 requests exceed the model's context of 64 tokens"):
        ours = shared.loglikelihood_tokens(requests, progress=False)
    with pytest.warns(UserWarning, match="truncated from the left"):
        theirs = alone.loglikelihood_tokens(requests, progress=False)
    for (ll, g), (ref_ll, ref_g) in zip(ours, theirs):
        assert ll == pytest.approx(ref_ll, abs=ATOL)
        assert g == ref_g
    assert ours[0][1] and ours[2] == ours[0] and not ours[1][1]
    assert shared.truncated == 1


def test_pieces_split_long_groups_and_pack_first_fit():
    sequences = [[1] * 10 + [2] * 6, [1] * 10 + [3] * 6, [1] * 10 + [4] * 6, [9, 9, 5]]
    lengths = [6, 6, 6, 1]
    pieces = prefix_sharing.split_pieces(sequences, lengths, max_row=22, offset=100)
    # context 10 + 5 + 5 = 20 fits 22, a third branch would not: the group splits in two
    assert [(len(p.context), len(p.branches), p.footprint, p.n_scored) for p in pieces] == [
        (10, 2, 20, 12), (10, 1, 15, 6), (2, 1, 2, 1)]
    assert [owners for p in pieces for _, owners in p.branches] == [[100], [101], [102], [103]]
    rows = prefix_sharing.pack_rows(pieces, rows=2, row_length=22)
    assert [[p.footprint for p in row] for row in rows] == [[20, 2], [15]]
    tokens, positions, segments, branches, indices, targets, spans = prefix_sharing.tree_batch(rows, 2, 24, 16)
    assert tokens[0, :22].tolist() == [1] * 10 + [2] * 5 + [3] * 5 + [9, 9]
    assert positions[0, :22].tolist() == list(range(10)) + list(range(10, 15)) * 2 + [0, 1]
    assert segments[0].tolist() == [1] * 20 + [2] * 2 + [0] * 2
    assert branches[0, :22].tolist() == [0] * 10 + [1] * 5 + [2] * 5 + [0, 0]
    assert indices[0, :13].tolist() == [9] + list(range(10, 15)) + [9] + list(range(15, 20)) + [21]
    assert targets[0, :13].tolist() == [2] * 6 + [3] * 6 + [5]
    assert [span[:3] for span in spans] == [(0, 0, 6), (0, 6, 6), (0, 12, 1), (1, 0, 6)]


def test_pipelined_chunks_give_the_same_results(random_model, tokenizer):
    requests = [(f"Item {i}: to open a jar", choice) for i in range(9) for choice in (" twist.", " pull it hard.")]
    scorer = LoglikelihoodScorer(random_model, tokenizer, batch_size=4)
    whole = scorer.loglikelihoods(requests, progress=False)
    scorer.PIPELINE_BATCHES = 1  # batch_size 4 -> chunks of 4 requests (cut only where the context changes)
    assert prefix_sharing.context_chunks(requests, 3) == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 18)]
    assert prefix_sharing.context_chunks(requests, 4) == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 18)]
    assert prefix_sharing.context_chunks(requests, 5) == [(0, 6), (6, 12), (12, 18)]
    chunked = scorer.loglikelihoods(requests, progress=False)
    for (a, ga), (b, gb) in zip(whole, chunked):
        assert a == pytest.approx(b, abs=1e-6) and ga == gb


def test_encode_pairs_equals_encode_pair(tokenizer):
    import copy

    from tokenizers import processors

    from jaxstack.data.tokenizer import Tokenizer

    requests = [("To dry a wet shoe,", " stuff it with paper."), ("To dry a wet shoe,", " bake it."),
                ("Trailing space ", "here"), ("", " empty context"), ("日本語の", "文章"),
                (tokenizer.decode([tokenizer.eos_id]) + " starts with the prefix", " yes")]
    assert encode_pairs(tokenizer, requests) == [encode_pair(tokenizer, c, x) for c, x in requests]
    backend = copy.deepcopy(tokenizer.backend)
    bos = backend.token_to_id("<|im_start|>")
    backend.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)])
    with_bos = Tokenizer(backend)
    requests.append(("<|im_start|>already has BOS", " ok"))
    assert encode_pairs(with_bos, requests) == [encode_pair(with_bos, c, x) for c, x in requests]
    with pytest.raises(ValueError, match="expected \\(context: str, continuation: str\\)"):
        encode_pairs(tokenizer, [("a", None)])


@pytest.mark.slow  # builds and compiles a Kimi Linear model (~35 s); the per-request path itself runs fast in the other scorer tests
def test_models_without_tree_support_use_the_per_request_path(tokenizer):
    from jaxstack.models import build_model
    from jaxstack.models.configs import get_kimi_config

    kimi = build_model(get_kimi_config("kimi-linear-tiny", vocab_size=tokenizer.vocab_size), rngs=nnx.Rngs(0))
    assert not scoring.supports_prefix_sharing(kimi)
    assert not LoglikelihoodScorer(kimi, tokenizer, max_length=64).share_prefix
    with pytest.raises(ValueError, match="share_prefix: KimiLinearForCausalLM does not accept"):
        LoglikelihoodScorer(kimi, tokenizer, max_length=64, share_prefix=True)
    # and it scores: one request per row, the same sum as its own full forward
    context, continuation = [5, 6, 7, 8], [9, 10]
    (ll, _), = LoglikelihoodScorer(kimi, tokenizer, max_length=64).loglikelihood_tokens(
        [(context, continuation)], progress=False)
    graphdef, state = nnx.split(kimi)  # jitted: the eager KDA chunk path dispatches op by op (slow)
    full = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t).logits)(state, jnp.asarray([context + continuation[:-1]]))
    ref, _ = scoring.token_logprobs_reference(np.asarray(full), np.array([[6, 7, 8, 9, 10]]))
    assert ll == pytest.approx(float(ref[0, -2:].sum()), abs=1e-4)

"""The log-likelihood scorer: lm-evaluation-harness's ``loglikelihood`` for jaxstack models.

Read top to bottom: how a (context, continuation) pair becomes tokens (``encode_pair``, lm-eval's
``TemplateLM.loglikelihood`` + ``_encode_pair``), the pure scoring math (``token_logprobs``, with the
plain-numpy ``token_logprobs_reference`` beside it), and the batched, jitted, length-bucketed driver
(``LoglikelihoodScorer`` / ``loglikelihoods``). Prefix-shared packing of the requests lives in
:mod:`jaxstack.inference.prefix_sharing`; tasks and metrics on top of the scorer in :mod:`jaxstack.evals`.

Conventions, each matching lm-eval 0.4.x (``lm_eval/api/model.py``, ``lm_eval/models/huggingface.py``):

* trailing whitespace of the context moves to the front of the continuation; the pair is encoded
  whole and the continuation tokens are ``whole[len(encode(context)):]`` (so a merge across the
  boundary is scored as part of the continuation);
* strings are encoded with the tokenizer's own special-token rule (``add_special_tokens=True``): a
  BOS appears only if the tokenizer's post-processor adds one; a string that already starts with the
  prefix token's text gets no special tokens;
* an empty context is replaced by the prefix token (BOS if the tokenizer has one, else EOS), unless
  the continuation already starts with it;
* inputs longer than the model's context keep their last ``max_length + 1`` tokens (left truncation);
  this is counted and warned about, never silent.

An :class:`~jaxstack.layers.interventions.Intervention` (``LoglikelihoodScorer(..., intervention=)``,
``loglikelihoods(..., intervention=)``) edits every request's forward the same way (it must have one
row, b = 1). Its window is in positions within each scored sequence (0 = its first token, after any
left truncation); both layouts keep those positions, so prefix sharing stays on with an edit.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxstack.inference.prefix_sharing import (
    context_chunks,
    pack_rows,
    split_pieces,
    tree_attention_allowed,
    tree_batch,
)
from jaxstack.layers.interventions import Intervention


class LoglikelihoodBackend(Protocol):
    """Anything that scores (context, continuation) pairs: the in-process scorer or the HTTP client."""

    def loglikelihoods(
        self, requests: Sequence[tuple[str, str]], *, batch_size: int = ..., progress: bool = ...
    ) -> list[tuple[float, bool]]: ...


# ----------------------------------------------------------------------------------------------------
# Tokenisation (lm-eval's rules)


def _backend(tokenizer):
    return getattr(tokenizer, "backend", None)


def prefix_token_id(tokenizer) -> int:
    """lm-eval's prefix token for empty contexts: the tokenizer's BOS if it has one, else its EOS.

    BOS is ``tokenizer.bos_id`` if set, else the token the backend's post-processor puts in front of
    an empty string (e.g. Llama 3's ``<|begin_of_text|>``); byte-level BPEs without one use EOS.
    """
    bos = getattr(tokenizer, "bos_id", None)
    if bos is not None:
        return int(bos)
    backend = _backend(tokenizer)
    if backend is not None:
        special = backend.encode("", add_special_tokens=True).ids
        if special:
            return int(special[0])
    eos = getattr(tokenizer, "eos_id", None)
    if eos is None:
        raise ValueError("tokenizer: needs an eos_id (or bos_id) to score an empty context")
    return int(eos)


def encode(tokenizer, text: str, *, add_special_tokens: bool | None = None) -> list[int]:
    """Token ids of ``text`` as lm-eval's HF backend gets them.

    ``add_special_tokens=None`` follows the tokenizer (its post-processor decides about BOS), except
    that a string already starting with the prefix token's text gets none (lm-eval's ``has_bos_prefix``).
    """
    backend = _backend(tokenizer)
    if backend is None:  # a plain object with encode(); it decides about special tokens itself
        return list(tokenizer.encode(text))
    if add_special_tokens is None:
        prefix_text = backend.decode([prefix_token_id(tokenizer)], skip_special_tokens=False)
        add_special_tokens = not (prefix_text and text.startswith(prefix_text))
    return list(backend.encode(text, add_special_tokens=add_special_tokens).ids)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context_ids, continuation_ids) for one request, exactly as lm-eval's causal HF backend splits it."""
    if not isinstance(context, str) or not isinstance(continuation, str):
        raise ValueError(f"request: expected (context: str, continuation: str), got ({context!r}, {continuation!r})")
    if context == "":
        continuation_ids = encode(tokenizer, continuation, add_special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        if continuation_ids and continuation_ids[0] == prefix:
            return continuation_ids[:1], continuation_ids[1:]
        return [prefix], continuation_ids
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(tokenizer, context + continuation)
    context_ids = encode(tokenizer, context)
    return context_ids, whole[len(context_ids):]


def encode_pairs(tokenizer, requests: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """``[encode_pair(tokenizer, context, continuation) for ...]``, with one ``encode_batch`` call per
    special-token setting over the distinct strings (contexts repeat once per choice), and the prefix
    token looked up once. Same ids as :func:`encode_pair` (tested)."""
    backend = _backend(tokenizer)
    if backend is None:
        return [encode_pair(tokenizer, context, continuation) for context, continuation in requests]
    plans, texts = [], {}
    prefix_text = None
    for context, continuation in requests:
        if not isinstance(context, str) or not isinstance(continuation, str):
            raise ValueError(f"request: expected (context: str, continuation: str), got ({context!r}, {continuation!r})")
        if context == "":
            plans.append((None, continuation))
            texts[(continuation, False)] = None
            continue
        stripped = context.rstrip()
        if len(stripped) < len(context):
            continuation = context[len(stripped):] + continuation
            context = stripped
        if prefix_text is None:
            prefix_text = backend.decode([prefix_token_id(tokenizer)], skip_special_tokens=False)
        whole = context + continuation
        whole_key = (whole, not (prefix_text and whole.startswith(prefix_text)))
        context_key = (context, not (prefix_text and context.startswith(prefix_text)))
        plans.append((whole_key, context_key))
        texts[whole_key] = texts[context_key] = None
    # encode_batch_fast (tokenizers >= 0.21) skips the character offsets we do not use: same ids
    encode_batch = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
    for flag in (False, True):
        batch = [text for text, special in texts if special == flag]
        for text, encoding in zip(batch, encode_batch(batch, add_special_tokens=flag) if batch else ()):
            texts[(text, flag)] = encoding.ids
    pairs = []
    for plan in plans:
        if plan[0] is None:
            continuation_ids = list(texts[(plan[1], False)])
            prefix = prefix_token_id(tokenizer)
            if continuation_ids and continuation_ids[0] == prefix:
                pairs.append((continuation_ids[:1], continuation_ids[1:]))
            else:
                pairs.append(([prefix], continuation_ids))
            continue
        whole, context_ids = texts[plan[0]], list(texts[plan[1]])
        pairs.append((context_ids, list(whole[len(context_ids):])))
    return pairs


def truncate_requests(requests: Sequence[tuple[Sequence[int], Sequence[int]]], max_length: int, *,
                      offset: int = 0) -> tuple[list[list[int]], list[int], int]:
    """lm-eval's left truncation of (context_ids, continuation_ids) requests to a ``max_length``-token
    model: each becomes ``context + continuation`` cut to its last ``max_length + 1`` tokens (the inputs
    are all but the last). Returns (sequences, continuation lengths, how many were cut); the caller
    warns. ``offset``: index of ``requests[0]`` in the caller's list (for error messages)."""
    sequences, lengths, truncated = [], [], 0
    for index, (context_ids, continuation_ids) in enumerate(requests, start=offset):
        if len(continuation_ids) == 0:
            raise ValueError(f"requests[{index}]: the continuation encodes to no tokens")
        if len(continuation_ids) > max_length:
            raise ValueError(
                f"requests[{index}]: the continuation has {len(continuation_ids)} tokens, more than the model's "
                f"context of {max_length}; it cannot be scored"
            )
        if len(context_ids) == 0:
            raise ValueError(f"requests[{index}]: empty context ids (use the prefix token, as encode_pair does)")
        whole = list(context_ids) + list(continuation_ids)
        if len(whole) > max_length + 1:
            truncated += 1
            whole = whole[-(max_length + 1):]
        sequences.append(whole)
        lengths.append(len(continuation_ids))
    return sequences, lengths, truncated


# ----------------------------------------------------------------------------------------------------
# The math: pure functions and a plain-numpy reference


def token_logprobs(logits: jax.Array, targets: jax.Array, top_k: int = 1):
    """Per-position log-probabilities of the targets and the top-k alternatives.

    logits: [B, T, V] (any float dtype; log-softmax runs in float32). targets: [B, T] int.
    Returns (target_logprobs [B, T] f32, top_logprobs [B, T, k] f32, top_tokens [B, T, k] int32),
    top-k sorted descending (ties: lowest token id first, as argmax).
    """
    # log p = logit - logsumexp(logits): one reduction, and no [B, T, V] log-prob array to write back
    logits = logits.astype(jnp.float32)
    normaliser = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0] - normaliser
    if top_k == 1:  # argmax is cheaper than a sort and matches torch's first-index tie rule
        index = jnp.argmax(logits, axis=-1)[..., None]
        top_values = jnp.take_along_axis(logits, index, axis=-1)
    else:
        top_values, index = jax.lax.top_k(logits, top_k)
    return target, top_values - normaliser[..., None], index.astype(jnp.int32)


def token_logprobs_reference(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plain-numpy spec of the above for k = 1: (target log-probs [B, T], argmax tokens [B, T]), float64."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    logprobs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    target = np.take_along_axis(logprobs, np.asarray(targets)[..., None], -1)[..., 0]
    return target, logprobs.argmax(-1)


@functools.partial(jax.jit, static_argnames=("graphdef", "top_k"))
def _forward_logprobs(graphdef, state, tokens, targets, intervention=None, *, top_k: int):
    model = nnx.merge(graphdef, state)
    return token_logprobs(model(tokens, intervention=intervention).logits, targets, top_k)


def target_logprobs_and_greedy(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """log p(target) and whether the target is the argmax, without an argmax.

    logits: [B, P, V] (log-softmax in float32). targets: [B, P] int. Returns (target_logprobs [B, P]
    f32, is_greedy [B, P] bool). ``is_greedy`` equals ``argmax(logits) == target`` with argmax's
    first-index tie rule: no logit exceeds the target's and none equals it at a lower token id. One
    fused compare-and-reduce over the vocabulary instead of a variadic (value, index) argmax reduction.
    """
    logits = logits.astype(jnp.float32)
    targets = targets.astype(jnp.int32)
    target = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    beaten = (logits > target[..., None]) | ((logits == target[..., None]) & (ids < targets[..., None]))
    return target - jax.nn.logsumexp(logits, axis=-1), ~jnp.any(beaten, axis=-1)


def _tree_scores_fn(graphdef, treedef):
    """A jitted ``(state leaves, tokens, positions, segment_ids, branch_ids, indices, targets,
    intervention=None) -> (target log-probs, is_greedy)`` for one model structure. It closes over the
    graph definition so that a call hashes no GraphDef and flattens no nnx.State (a measurable share
    of a small model's evaluation time)."""

    @jax.jit
    def scores(leaves, tokens, positions, segment_ids, branch_ids, indices, targets, intervention=None):
        model = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
        allowed = tree_attention_allowed(segment_ids, branch_ids)
        logits = model(tokens, positions, attention_allowed=allowed, logits_indices=indices,
                       intervention=intervention).logits
        return target_logprobs_and_greedy(logits, targets)

    return scores


def supports_prefix_sharing(model) -> bool:
    """Whether ``model(tokens, positions, attention_allowed=..., logits_indices=...)`` is accepted
    (Llama-family models; not the recurrent Kimi Linear, whose KDA state cannot branch)."""
    try:
        parameters = inspect.signature(model.__call__).parameters
    except (TypeError, ValueError):
        return False
    return "attention_allowed" in parameters and "logits_indices" in parameters


# ----------------------------------------------------------------------------------------------------
# Batched, bucketed driver


def bucket_lengths(max_length: int, smallest: int = 16) -> tuple[int, ...]:
    """Padded lengths used for batches: four per octave from ``smallest`` (b, 1.25 b, 1.5 b, 1.75 b, 2 b,
    ...), capped by ``max_length``. At most ~25% of a row is padding (power-of-two buckets wasted 32%
    of the tokens on the Global PIQA fixture; these 9%, for 1.3x the items/s), and an evaluation
    compiles at most 4 shapes per doubling of the sequence length."""
    if max_length <= 0:
        raise ValueError(f"max_length: expected a positive integer, got {max_length}")
    if smallest <= 0:
        raise ValueError(f"smallest: expected a positive integer, got {smallest}")
    buckets, octave = set(), smallest
    while octave < max_length:
        buckets.update(length for length in (octave * q // 4 for q in (4, 5, 6, 7)) if length < max_length)
        octave *= 2
    buckets.add(max_length)
    return tuple(sorted(buckets))


def _bucket_for(length: int, buckets: Sequence[int]) -> int:
    for bucket in buckets:
        if length <= bucket:
            return bucket
    raise AssertionError(f"length {length} exceeds the largest bucket {buckets[-1]}")


@dataclass
class ScoredSequence:
    """Per-token scores of one token sequence: entry i is about token i + 1 given tokens 0..i.

    logprobs: [n - 1] float32 log p(token i+1 | prefix); top_logprobs / top_tokens: [n - 1, k].
    """

    logprobs: np.ndarray
    top_logprobs: np.ndarray
    top_tokens: np.ndarray


class LoglikelihoodScorer:
    """Scores token sequences with one jitted forward per (batch_size, bucket length) shape.

    model: a jaxstack model (nnx.Module returning ModelOutput) whose ``config.max_position_embeddings``
    gives the context length unless ``max_length`` is set. tokenizer: a ``jaxstack.data.tokenizer.Tokenizer``
    (or anything with ``encode`` / ``eos_id``). Requests are sorted longest-first (as lm-eval does),
    right-padded to the next bucket length and run ``batch_size`` rows at a time (short batches are
    padded with dummy rows so the shape, and the compiled program, is reused). Long buckets run fewer
    rows, ``max(1, max_batch_tokens // bucket)``, because the logits [rows, bucket, vocab] are
    materialised in float32 (8192 tokens x a 49k vocabulary = 1.6 GB). The scorer holds a snapshot
    of the model's parameters (``nnx.split`` at construction): build a new one after training steps.

    share_prefix: how ``loglikelihood_tokens`` lays out requests. ``True``: requests with the same
    context tokens share one copy of it -- the context, then each continuation as a branch that
    attends to the context and itself only (a tree mask, positions continuing the context), several
    such pieces packed first-fit into each row, and logits computed only at the scored positions.
    Same numbers as scoring each request alone, up to float32 summation order (the per-request path
    is tested against it). ``False``: one request per row, as lm-eval does. ``None`` (default):
    ``True`` when the model accepts ``attention_allowed`` / ``logits_indices`` (Llama family), else
    ``False`` (Kimi Linear: a recurrent state cannot branch); ``self.share_prefix`` says which.
    ``batch_size`` is rows per forward either way.

    intervention: an Intervention with one row (b = 1), applied to every request (module docstring).
    Prefix sharing stays on with it: the window is in positions within each request, which the tree
    layout keeps (branches continue their context's positions); tested against the per-request path.
    """

    def __init__(self, model, tokenizer=None, *, max_length: int | None = None, batch_size: int = 16,
                 min_bucket: int = 16, max_batch_tokens: int = 8192, share_prefix: bool | None = None,
                 intervention: Intervention | None = None):
        if batch_size <= 0:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
        if max_batch_tokens <= 0:
            raise ValueError(f"max_batch_tokens: expected a positive integer, got {max_batch_tokens}")
        self.max_batch_tokens = max_batch_tokens
        if intervention is not None:
            if intervention.batch != 1:
                raise ValueError(f"intervention: the scorer applies one edit to every request, so it needs one row "
                                 f"(vectors [L, 1, D]), got vectors of shape {list(intervention.vectors.shape)}")
            config = model.config
            intervention.validate(config.num_layers, 1, config.hidden_size)
        self.intervention = intervention
        supported = supports_prefix_sharing(model)
        if share_prefix and not supported:
            raise ValueError(f"share_prefix: {type(model).__name__} does not accept attention_allowed / "
                             "logits_indices; pass share_prefix=False (or None)")
        self.share_prefix = supported if share_prefix is None else bool(share_prefix)
        self.graphdef, self.state = nnx.split(model)
        leaves, treedef = jax.tree.flatten(self.state)
        self._leaves = leaves
        self._tree_scores = _tree_scores_fn(self.graphdef, treedef) if self.share_prefix else None
        self.config = getattr(model, "config", None)
        if max_length is None:
            max_length = getattr(self.config, "max_position_embeddings", None)
            if max_length is None:
                raise ValueError("max_length: the model has no config.max_position_embeddings; pass max_length")
        self.max_length = int(max_length)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.buckets = bucket_lengths(self.max_length, min(min_bucket, self.max_length))
        self.truncated = 0  # requests whose context was cut from the left, over this scorer's life

    def score_sequences(self, sequences: Sequence[Sequence[int]], *, top_k: int = 1, progress: bool = False,
                        desc: str = "scoring") -> list[ScoredSequence]:
        """Per-token log-probs for each sequence (each of 2..max_length + 1 tokens; inputs are seq[:-1])."""
        from tqdm.auto import tqdm

        vocab = getattr(self.config, "vocab_size", None)
        for index, sequence in enumerate(sequences):
            if not 2 <= len(sequence) <= self.max_length + 1:
                raise ValueError(
                    f"sequences[{index}]: expected 2..{self.max_length + 1} tokens (the model's context + 1), "
                    f"got {len(sequence)}"
                )
            if vocab is not None and (min(sequence) < 0 or max(sequence) >= vocab):
                raise ValueError(f"sequences[{index}]: token ids must be in [0, {vocab}), got "
                                 f"[{min(sequence)}, {max(sequence)}]")
        # identical sequences are scored once (lm-eval's HF backend de-duplicates the same way)
        unique: dict[tuple[int, ...], int] = {}
        for sequence in sequences:
            unique.setdefault(tuple(int(t) for t in sequence), len(unique))
        distinct = list(unique)
        order = sorted(range(len(distinct)), key=lambda i: -len(distinct[i]))
        bar = tqdm(total=len(distinct), desc=desc, unit="seq", disable=not progress, leave=False)
        pending = []  # dispatched batches: jax runs them asynchronously while the host builds the next
        start = 0
        while start < len(order):
            bucket = _bucket_for(len(distinct[order[start]]) - 1, self.buckets)
            batch_rows = max(1, min(self.batch_size, self.max_batch_tokens // bucket))
            rows = order[start:start + batch_rows]
            tokens = np.zeros((batch_rows, bucket), np.int32)
            targets = np.zeros((batch_rows, bucket), np.int32)
            for row, index in enumerate(rows):
                sequence = np.asarray(distinct[index], np.int32)
                tokens[row, : len(sequence) - 1] = sequence[:-1]
                targets[row, : len(sequence) - 1] = sequence[1:]
            outputs = _forward_logprobs(self.graphdef, self.state, jnp.asarray(tokens), jnp.asarray(targets),
                                        self.intervention, top_k=top_k)
            pending.append((rows, outputs))
            start += len(rows)
        scored: list[ScoredSequence | None] = [None] * len(distinct)
        for rows, outputs in pending:
            target_lp, top_lp, top_tok = jax.device_get(outputs)
            for row, index in enumerate(rows):
                n = len(distinct[index]) - 1
                scored[index] = ScoredSequence(target_lp[row, :n], top_lp[row, :n], top_tok[row, :n])
            bar.update(len(rows))
        bar.close()
        return [scored[unique[tuple(int(t) for t in sequence)]] for sequence in sequences]  # type: ignore[misc]

    def loglikelihood_tokens(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                             progress: bool = True) -> list[tuple[float, bool]]:
        """(sum of continuation log-probs, continuation is the greedy decode) per (context_ids, continuation_ids)."""
        return self._loglikelihood([(0, list(requests))], len(requests), progress=progress)

    def loglikelihoods(self, requests: Sequence[tuple[str, str]], *, batch_size: int | None = None,
                       progress: bool = True) -> list[tuple[float, bool]]:
        """lm-eval ``loglikelihood`` on (context, continuation) strings.

        With ``share_prefix``, requests are tokenised in chunks of about ``PIPELINE_BATCHES * batch_size``
        requests (cut where the context changes) and each chunk's batches are dispatched before the next chunk is tokenised,
        so tokenisation overlaps the (asynchronous) forward passes of the previous chunk. Rows are sorted
        by length within a chunk.
        """
        if self.tokenizer is None:
            raise ValueError("tokenizer: this scorer was built without one; use loglikelihood_tokens")
        if batch_size is not None and batch_size != self.batch_size:
            if batch_size <= 0:
                raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
            self.batch_size = batch_size
        requests = list(requests)
        if not self.share_prefix:
            return self.loglikelihood_tokens(encode_pairs(self.tokenizer, requests), progress=progress)
        chunks = ((first, encode_pairs(self.tokenizer, requests[first:last]))
                  for first, last in context_chunks(requests, self.PIPELINE_BATCHES * self.batch_size))
        return self._loglikelihood(chunks, len(requests), progress=progress)

    # Chunk size in batches: large enough that the length sort inside a chunk fills rows well (at least
    # 8 full batches of 2-choice items per chunk), small enough to overlap tokenisation with compute.
    PIPELINE_BATCHES = 16

    def _loglikelihood(self, chunks, total: int, *, progress: bool) -> list[tuple[float, bool]]:
        """Scores ``chunks`` of (offset, token requests); the chunk generator is consumed lazily."""
        from tqdm.auto import tqdm

        out: list[tuple[float, bool] | None] = [None] * total
        truncated = 0
        # the per-request path shows score_sequences' own bar
        bar = tqdm(total=total, desc="loglikelihood", unit="req", disable=not (progress and self.share_prefix),
                   leave=False)
        pending = []  # dispatched batches: jax runs them asynchronously while the host prepares more
        for offset, requests in chunks:
            sequences, lengths, n_truncated = truncate_requests(requests, self.max_length, offset=offset)
            truncated += n_truncated
            if self.share_prefix:
                pending.extend(self._dispatch_tree(sequences, lengths, offset))
                continue
            scored = self.score_sequences(sequences, progress=progress, desc="loglikelihood")
            for index, (sequence, result, length) in enumerate(zip(sequences, scored, lengths), start=offset):
                greedy = bool(np.all(result.top_tokens[-length:, 0] == np.asarray(sequence[-length:])))
                out[index] = (float(np.sum(result.logprobs[-length:], dtype=np.float64)), greedy)
            bar.update(len(sequences))
        for spans, outputs, n_requests in pending:
            logprobs, greedy = jax.device_get(outputs)
            # span sums as differences of float64 running sums (one numpy pass per batch, not per span)
            totals = np.zeros((logprobs.shape[0], logprobs.shape[1] + 1))
            np.cumsum(logprobs, axis=1, dtype=np.float64, out=totals[:, 1:])
            misses = np.zeros(totals.shape, np.int64)
            np.cumsum(~greedy, axis=1, out=misses[:, 1:])
            rows, first, n = (np.asarray(column) for column in zip(*(span[:3] for span in spans)))
            sums = (totals[rows, first + n] - totals[rows, first]).tolist()
            all_greedy = (misses[rows, first + n] == misses[rows, first]).tolist()
            for (_, _, _, owners), loglikelihood, is_greedy in zip(spans, sums, all_greedy):
                for owner in owners:
                    out[owner] = (loglikelihood, is_greedy)
            bar.update(n_requests)
        bar.close()
        if truncated:
            self.truncated += truncated
            warnings.warn(
                f"loglikelihood: {truncated} of {total} requests exceed the model's context of "
                f"{self.max_length} tokens; their contexts were truncated from the left (as lm-eval does)",
                stacklevel=3,
            )
        return out  # type: ignore[return-value]

    def _dispatch_tree(self, sequences, lengths, offset: int):
        """Dispatches the ``share_prefix`` batches of already-truncated sequences (see the class
        docstring). Returns [(spans with owners offset by ``offset``, device outputs, n requests)]."""
        vocab = getattr(self.config, "vocab_size", None)
        if vocab is not None:
            for index, sequence in enumerate(sequences, start=offset):
                if min(sequence) < 0 or max(sequence) >= vocab:
                    raise ValueError(f"requests[{index}]: token ids must be in [0, {vocab}), got "
                                     f"[{min(sequence)}, {max(sequence)}]")
        pieces = sorted(split_pieces(sequences, lengths, self.buckets[-1], offset), key=lambda piece: -piece.footprint)
        pending = []
        start = 0
        while start < len(pieces):
            row_length = _bucket_for(pieces[start].footprint, self.buckets)
            rows = max(1, min(self.batch_size, self.max_batch_tokens // row_length))
            packed = pack_rows(pieces[start:], rows, row_length)
            taken = sum(len(row) for row in packed)
            scored = max(sum(piece.n_scored for piece in row) for row in packed)
            scored_length = _bucket_for(scored, bucket_lengths(max(scored, self.buckets[-1]), self.buckets[0]))
            arrays = tree_batch(packed, rows, row_length, scored_length)
            outputs = self._tree_scores(self._leaves, *arrays[:6], self.intervention)
            n_requests = sum(len(owners) for piece in pieces[start:start + taken] for _, owners in piece.branches)
            pending.append((arrays[6], outputs, n_requests))
            start += taken
        return pending


def loglikelihoods(model, tokenizer, requests: Sequence[tuple[str, str]], *, batch_size: int = 16,
                   progress: bool = True, max_length: int | None = None,
                   intervention: Intervention | None = None) -> list[tuple[float, bool]]:
    """lm-eval's ``loglikelihood``: per (context, continuation), (sum of continuation token log-probs
    given the context, whether every continuation token is the argmax).

    model: a jaxstack model (nnx.Module returning ModelOutput) or a backend with a ``loglikelihoods``
    method (e.g. :class:`jaxstack.inference.client.CompletionsClient`). tokenizer: a
    ``jaxstack.data.tokenizer.Tokenizer`` (ignored for a backend). intervention: a one-row
    Intervention applied to every request (see :class:`LoglikelihoodScorer`); not for a backend.
    """
    if is_loglikelihood_backend(model):
        if intervention is not None:
            raise ValueError("intervention: a remote scoring backend cannot apply an intervention; pass the model")
        return model.loglikelihoods(requests, batch_size=batch_size, progress=progress)
    scorer = LoglikelihoodScorer(model, tokenizer, max_length=max_length, batch_size=batch_size,
                                 intervention=intervention)
    return scorer.loglikelihoods(requests, progress=progress)


def is_loglikelihood_backend(model) -> bool:
    """Whether ``model`` is a scoring backend (e.g. the HTTP client) rather than a jaxstack model."""
    return not isinstance(model, nnx.Module) and callable(getattr(model, "loglikelihoods", None))


__all__ = [
    "LoglikelihoodBackend",
    "LoglikelihoodScorer",
    "ScoredSequence",
    "bucket_lengths",
    "encode",
    "encode_pair",
    "encode_pairs",
    "is_loglikelihood_backend",
    "loglikelihoods",
    "prefix_token_id",
    "supports_prefix_sharing",
    "target_logprobs_and_greedy",
    "token_logprobs",
    "token_logprobs_reference",
    "truncate_requests",
]

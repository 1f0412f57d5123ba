"""Batched prefill + decode with a KV cache: greedy, temperature, top-k, top-p, stop tokens, log-probs.

The whole generation (prefill and a ``lax.scan`` over decode steps) is one jitted function of the
model's parameters; the graph definition and sampling settings are static. Prompts of different
lengths are right-padded; each row's cache length is reset to its own prompt length after prefill,
so padding is overwritten by generated tokens and never attended to.

``generate(..., intervention=)`` applies an :class:`~jaxstack.layers.interventions.Intervention` in the
prefill and in every decode step. Its window is in absolute positions (the prompt's tokens are
0..len-1, the n-th generated token is at len + n - 1), so a window may start in the prompt or
mid-generation. The intervention is a traced argument: new vectors or strengths reuse the compiled
generation.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from jaxstack.layers.interventions import Intervention
from jaxstack.models.llama import init_cache


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 = greedy. top_k / top_p restrict the sampled distribution (None = off)."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    stop_tokens: tuple[int, ...] = ()

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens: expected a positive integer, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature: expected >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k <= 0:
            raise ValueError(f"top_k: expected a positive integer or None, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: expected a value in (0, 1] or None, got {self.top_p}")
        object.__setattr__(self, "stop_tokens", tuple(int(t) for t in self.stop_tokens))


@struct.dataclass
class Generation:
    """tokens: [B, N] generated ids (0 after a row stops); logprobs: [B, N] log p(token) under the
    model's distribution (temperature 1, no filtering); sample_logprobs: [B, N] under the distribution
    actually sampled from; lengths: [B] generated tokens per row, the stop token included."""

    tokens: jax.Array
    logprobs: jax.Array
    sample_logprobs: jax.Array
    lengths: jax.Array


def process_logits(logits: jax.Array, config: SamplingConfig) -> jax.Array:
    """Temperature, top-k and top-p applied to logits [B, V] (float32). Filtered entries are -inf."""
    logits = logits.astype(jnp.float32)
    if config.temperature == 0:
        return logits
    logits = logits / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, config.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if config.top_p is not None and config.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep = mass_before < config.top_p
        threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def _select(logits: jax.Array, key: jax.Array, config: SamplingConfig):
    """Returns (token [B], logprob under the raw model [B], logprob under the sampled distribution [B])."""
    raw = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    processed = process_logits(logits, config)
    if config.temperature == 0:
        token = jnp.argmax(processed, axis=-1)
        sample_logprob = jnp.zeros(token.shape, jnp.float32)
    else:
        token = jax.random.categorical(key, processed, axis=-1)
        sample_logprob = jnp.take_along_axis(jax.nn.log_softmax(processed, -1), token[:, None], -1)[:, 0]
    logprob = jnp.take_along_axis(raw, token[:, None], -1)[:, 0]
    return token.astype(jnp.int32), logprob, sample_logprob


@functools.partial(jax.jit, static_argnames=("graphdef", "config", "cache_dtype"))
def _generate(graphdef, state, prompt, prompt_lengths, key, intervention=None, *, config: SamplingConfig,
              cache_dtype):
    model = nnx.merge(graphdef, state)
    batch, prompt_len = prompt.shape
    cache = init_cache(model.config, batch, prompt_len + config.max_new_tokens, cache_dtype)
    prefill = model(prompt, cache=cache, intervention=intervention)
    rows = jnp.arange(batch)
    last_logits = prefill.logits[rows, prompt_lengths - 1]
    cache = prefill.cache.replace(lengths=prompt_lengths.astype(jnp.int32))
    stop = jnp.asarray(config.stop_tokens or (-1,), jnp.int32)

    def step(carry, step_key):
        cache, logits, done = carry
        token, logprob, sample_logprob = _select(logits, step_key, config)
        token = jnp.where(done, 0, token)
        emitted = ~done
        done = done | jnp.isin(token, stop)
        out = model(token[:, None], cache=cache, intervention=intervention)
        # rows that are done keep their cache length (their extra writes are never attended to)
        new_cache = out.cache.replace(lengths=jnp.where(emitted, out.cache.lengths, cache.lengths))
        return (new_cache, out.logits[:, -1], done), (
            token,
            jnp.where(emitted, logprob, 0.0),
            jnp.where(emitted, sample_logprob, 0.0),
            emitted,
        )

    keys = jax.random.split(key, config.max_new_tokens)
    done0 = jnp.zeros((batch,), bool)
    _, (tokens, logprobs, sample_logprobs, emitted) = jax.lax.scan(step, (cache, last_logits, done0), keys)
    return Generation(
        tokens=tokens.T,
        logprobs=logprobs.T,
        sample_logprobs=sample_logprobs.T,
        lengths=jnp.sum(emitted, axis=0).astype(jnp.int32),
    )


def generate(
    model,
    prompts: Sequence[Sequence[int]],
    config: SamplingConfig,
    *,
    seed: int | jax.Array = 0,
    cache_dtype=None,
    pad_length: int | None = None,
    intervention: Intervention | None = None,
) -> Generation:
    """Generates continuations of ``prompts`` (lists of token ids, possibly of different lengths).

    Returns a Generation with tokens / logprobs of shape [B, config.max_new_tokens]. The cache holds
    ``max(len(prompt)) + max_new_tokens`` slots in ``cache_dtype`` (default: the compute dtype).
    ``pad_length`` right-pads prompts to a fixed width (a server buckets widths so that it compiles
    once per bucket, not once per prompt length); the result does not depend on it.
    ``intervention``: residual edits applied in the prefill and every decode step (rows b = B, one
    per prompt, or 1 for all); its window is in absolute positions (see the module docstring).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts: expected a non-empty list of non-empty token-id lists")
    vocab = model.config.vocab_size
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    if pad_length is not None and pad_length < lengths.max():
        raise ValueError(f"pad_length: {pad_length} is shorter than the longest prompt ({lengths.max()} tokens)")
    padded = np.zeros((len(prompts), int(pad_length or lengths.max())), np.int32)
    for row, prompt in enumerate(prompts):
        ids = np.asarray(prompt)
        if ids.min() < 0 or ids.max() >= vocab:
            raise ValueError(f"prompts[{row}]: token ids must be in [0, {vocab}), got range [{ids.min()}, {ids.max()}]")
        padded[row, : len(ids)] = ids
    key = jax.random.key(seed) if isinstance(seed, int) else seed
    graphdef, state = nnx.split(model)
    cache_dtype = jnp.dtype(cache_dtype or model.policy.compute_dtype)
    if intervention is not None:
        intervention.validate(model.config.num_layers, len(prompts), model.config.hidden_size)
    return _generate(graphdef, state, jnp.asarray(padded), jnp.asarray(lengths), key, intervention, config=config,
                     cache_dtype=cache_dtype)

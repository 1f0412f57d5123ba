"""Batched prefill + decode with a decode cache: greedy, temperature, top-k, top-p, stop tokens, log-probs.

The logit processing (:func:`process_logits`, :func:`select_tokens`) works per row on traced
settings (:class:`RowSampling`); ``generate`` uses it with one setting for the batch, the
continuous-batching engine (:mod:`jaxstack.inference.engine`) with one setting per slot. Both model
families decode: Llama (KVCache) and Kimi Linear (KimiCache; prompts of one length, no padding).

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
from jaxstack.models import kimi_linear, llama


# Each family's empty decode cache, and whether its prefill may right-pad a prompt: attention masks
# padded slots out (and later tokens overwrite them), but a KDA recurrent state and short-conv state
# would absorb the padding tokens, so Kimi Linear prompts must be fed at their exact length.
_DECODE_FAMILIES = (
    (llama.LlamaForCausalLM, llama.init_cache, True),
    (kimi_linear.KimiLinearForCausalLM, kimi_linear.init_cache, False),
)


def _family(model):
    for model_class, init, pads in _DECODE_FAMILIES:
        if isinstance(model, model_class):
            return init, pads
    known = [c.__name__ for c, _, _ in _DECODE_FAMILIES]
    raise TypeError(f"model: no decode cache for {type(model).__name__}; expected one of {known}")


def init_decode_cache(model, batch_size: int, max_length: int, dtype):
    """The empty decode cache of ``model``'s family (KVCache or KimiCache), ``batch_size`` rows of up
    to ``max_length`` tokens."""
    return _family(model)[0](model.config, batch_size, max_length, dtype)


def prefill_pads(model) -> bool:
    """Whether a prompt may be right-padded in prefill (True for attention-only families)."""
    return _family(model)[1]


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


@struct.dataclass
class RowSampling:
    """Sampling settings per row, as traced arrays, so rows with different settings share one compiled
    program (the continuous-batching engine keeps one row per slot).

    temperature: [B] float32, 0 = greedy (argmax of the raw logits). top_k: [B] int32, 0 = off, or
    None (off for every row; the sort it needs is skipped). top_p: [B] float32 in (0, 1], 1 = off, or
    None (off for every row).
    """

    temperature: jax.Array
    top_k: jax.Array | None = None
    top_p: jax.Array | None = None

    @classmethod
    def from_config(cls, config: SamplingConfig, batch: int) -> RowSampling:
        """The same settings on each of ``batch`` rows; filters the config leaves off stay None."""
        top_k = None if config.top_k is None else jnp.full((batch,), config.top_k, jnp.int32)
        top_p = None if config.top_p is None or config.top_p >= 1.0 else jnp.full((batch,), config.top_p, jnp.float32)
        return cls(temperature=jnp.full((batch,), config.temperature, jnp.float32), top_k=top_k, top_p=top_p)


def process_logits(logits: jax.Array, sampling: RowSampling | SamplingConfig) -> jax.Array:
    """Temperature, then top-k, then top-p, per row of logits [B, V] (float32). Filtered entries are -inf.

    ``sampling``: per-row settings (RowSampling) or one SamplingConfig for every row. Greedy rows
    (temperature 0) come back unscaled and unfiltered (their argmax is the raw argmax).
    """
    logits = logits.astype(jnp.float32)
    if isinstance(sampling, SamplingConfig):
        sampling = RowSampling.from_config(sampling, logits.shape[0])
    temperature = sampling.temperature.astype(jnp.float32)[:, None]
    greedy = temperature == 0
    # greedy rows are divided by 1, so no inf / nan is made in rows whose values are not used
    scaled = logits / jnp.where(greedy, 1.0, temperature)
    vocab = logits.shape[-1]
    if sampling.top_k is not None or sampling.top_p is not None:
        sorted_logits = jnp.sort(scaled, axis=-1)[..., ::-1]
        threshold = jnp.full((logits.shape[0], 1), -jnp.inf, jnp.float32)
        if sampling.top_k is not None:
            k = sampling.top_k.astype(jnp.int32)[:, None]
            kth = jnp.take_along_axis(sorted_logits, jnp.clip(k - 1, 0, vocab - 1), axis=-1)
            threshold = jnp.where((k > 0) & (k < vocab), kth, threshold)
        if sampling.top_p is not None:
            top_p = sampling.top_p.astype(jnp.float32)[:, None]
            # top-p acts on the top-k-filtered distribution (sorting keeps the filtered order)
            kept = jnp.where(sorted_logits < threshold, -jnp.inf, sorted_logits)
            probs = jax.nn.softmax(kept, axis=-1)
            # keep the smallest prefix whose mass reaches top_p (always at least the top token)
            mass_before = jnp.cumsum(probs, axis=-1) - probs
            nucleus = jnp.min(jnp.where(mass_before < top_p, kept, jnp.inf), axis=-1, keepdims=True)
            threshold = jnp.where(top_p < 1.0, jnp.maximum(threshold, nucleus), threshold)
        scaled = jnp.where(scaled < threshold, -jnp.inf, scaled)
    return jnp.where(greedy, logits, scaled)


def select_tokens(logits: jax.Array, key: jax.Array, sampling: RowSampling):
    """One token per row of logits [B, V] under per-row ``sampling``.

    key: one PRNG key for the whole batch (``generate``), or keys [B], one per row (the engine: a row's
    draw then depends on its own key and logits only, whatever its batch-mates). Returns (token [B]
    int32, log-prob under the raw model [B], log-prob under the sampled distribution [B], 0 when greedy).
    """
    raw = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    processed = process_logits(logits, sampling)
    if key.ndim == 0:
        sampled = jax.random.categorical(key, processed, axis=-1)
    else:
        sampled = jax.vmap(lambda row_key, row: jax.random.categorical(row_key, row, axis=-1))(key, processed)
    greedy = sampling.temperature == 0
    token = jnp.where(greedy, jnp.argmax(processed, axis=-1), sampled).astype(jnp.int32)
    sample_logprob = jnp.take_along_axis(jax.nn.log_softmax(processed, -1), token[:, None], -1)[:, 0]
    logprob = jnp.take_along_axis(raw, token[:, None], -1)[:, 0]
    return token, logprob, jnp.where(greedy, 0.0, sample_logprob)


@functools.partial(jax.jit, static_argnames=("graphdef", "config", "cache_dtype"))
def _generate(graphdef, state, prompt, prompt_lengths, key, intervention=None, *, config: SamplingConfig,
              cache_dtype):
    model = nnx.merge(graphdef, state)
    batch, prompt_len = prompt.shape
    cache = init_decode_cache(model, batch, prompt_len + config.max_new_tokens, cache_dtype)
    if isinstance(model, llama.LlamaForCausalLM):
        # the LM head at each row's last prompt token only (not at all B x P positions); the prompt
        # attends causally among its own tokens (cache_fresh), not over every slot of the empty cache
        last = (prompt_lengths - 1).astype(jnp.int32)[:, None]
        prefill = model(prompt, cache=cache, intervention=intervention, logits_indices=last, cache_fresh=True)
        last_logits = prefill.logits[:, 0]
    else:
        prefill = model(prompt, cache=cache, intervention=intervention)
        last_logits = prefill.logits[jnp.arange(batch), prompt_lengths - 1]
    cache = prefill.cache.replace(lengths=prompt_lengths.astype(jnp.int32))
    stop = jnp.asarray(config.stop_tokens or (-1,), jnp.int32)
    sampling = RowSampling.from_config(config, batch)

    def step(carry, step_key):
        cache, logits, done = carry
        token, logprob, sample_logprob = select_tokens(logits, step_key, sampling)
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
    if not prefill_pads(model) and (len(set(lengths.tolist())) > 1 or (pad_length or lengths.max()) != lengths.max()):
        raise ValueError(f"prompts: {type(model).__name__} prefills without padding (its recurrent state would "
                         f"absorb pad tokens); pass prompts of one length and no pad_length, got lengths "
                         f"{sorted(set(lengths.tolist()))}, pad_length {pad_length}")
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

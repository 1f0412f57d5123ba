"""The two RL engines over the real ``LlamaForCausalLM``: rollout (sampling) and training (re-scoring).

Both engines evaluate the model itself (``nnx.merge`` of the engine's graph definition with the synced
parameters, inside the jitted function, as ``train/step.py`` does), so there is one Llama forward. With
every knob off the rollout runs exactly the training kernels. The knobs (:class:`EngineKnobs`) switch on
the implementation differences that separate an inference engine from a trainer:

* ``kv_cache``: prefill + one-token decode against a KV cache (``init_cache`` from ``models.llama``)
  instead of recomputing the full padded buffer: decode-shaped matmuls (GEMV) instead of the
  trainer's full-sequence ones (GEMM);
* ``fused_qkv``, ``attention_block`` (chunked online-softmax attention), ``norm_chunks`` (split RMSNorm
  reduction): the model's kernel options (``layers.options.KernelOptions``), passed to the model call;
* ``cache_in_compute_dtype``: store the KV cache in the compute dtype (else ``policy.kv_cache_dtype``);
* ``f32_lm_head``: the rollout's LM head in float32 (sets the policy's ``lm_head_dtype``);
* ``pad_rows`` / ``pad_slots``: different batch composition (extra dummy rows, extra cache slots).

Rollout: ``lax.scan`` decode with ``jax.random.categorical`` at T = 1 (no top-p/top-k), returning the
tokens and the log-probs of the very logits it sampled from. Training: a full-sequence forward
returning differentiable per-token log-probs. Parameters are the ``nnx.State`` of the model's Params
(float32 masters); each engine's dtypes are a ``DtypePolicy`` (``rl.policy``).

Both engines take an optional ``intervention`` (:class:`~jaxstack.layers.interventions.Intervention`)
and pass it to every model call (the prefill, each decode step, the re-scoring forward); its window is
in absolute positions, which the rollout's two decode paths (cache or recomputed buffer) agree on.

Several roles sharing one policy (Multi-Agent Evolve, ``rl.mae``) put prompts of different lengths in
one batch: :func:`mixed_rollout` takes right-padded prompts with per-row prompt lengths and one PRNG
key per row (a row's result is that row's result alone), and :func:`masked_token_logprobs` is the
training engine's response-mask form of :func:`token_logprobs`.
"""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from jaxstack.layers.interventions import Intervention
from jaxstack.layers.options import TRAINING_KERNELS, KernelOptions
from jaxstack.models.configs import LlamaConfig
from jaxstack.models.llama import KVCache, LlamaForCausalLM, init_cache
from jaxstack.precision import DtypePolicy
from jaxstack.rl.policy import sync


@dataclasses.dataclass(frozen=True)
class EngineKnobs:
    """Engine-difference switches of the rollout forward. All off = the training kernels exactly."""

    kv_cache: bool = False
    fused_qkv: bool = False
    attention_block: int | None = None
    norm_chunks: int = 1
    cache_in_compute_dtype: bool = False
    f32_lm_head: bool = False
    pad_rows: int = 0
    pad_slots: int = 0

    def __post_init__(self):
        _ = self.kernels  # validates attention_block / norm_chunks
        if self.pad_rows < 0 or self.pad_slots < 0:
            raise ValueError(f"knobs.pad_rows / pad_slots: expected >= 0, got {self.pad_rows}, {self.pad_slots}")

    @property
    def kernels(self) -> KernelOptions:
        """The model-level kernel options of these knobs."""
        return KernelOptions(fused_qkv=self.fused_qkv, attention_block=self.attention_block,
                             norm_chunks=self.norm_chunks)

    @property
    def all_off(self) -> bool:
        return self == EngineKnobs()

    def active(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]


#: Named knob sets. ``none`` is the same-kernel control; ``all`` an inference-engine-like rollout.
KNOB_SETS: dict[str, EngineKnobs] = {
    "none": EngineKnobs(),
    "kv_cache": EngineKnobs(kv_cache=True),
    "fused_qkv": EngineKnobs(fused_qkv=True),
    "online_softmax": EngineKnobs(attention_block=8),
    "chunked_norm": EngineKnobs(norm_chunks=4),
    "cache_compute_dtype": EngineKnobs(kv_cache=True, cache_in_compute_dtype=True),
    "f32_lm_head": EngineKnobs(f32_lm_head=True),
    "batch_padding": EngineKnobs(pad_rows=3, pad_slots=5),
    "all": EngineKnobs(kv_cache=True, fused_qkv=True, attention_block=8, norm_chunks=4,
                       cache_in_compute_dtype=True, pad_rows=3, pad_slots=5),
}


def get_knobs(knobs: str | EngineKnobs) -> EngineKnobs:
    if isinstance(knobs, EngineKnobs):
        return knobs
    if knobs not in KNOB_SETS:
        raise ValueError(f"knobs: unknown knob set {knobs!r}; expected one of {sorted(KNOB_SETS)}")
    return KNOB_SETS[knobs]


# ----------------------------------------------------------------------------------------------------
# The model under an engine's policy


@functools.lru_cache(maxsize=None)
def _graphdef(config: LlamaConfig, policy: DtypePolicy):
    """The graph definition of an engine's ``LlamaForCausalLM`` under ``policy`` (abstract: no parameters
    made). Always the untied graph: an engine holds its LM head as its own synced tensor
    (``rl.policy.sync``)."""
    config = config.replace(tie_word_embeddings=False)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: LlamaForCausalLM(config, policy=policy, rngs=nnx.Rngs(0))))
    return graphdef


def _logits(masters: nnx.State, tokens, *, config: LlamaConfig, policy: DtypePolicy,
            kernels: KernelOptions = TRAINING_KERNELS, cache: KVCache | None = None,
            intervention: Intervention | None = None):
    """The model's logits [B, T, V] (``policy.output_dtype``) and new cache under an engine's policy
    (with ``intervention`` passed to the model call).

    The weight sync (``rl.policy.sync``) is part of the forward: inside a decode loop its casts are
    loop-invariant (the same values every step), and at its use the LM head's transpose folds into the
    head matmul, which then runs on the [V, D] table exactly as the tied model's head does.
    """
    output = nnx.merge(_graphdef(config, policy), sync(masters, policy))(tokens, cache=cache, kernels=kernels,
                                                                         intervention=intervention)
    return output.logits, output.cache


def _log_softmax(logits, policy: DtypePolicy):
    return jax.nn.log_softmax(logits.astype(policy.softmax_dtype), axis=-1).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------
# Training engine


def token_logprobs(masters: nnx.State, tokens: jax.Array, *, prompt_length: int, config: LlamaConfig,
                   policy: DtypePolicy, with_entropy: bool = False, intervention: Intervention | None = None):
    """Training engine: per-token log-probs of ``tokens[:, prompt_length:]`` from one full-sequence forward.

    masters: the float32 master Params (synced here: one cast, differentiable back to the masters).
    tokens: [B, P + G] int (prompt + response). Returns logp [B, G] float32 (and entropy [B, G] of the
    predictive distribution at each response position if ``with_entropy``). intervention: passed to
    the forward (rows b = B or 1).
    """
    if tokens.ndim != 2 or not 0 < prompt_length < tokens.shape[1]:
        raise ValueError(f"tokens/prompt_length: expected [B, P+G] with 0 < P < P+G, got {tokens.shape} and {prompt_length}")
    logits, _ = _logits(masters, tokens, config=config, policy=policy, intervention=intervention)
    logp_all = _log_softmax(logits[:, prompt_length - 1:-1], policy)
    targets = tokens[:, prompt_length:]
    logp = jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]
    if not with_entropy:
        return logp
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    return logp, entropy


# ----------------------------------------------------------------------------------------------------
# Rollout engine


@struct.dataclass
class Rollout:
    """tokens: [B, P+G] int32 (prompt + response; 0 after EOS); logprobs: [B, G] float32 log mu(token)
    of the logits that were sampled from; mask: [B, G] float32 (1 up to and including the first EOS);
    lengths: [B] int32 response tokens (EOS included); finished: [B] bool (an EOS was produced)."""

    tokens: jax.Array
    logprobs: jax.Array
    mask: jax.Array
    lengths: jax.Array
    finished: jax.Array


def _sample(logits, key, noise_std, policy: DtypePolicy):
    """T = 1 categorical sample of the (optionally noised) logits [B, V]; returns (token, its log-prob)."""
    logits = logits.astype(jnp.float32)
    noise_key, sample_key = jax.random.split(key)
    logits = logits + noise_std * jax.random.normal(noise_key, logits.shape, jnp.float32)
    logp = _log_softmax(logits, policy)
    token = jax.random.categorical(sample_key, logp, axis=-1).astype(jnp.int32)
    return token, jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]


@functools.partial(jax.jit, static_argnames=("config", "policy", "knobs", "max_new_tokens", "eos_id"))
def rollout(masters: nnx.State, prompts: jax.Array, key: jax.Array, noise_std: jax.Array | float = 0.0, *,
            config: LlamaConfig, policy: DtypePolicy, knobs: EngineKnobs = EngineKnobs(),
            max_new_tokens: int, eos_id: int, intervention: Intervention | None = None) -> Rollout:
    """Rollout engine: sample ``max_new_tokens`` tokens per prompt at T = 1 with a ``lax.scan`` decode.

    masters: the float32 master Params (synced in each forward, one cast). prompts: [B, P] int (same
    length per row). key: a PRNG key. noise_std: std of Gaussian noise added to the logits before sampling (the
    dose-response experiment; 0 = off); the returned log-probs are those of the noised distribution.
    intervention: passed to every forward (rows b = B or 1; ``knobs.pad_rows`` dummy rows get no edit).
    """
    if prompts.ndim != 2:
        raise ValueError(f"prompts: expected an integer array [B, P], got shape {prompts.shape}")
    if knobs.f32_lm_head:
        policy = policy.replace(lm_head_dtype=jnp.float32)
    batch, prompt_length = prompts.shape
    prompts = prompts.astype(jnp.int32)
    if knobs.pad_rows:
        prompts = jnp.concatenate([prompts, jnp.zeros((knobs.pad_rows, prompt_length), jnp.int32)], axis=0)
    rows = prompts.shape[0]
    total = prompt_length + max_new_tokens
    keys = jax.random.split(key, max_new_tokens)
    if intervention is not None:
        intervention = intervention.pad_rows(knobs.pad_rows)
    run = functools.partial(_logits, config=config, policy=policy, kernels=knobs.kernels, intervention=intervention)

    if knobs.kv_cache:
        cache_dtype = policy.compute_dtype if knobs.cache_in_compute_dtype else policy.kv_cache_dtype
        cache = init_cache(config, rows, total + knobs.pad_slots, cache_dtype)
        logits, cache = run(masters, prompts, cache=cache)
        first, first_logp = _sample(logits[:, -1], keys[0], noise_std, policy)

        def step(carry, step_key):
            cache, token = carry
            logits, cache = run(masters, token[:, None], cache=cache)
            new, logp = _sample(logits[:, -1], step_key, noise_std, policy)
            return (cache, new), (new, logp)

        _, (rest, rest_logp) = jax.lax.scan(step, (cache, first), keys[1:])
        generated = jnp.concatenate([first[:, None], rest.T], axis=1)
        logprobs = jnp.concatenate([first_logp[:, None], rest_logp.T], axis=1)
    else:
        # Recompute the whole (padded) buffer every step: exactly the training engine's kernels.
        buffer = jnp.zeros((rows, total + knobs.pad_slots), jnp.int32).at[:, :prompt_length].set(prompts)

        def step(buffer, xs):
            index, step_key = xs
            logits, _ = run(masters, buffer)
            position = prompt_length + index - 1
            last = jax.lax.dynamic_index_in_dim(logits, position, axis=1, keepdims=False)
            new, logp = _sample(last, step_key, noise_std, policy)
            buffer = jax.lax.dynamic_update_index_in_dim(buffer, new[:, None], position + 1, axis=1)
            return buffer, (new, logp)

        _, (generated, logprobs) = jax.lax.scan(step, buffer, (jnp.arange(max_new_tokens), keys))
        generated, logprobs = generated.T, logprobs.T
    generated, logprobs = generated[:batch], logprobs[:batch]
    is_eos = generated == eos_id
    before = jnp.cumsum(is_eos, axis=1) - is_eos  # EOS tokens strictly before each position
    mask = (before == 0).astype(jnp.float32)
    generated = jnp.where(mask > 0, generated, 0)
    tokens = jnp.concatenate([prompts[:batch], generated], axis=1)
    return Rollout(tokens=tokens, logprobs=logprobs * mask, mask=mask,
                   lengths=jnp.sum(mask, axis=1).astype(jnp.int32), finished=jnp.any(is_eos, axis=1))


# ----------------------------------------------------------------------------------------------------
# Several roles in one batch: prompts of different lengths, response-mask log-probs


def _check_shape(name: str, value, expected, described: str) -> None:
    """chex's shape check, re-raised as a ValueError naming the field."""
    try:
        chex.assert_shape(value, expected)
    except AssertionError:
        raise ValueError(f"{name}: expected shape {described}, got {list(jnp.shape(value))}") from None


def masked_token_logprobs(masters: nnx.State, tokens: jax.Array, response_mask: jax.Array, *, config: LlamaConfig,
                          policy: DtypePolicy, with_entropy: bool = False, intervention: Intervention | None = None):
    """Training engine, response-mask form: per-token log-probs of the tokens ``response_mask`` marks.

    For batches whose rows have prompts of different lengths (several roles in one batch,
    :func:`mixed_rollout`): row b's response is wherever ``response_mask[b]`` is 1, right after its
    own prompt. One full-sequence forward, differentiable back to the masters.

    tokens: [B, T] int. response_mask: [B, T] 0/1 (column 0 is ignored: the first token has no
    prediction). Returns logp [B, T] float32, ``logp[b, t] = log p(tokens[b, t] | tokens[b, :t])``
    where the mask is 1 and 0 elsewhere (and, with ``with_entropy``, entropy [B, T] of the predictive
    distribution of token t, 0 off the mask). With every row's prompt of length P this is
    :func:`token_logprobs` (``prompt_length=P``) placed at columns P.. (the same log-softmax).
    """
    if tokens.ndim != 2 or tokens.shape[1] < 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens: expected an integer array [B, T] with T >= 2, got {tokens.dtype}{list(tokens.shape)}")
    _check_shape("response_mask", response_mask, tokens.shape, f"[B, T] = {list(tokens.shape)} (the tokens' shape)")
    logits, _ = _logits(masters, tokens, config=config, policy=policy, intervention=intervention)
    logp_all = _log_softmax(logits[:, :-1], policy)  # [B, T-1, V]: the predictions of tokens[:, 1:]
    picked = jnp.take_along_axis(logp_all, tokens[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]
    on = response_mask[:, 1:] > 0
    first = jnp.zeros((tokens.shape[0], 1), jnp.float32)
    logp = jnp.concatenate([first, jnp.where(on, picked, 0.0)], axis=1)
    if not with_entropy:
        return logp
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    return logp, jnp.concatenate([first, jnp.where(on, entropy, 0.0)], axis=1)


@struct.dataclass
class MixedRollout:
    """A rollout of prompts of different lengths, each response right after its own prompt.

    tokens: [B, P + G] int32, row b = its prompt at [0, p_b), its response at [p_b, p_b + G) (0 after
    EOS), then 0s; prompt_lengths: [B] int32 (p_b); response_mask: [B, P + G] float32, 1 on response
    tokens up to and including the first EOS; logprobs: [B, P + G] float32, log mu of each response
    token (0 elsewhere), the layout :func:`masked_token_logprobs` returns. The same in response
    coordinates: response [B, G] int32, response_logprobs [B, G], mask [B, G]; lengths: [B] int32
    response tokens (EOS included); finished: [B] bool (an EOS was produced).
    """

    tokens: jax.Array
    prompt_lengths: jax.Array
    response_mask: jax.Array
    logprobs: jax.Array
    response: jax.Array
    response_logprobs: jax.Array
    mask: jax.Array
    lengths: jax.Array
    finished: jax.Array


def _sample_rows(logits, keys, noise_std, policy: DtypePolicy):
    """T = 1 sample of logits [B, V] with one PRNG key per row (keys [B]): row b's draw is the draw of
    row b alone (:func:`_sample` on [1, V] with keys[b]), whatever the other rows are. noise_std None:
    no noise drawn at all (the same tokens as noise 0, a smaller program)."""

    def one(row_logits, key):
        if noise_std is None:
            _, sample_key = jax.random.split(key)  # the key use of _sample, without the noise draw
            logp = _log_softmax(row_logits.astype(jnp.float32)[None], policy)
            token = jax.random.categorical(sample_key, logp, axis=-1).astype(jnp.int32)
            return token[0], jnp.take_along_axis(logp, token[:, None], axis=-1)[0, 0]
        token, logp = _sample(row_logits[None], key, noise_std, policy)
        return token[0], logp[0]

    return jax.vmap(one)(logits, keys)


def _place_rows(buffer, rows, starts):
    """buffer [B, T] with rows [B, G] written at per-row column offsets starts [B] (starts + G <= T)."""
    return jax.vmap(lambda b, r, s: jax.lax.dynamic_update_slice(b, r.astype(b.dtype), (s,)))(buffer, rows, starts)


@functools.partial(jax.jit, static_argnames=("config", "policy", "knobs", "max_new_tokens", "eos_id"))
def _mixed_rollout(masters, prompts, prompt_lengths, keys, noise_std, intervention, *, config, policy, knobs,
                   max_new_tokens, eos_id):
    if knobs.f32_lm_head:
        policy = policy.replace(lm_head_dtype=jnp.float32)
    batch, width = prompts.shape
    lengths = prompt_lengths.astype(jnp.int32)
    prompts = jnp.where(jnp.arange(width)[None, :] < lengths[:, None], prompts.astype(jnp.int32), 0)
    if knobs.pad_rows:  # dummy rows: a one-token prompt each, keys of their own
        prompts = jnp.concatenate([prompts, jnp.zeros((knobs.pad_rows, width), jnp.int32)], axis=0)
        lengths = jnp.concatenate([lengths, jnp.ones((knobs.pad_rows,), jnp.int32)])
        keys = jnp.concatenate([keys, jax.random.split(jax.random.key(0), knobs.pad_rows)])
    rows = prompts.shape[0]
    total = width + max_new_tokens
    step_keys = jnp.swapaxes(jax.vmap(lambda k: jax.random.split(k, max_new_tokens))(keys), 0, 1)  # [G, rows]
    if intervention is not None:
        intervention = intervention.pad_rows(knobs.pad_rows)
    run = functools.partial(_logits, config=config, policy=policy, kernels=knobs.kernels, intervention=intervention)
    row_index = jnp.arange(rows)

    if knobs.kv_cache:
        cache_dtype = policy.compute_dtype if knobs.cache_in_compute_dtype else policy.kv_cache_dtype
        cache = init_cache(config, rows, total + knobs.pad_slots, cache_dtype)
        logits, cache = run(masters, prompts, cache=cache)
        # Slots at and past a row's prompt length hold the prefill of its padding: with the lengths set
        # back they are masked (keys valid up to lengths + t) and overwritten by the decode.
        cache = cache.replace(lengths=lengths)
        first, first_logp = _sample_rows(logits[row_index, lengths - 1], step_keys[0], noise_std, policy)

        def step(carry, keys_t):
            cache, token = carry
            logits, cache = run(masters, token[:, None], cache=cache)
            new, logp = _sample_rows(logits[:, -1], keys_t, noise_std, policy)
            return (cache, new), (new, logp)

        _, (rest, rest_logp) = jax.lax.scan(step, (cache, first), step_keys[1:])
        generated = jnp.concatenate([first[:, None], rest.T], axis=1)
        logprobs = jnp.concatenate([first_logp[:, None], rest_logp.T], axis=1)
    else:
        # Recompute the whole (padded) buffer every step: the training engine's kernels; causal
        # attention keeps each row's positions before its next token independent of what follows.
        buffer = jnp.zeros((rows, total + knobs.pad_slots), jnp.int32).at[:, :width].set(prompts)

        def step(buffer, xs):
            index, keys_t = xs
            logits, _ = run(masters, buffer)
            position = lengths + index - 1
            new, logp = _sample_rows(logits[row_index, position], keys_t, noise_std, policy)
            return buffer.at[row_index, position + 1].set(new), (new, logp)

        _, (generated, logprobs) = jax.lax.scan(step, buffer, (jnp.arange(max_new_tokens), step_keys))
        generated, logprobs = generated.T, logprobs.T
    generated, logprobs, lengths = generated[:batch], logprobs[:batch], lengths[:batch]
    is_eos = generated == eos_id
    mask = ((jnp.cumsum(is_eos, axis=1) - is_eos) == 0).astype(jnp.float32)
    generated = jnp.where(mask > 0, generated, 0)
    logprobs = logprobs * mask
    padded = jnp.zeros((batch, total), jnp.int32).at[:, :width].set(prompts[:batch])
    return MixedRollout(
        tokens=_place_rows(padded, generated, lengths), prompt_lengths=lengths,
        response_mask=_place_rows(jnp.zeros((batch, total), jnp.float32), mask, lengths),
        logprobs=_place_rows(jnp.zeros((batch, total), jnp.float32), logprobs, lengths),
        response=generated, response_logprobs=logprobs, mask=mask,
        lengths=jnp.sum(mask, axis=1).astype(jnp.int32), finished=jnp.any(is_eos, axis=1))


def mixed_rollout(masters: nnx.State, prompts: jax.Array, prompt_lengths: jax.Array, keys: jax.Array,
                  noise_std: jax.Array | float = 0.0, *, config: LlamaConfig, policy: DtypePolicy,
                  knobs: EngineKnobs = EngineKnobs(), max_new_tokens: int, eos_id: int,
                  intervention: Intervention | None = None) -> MixedRollout:
    """Rollout engine for prompts of different lengths in one batch (e.g. several roles sharing a policy).

    prompts: [B, P] int, right-padded: row b's prompt is ``prompts[b, :prompt_lengths[b]]`` (what
    follows is ignored). prompt_lengths: [B] int in [1, P]. keys: [B] PRNG keys, one per row (typed
    keys from ``jax.random.key`` / ``split``, or raw uint32 key data [B, 2]): each row samples with its
    own key, so a row's result is the result of that row rolled out alone with the same key (up to
    float32 summation order: the padding changes matrix shapes, not the math). noise_std, knobs,
    max_new_tokens, eos_id, intervention: as :func:`rollout` (``knobs.pad_rows`` dummy rows get a
    one-token prompt; with ``knobs.kv_cache`` the padded prompts are prefilled once and each row
    decodes from its own length). Returns a :class:`MixedRollout` ([B, P + G] layout and [B, G] views).
    """
    if prompts.ndim != 2 or not jnp.issubdtype(prompts.dtype, jnp.integer):
        raise ValueError(f"prompts: expected an integer array [B, P], got {prompts.dtype}{list(prompts.shape)}")
    batch, width = prompts.shape
    _check_shape("prompt_lengths", prompt_lengths, (batch,), f"[B] = [{batch}]")
    if not jnp.issubdtype(jnp.asarray(prompt_lengths).dtype, jnp.integer):
        raise ValueError(f"prompt_lengths: expected integers, got dtype {jnp.asarray(prompt_lengths).dtype}")
    if not isinstance(prompt_lengths, jax.core.Tracer):
        values = np.asarray(prompt_lengths)
        if values.size and (values.min() < 1 or values.max() > width):
            raise ValueError(f"prompt_lengths: expected values in [1, P={width}], got min {values.min()}, "
                             f"max {values.max()}")
    if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        if keys.ndim != 2 or keys.dtype != jnp.uint32:
            raise ValueError(f"keys: expected [B] PRNG keys (jax.random.split(key, B)) or uint32 key data [B, 2], "
                             f"got {keys.dtype}{list(keys.shape)}")
        keys = jax.random.wrap_key_data(keys)
    _check_shape("keys", keys, (batch,), f"[B] = [{batch}] (one key per row)")
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens: expected a positive integer, got {max_new_tokens}")
    static_zero = isinstance(noise_std, (int, float)) and noise_std == 0
    noise = None if static_zero else jnp.asarray(noise_std, jnp.float32)
    return _mixed_rollout(masters, prompts, jnp.asarray(prompt_lengths), keys, noise, intervention, config=config,
                          policy=policy, knobs=knobs, max_new_tokens=max_new_tokens, eos_id=eos_id)

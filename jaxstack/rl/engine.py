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
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx, struct

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
            kernels: KernelOptions = TRAINING_KERNELS, cache: KVCache | None = None):
    """The model's logits [B, T, V] (``policy.output_dtype``) and new cache under an engine's policy.

    The weight sync (``rl.policy.sync``) is part of the forward: inside a decode loop its casts are
    loop-invariant (the same values every step), and at its use the LM head's transpose folds into the
    head matmul, which then runs on the [V, D] table exactly as the tied model's head does.
    """
    output = nnx.merge(_graphdef(config, policy), sync(masters, policy))(tokens, cache=cache, kernels=kernels)
    return output.logits, output.cache


def _log_softmax(logits, policy: DtypePolicy):
    return jax.nn.log_softmax(logits.astype(policy.softmax_dtype), axis=-1).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------
# Training engine


def token_logprobs(masters: nnx.State, tokens: jax.Array, *, prompt_length: int, config: LlamaConfig,
                   policy: DtypePolicy, with_entropy: bool = False):
    """Training engine: per-token log-probs of ``tokens[:, prompt_length:]`` from one full-sequence forward.

    masters: the float32 master Params (synced here: one cast, differentiable back to the masters).
    tokens: [B, P + G] int (prompt + response). Returns logp [B, G] float32 (and entropy [B, G] of the
    predictive distribution at each response position if ``with_entropy``).
    """
    if tokens.ndim != 2 or not 0 < prompt_length < tokens.shape[1]:
        raise ValueError(f"tokens/prompt_length: expected [B, P+G] with 0 < P < P+G, got {tokens.shape} and {prompt_length}")
    logits, _ = _logits(masters, tokens, config=config, policy=policy)
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
            max_new_tokens: int, eos_id: int) -> Rollout:
    """Rollout engine: sample ``max_new_tokens`` tokens per prompt at T = 1 with a ``lax.scan`` decode.

    masters: the float32 master Params (synced in each forward, one cast). prompts: [B, P] int (same
    length per row). key: a PRNG key. noise_std: std of Gaussian noise added to the logits before sampling (the
    dose-response experiment; 0 = off); the returned log-probs are those of the noised distribution.
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
    run = functools.partial(_logits, config=config, policy=policy, kernels=knobs.kernels)

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

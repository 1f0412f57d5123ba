"""The two RL engines over one functional Llama forward: rollout (sampling) and training (re-scoring).

``forward`` evaluates a ``LlamaForCausalLM`` from its pure-dict parameters with the *same* layer
functions the model uses (``rms_norm``, ``rope_angles``/``apply_rope``, ``dot_product_attention``, the
model's einsum strings), so with every knob off it runs exactly the training kernels. The knobs
(:class:`EngineKnobs`) switch on the implementation differences that separate an inference engine from
a trainer:

* ``kv_cache``: prefill + one-token decode against a KV cache (``init_cache`` from ``models.llama``)
  instead of recomputing the full padded buffer: decode-shaped matmuls (GEMV) instead of the
  trainer's full-sequence ones (GEMM);
* ``fused_qkv``: one matmul against the concatenated q/k/v weights;
* ``attention_block``: chunked online-softmax attention (flash-decoding style: running max and sum in
  the softmax dtype, probabilities rounded to the compute dtype per key block, normalised at the end);
* ``norm_chunks``: RMSNorm sum of squares as ``norm_chunks`` partial sums;
* ``cache_in_compute_dtype``: store the KV cache in the compute dtype (else ``policy.kv_cache_dtype``);
* ``f32_lm_head``: the rollout's LM head in float32 (sets the policy's ``lm_head_dtype``);
* ``pad_rows`` / ``pad_slots``: different batch composition (extra dummy rows, extra cache slots).

Rollout: ``lax.scan`` decode with ``jax.random.categorical`` at T = 1 (no top-p/top-k), returning the
tokens and the log-probs of the very logits it sampled from. Training: a full-sequence forward
returning differentiable per-token log-probs.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import struct

from jaxstack.layers.attention import attention_mask, dot_product_attention
from jaxstack.layers.norms import rms_norm
from jaxstack.layers.rotary import apply_rope, rope_angles
from jaxstack.models.configs import LlamaConfig
from jaxstack.models.llama import KVCache, init_cache
from jaxstack.rl.policy import HEAD_KEY, EnginePolicy


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
        if self.attention_block is not None and self.attention_block <= 0:
            raise ValueError(f"knobs.attention_block: expected a positive integer or None, got {self.attention_block}")
        if self.norm_chunks <= 0:
            raise ValueError(f"knobs.norm_chunks: expected a positive integer, got {self.norm_chunks}")
        if self.pad_rows < 0 or self.pad_slots < 0:
            raise ValueError(f"knobs.pad_rows / pad_slots: expected >= 0, got {self.pad_rows}, {self.pad_slots}")

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
# Forward pieces (knob on = a different implementation of the same math)


def _rms_norm_chunked(x, scale, *, eps, policy, chunks):
    """RMSNorm with the sum of squares as ``chunks`` partial sums (a split reduction). x: [..., D]."""
    d = x.shape[-1]
    if d % chunks:
        raise ValueError(f"knobs.norm_chunks: {chunks} does not divide the hidden size {d}")
    input_dtype = x.dtype
    x32 = policy.accum(x)
    partial = jnp.sum(jnp.square(x32).reshape(*x.shape[:-1], chunks, d // chunks), axis=-1)
    variance = jnp.sum(partial, axis=-1, keepdims=True) / d
    normed = (x32 * jax.lax.rsqrt(variance + eps)).astype(input_dtype)
    return scale.astype(input_dtype) * normed


def _norm(x, scale, config, policy: EnginePolicy, knobs: EngineKnobs):
    if knobs.norm_chunks > 1:
        return _rms_norm_chunked(x, scale, eps=config.rms_norm_eps, policy=policy.model_policy(), chunks=knobs.norm_chunks)
    return rms_norm(x, scale, eps=config.rms_norm_eps, policy=policy.model_policy())


def online_softmax_attention(q, k, v, mask, *, block: int, softmax_dtype) -> jax.Array:
    """Chunked (flash-style) attention. q: [B, T, H, hd]; k, v: [B, S, KV, hd]; mask: [B|1, 1, T, S] bool.

    Keys are processed in blocks of ``block``: running max ``m`` and sum ``l`` in ``softmax_dtype``,
    probabilities rounded to the compute dtype before the P @ V matmul (float32 accumulation), the
    output normalised once at the end. Same math as ``jax.nn.dot_product_attention``, different rounding.
    Returns [B, T, H, hd] in q's dtype. Reference: ``jaxstack.layers.attention.dot_product_attention``.
    """
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    k = jnp.repeat(k, heads // kv_heads, axis=2)
    v = jnp.repeat(v, heads // kv_heads, axis=2)
    slots = k.shape[1]
    blocks = -(-slots // block)
    pad = blocks * block - slots
    mask = jnp.broadcast_to(mask, (batch, 1, length, slots))
    if pad:
        k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, pad)))
    scale = 1.0 / math.sqrt(head_dim)
    # [blocks, B, block, H, hd] and [blocks, B, 1, T, block]: a lax.scan over key blocks (compiles once)
    k_blocks = jnp.moveaxis(k.reshape(batch, blocks, block, heads, head_dim), 1, 0)
    v_blocks = jnp.moveaxis(v.reshape(batch, blocks, block, heads, head_dim), 1, 0)
    mask_blocks = jnp.moveaxis(mask.reshape(batch, 1, length, blocks, block), 3, 0)
    q32 = q.astype(jnp.float32)

    def step(carry, xs):
        m, total, acc = carry
        kb, vb, mb = xs
        # Half-precision operands upcast: their products are exact in float32, so this is a half x half
        # matmul with float32 accumulation (XLA:CPU has no f16 x f16 -> f32 dot_general).
        scores = jnp.einsum("bthd,bshd->bhts", q32, kb.astype(jnp.float32))
        scores = (scores * scale).astype(softmax_dtype)
        scores = jnp.where(mb, scores, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(scores, axis=-1))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        p = jnp.exp(scores - m_safe[..., None])
        correction = jnp.exp(jnp.where(jnp.isfinite(m), m - m_safe, -jnp.inf))
        total = total * correction + jnp.sum(p, axis=-1)
        pv = jnp.einsum("bhts,bshd->bhtd", p.astype(q.dtype).astype(jnp.float32), vb.astype(jnp.float32))
        acc = acc * correction[..., None].astype(jnp.float32) + pv
        return (m_new, total, acc), None

    init = (jnp.full((batch, heads, length), -jnp.inf, softmax_dtype),
            jnp.zeros((batch, heads, length), softmax_dtype),
            jnp.zeros((batch, heads, length, head_dim), jnp.float32))
    (_, total, acc), _ = jax.lax.scan(step, init, (k_blocks, v_blocks, mask_blocks))
    out = acc / jnp.maximum(total, jnp.finfo(softmax_dtype).tiny)[..., None].astype(jnp.float32)
    return jnp.transpose(out, (0, 2, 1, 3)).astype(q.dtype)


def _attention(p, x, rope, cache, config: LlamaConfig, policy: EnginePolicy, knobs: EngineKnobs):
    """Mirrors ``layers.attention.Attention.__call__`` (knobs off). x: [B, T, D]; cache: (k, v, lengths)."""
    compute = policy.compute_dtype
    x = x.astype(compute)
    heads, kv_heads, hd = config.num_heads, config.num_kv_heads, config.head_dim
    biases = [p.get(name) for name in ("q_bias", "k_bias", "v_bias")]
    if knobs.fused_qkv:
        d = x.shape[-1]
        weight = jnp.concatenate(
            [p["q_proj"].reshape(d, heads * hd), p["k_proj"].reshape(d, kv_heads * hd),
             p["v_proj"].reshape(d, kv_heads * hd)], axis=-1).astype(compute)
        fused = x @ weight
        q, k, v = jnp.split(fused, [heads * hd, (heads + kv_heads) * hd], axis=-1)
        q = q.reshape(*x.shape[:2], heads, hd)
        k = k.reshape(*x.shape[:2], kv_heads, hd)
        v = v.reshape(*x.shape[:2], kv_heads, hd)
        q, k, v = (t if b is None else t + b.astype(compute) for t, b in zip((q, k, v), biases))
    else:
        def project(weight, bias):
            y = jnp.einsum("btd,dnh->btnh", x, weight.astype(compute))
            return y if bias is None else y + bias.astype(compute)

        q = project(p["q_proj"], biases[0])
        k = project(p["k_proj"], biases[1])
        v = project(p["v_proj"], biases[2])
    q = apply_rope(q, *rope)
    k = apply_rope(k, *rope)
    new_cache = None
    if cache is None:
        mask, is_causal = None, True
        if knobs.attention_block is not None:
            mask = attention_mask(x.shape[1], x.shape[1], sliding_window=config.sliding_window)
    else:
        cache_k, cache_v, lengths = cache

        def write(row_cache, row_update, row_start):
            index = (row_start,) + (0,) * (row_cache.ndim - 1)
            return jax.lax.dynamic_update_slice(row_cache, row_update.astype(row_cache.dtype), index)

        cache_k = jax.vmap(write)(cache_k, k, lengths)
        cache_v = jax.vmap(write)(cache_v, v, lengths)
        new_cache = (cache_k, cache_v)
        mask = attention_mask(x.shape[1], cache_k.shape[1], query_offset=lengths,
                              key_valid_length=lengths + x.shape[1], sliding_window=config.sliding_window)
        is_causal = False
        k, v = cache_k.astype(q.dtype), cache_v.astype(q.dtype)
    if knobs.attention_block is not None:
        out = online_softmax_attention(q, k, v, mask, block=knobs.attention_block, softmax_dtype=policy.softmax_dtype)
    else:
        out = dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, sliding_window=config.sliding_window,
                                    implementation=config.attention_implementation)
    y = jnp.einsum("btnh,nhd->btd", out, p["o_proj"].astype(compute))
    return y, new_cache


def _mlp(p, x, policy: EnginePolicy):
    """Mirrors ``layers.mlp.SwiGLU.__call__``."""
    compute = policy.compute_dtype
    x = x.astype(compute)
    gate = x @ p["gate_proj"].astype(compute)
    up = x @ p["up_proj"].astype(compute)
    return (jax.nn.silu(gate) * up) @ p["down_proj"].astype(compute)


def _layers(params, config: LlamaConfig):
    layers = params["layers"]
    if config.scan_layers:  # stacked parameters: slice layer i
        return [jax.tree.map(lambda a, i=i: a[i], layers) for i in range(config.num_layers)]
    return [layers[i] if i in layers else layers[str(i)] for i in range(config.num_layers)]


def forward(params: dict, tokens: jax.Array, *, config: LlamaConfig, policy: EnginePolicy,
            knobs: EngineKnobs = EngineKnobs(), cache: KVCache | None = None):
    """Logits of a Llama-family model from synced parameters (``policy.sync(masters)``).

    tokens: [B, T] int. cache: a ``KVCache`` (the T tokens are appended) or None (full sequence).
    Returns (logits [B, T, V] in ``policy.lm_head_dtype``, new cache or None). With ``knobs`` all off
    and no cache this is ``LlamaForCausalLM.__call__`` op for op (tested bit-exact).
    """
    batch, length = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    if cache is not None:
        positions = positions + cache.lengths[:, None]
    rope = rope_angles(positions, config.head_dim, config.rope_theta, config.rope_scaling, policy.accum_dtype)
    x = jnp.take(params["embed"]["embedding"], tokens, axis=0).astype(policy.compute_dtype)
    ks, vs = [], []
    for index, layer in enumerate(_layers(params, config)):
        layer_cache = None if cache is None else (cache.k[index], cache.v[index], cache.lengths)
        h = _norm(x, layer["input_norm"]["scale"], config, policy, knobs)
        attended, kv = _attention(layer["attention"], h, rope, layer_cache, config, policy, knobs)
        x = x + attended
        x = x + _mlp(layer["mlp"], _norm(x, layer["post_attention_norm"]["scale"], config, policy, knobs), policy)
        if kv is not None:
            ks.append(kv[0])
            vs.append(kv[1])
    x = _norm(x, params["norm"]["scale"], config, policy, knobs)
    head_dtype = policy.lm_head_dtype
    head = params[HEAD_KEY].astype(head_dtype)
    if "lm_head" in params:
        logits = x.astype(head_dtype) @ head
    else:
        logits = jnp.einsum("btd,vd->btv", x.astype(head_dtype), head)
    new_cache = None
    if cache is not None:
        new_cache = KVCache(k=jnp.stack(ks), v=jnp.stack(vs), lengths=cache.lengths + length)
    return logits, new_cache


def _log_softmax(logits, policy: EnginePolicy):
    return jax.nn.log_softmax(logits.astype(policy.softmax_dtype), axis=-1).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------
# Training engine


def token_logprobs(masters: dict, tokens: jax.Array, *, prompt_length: int, config: LlamaConfig,
                   policy: EnginePolicy, with_entropy: bool = False):
    """Training engine: per-token log-probs of ``tokens[:, prompt_length:]`` from one full-sequence forward.

    masters: float32 master parameters (synced here: one cast, differentiable back to the masters).
    tokens: [B, P + G] int (prompt + response). Returns logp [B, G] float32 (and entropy [B, G] of the
    predictive distribution at each response position if ``with_entropy``).
    """
    if tokens.ndim != 2 or not 0 < prompt_length < tokens.shape[1]:
        raise ValueError(f"tokens/prompt_length: expected [B, P+G] with 0 < P < P+G, got {tokens.shape} and {prompt_length}")
    params = policy.sync(masters)
    logits, _ = forward(params, tokens, config=config, policy=policy)
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


def _sample(logits, key, noise_std, policy: EnginePolicy):
    """T = 1 categorical sample of the (optionally noised) logits [B, V]; returns (token, its log-prob)."""
    logits = logits.astype(jnp.float32)
    noise_key, sample_key = jax.random.split(key)
    logits = logits + noise_std * jax.random.normal(noise_key, logits.shape, jnp.float32)
    logp = _log_softmax(logits, policy)
    token = jax.random.categorical(sample_key, logp, axis=-1).astype(jnp.int32)
    return token, jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]


@functools.partial(jax.jit, static_argnames=("config", "policy", "knobs", "max_new_tokens", "eos_id"))
def rollout(masters: dict, prompts: jax.Array, key: jax.Array, noise_std: jax.Array | float = 0.0, *,
            config: LlamaConfig, policy: EnginePolicy, knobs: EngineKnobs = EngineKnobs(),
            max_new_tokens: int, eos_id: int) -> Rollout:
    """Rollout engine: sample ``max_new_tokens`` tokens per prompt at T = 1 with a ``lax.scan`` decode.

    masters: float32 master parameters (synced here, one cast). prompts: [B, P] int (same length per
    row). key: a PRNG key. noise_std: std of Gaussian noise added to the logits before sampling (the
    dose-response experiment; 0 = off); the returned log-probs are those of the noised distribution.
    """
    if prompts.ndim != 2:
        raise ValueError(f"prompts: expected an integer array [B, P], got shape {prompts.shape}")
    if knobs.f32_lm_head:
        policy = policy.replace(lm_head_dtype=jnp.float32)
    params = policy.sync(masters)
    batch, prompt_length = prompts.shape
    prompts = prompts.astype(jnp.int32)
    if knobs.pad_rows:
        prompts = jnp.concatenate([prompts, jnp.zeros((knobs.pad_rows, prompt_length), jnp.int32)], axis=0)
    rows = prompts.shape[0]
    total = prompt_length + max_new_tokens
    keys = jax.random.split(key, max_new_tokens)
    run = functools.partial(forward, config=config, policy=policy, knobs=knobs)

    if knobs.kv_cache:
        cache_dtype = policy.compute_dtype if knobs.cache_in_compute_dtype else policy.kv_cache_dtype
        cache = init_cache(config, rows, total + knobs.pad_slots, cache_dtype)
        logits, cache = run(params, prompts, cache=cache)
        first, first_logp = _sample(logits[:, -1], keys[0], noise_std, policy)

        def step(carry, step_key):
            cache, token = carry
            logits, cache = run(params, token[:, None], cache=cache)
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
            logits, _ = run(params, buffer)
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

"""Kimi Linear (Moonshot AI, 2025): a hybrid of Kimi Delta Attention and NoPE MLA with MoE, in Flax NNX.

Read top to bottom: the cache and output pytrees, the decoder layer, the model, and the cache-size report.
The config (layer schedule as data, as in the released ``config.json``) and presets live in
:mod:`jaxstack.models.configs`.

Block (Moonlight / DeepSeek-V3 style, pre-norm)::

    x = x + Mixer(RMSNorm(x))      Mixer = KimiDeltaAttention (KDA layers) or MLA (full-attention layers)
    x = x + FFN(RMSNorm(x))        FFN = SwiGLU for the first ``first_k_dense_replace`` layers, else MoE
    logits = RMSNorm(x) @ lm_head  (untied)

Decode state is one explicit pytree, :class:`KimiCache`: per KDA layer a short-conv state and a float32
recurrent state (fixed size, independent of context length), per MLA layer a latent cache of
``kv_lora_rank + qk_rope_head_dim`` values per token, each layer in its own buffer so that a decode step
updates it in place. :func:`cache_bytes` compares it with an all-MLA
model of the same shape.

``intervention=`` / ``capture=`` (:mod:`jaxstack.layers.interventions`) edit and read the residual
stream around every block, KDA and MLA alike, in chunk and recurrent mode, with or without a cache.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxstack.models.configs import KimiLinearConfig
from jaxstack.models.llama import ModelOutput  # shared output pytree (logits, cache)

from jaxstack.layers.attention import param
from jaxstack.layers.embedding import Embedding
from jaxstack.layers.interventions import Capture, Intervention, LayerHooks, LayerIntervention
from jaxstack.layers.kda import KDAState, KimiDeltaAttention
from jaxstack.layers.mla import MultiHeadLatentAttention
from jaxstack.layers.mlp import SwiGLU
from jaxstack.layers.moe import MoE
from jaxstack.layers.norms import RMSNorm
from jaxstack.layers.rotary import rope_angles
from jaxstack.precision import DtypePolicy, as_dtype, get_policy

Mode = Literal["chunk", "recurrent"]


# ----------------------------------------------------------------------------------------------------
# Cache and output pytrees


@struct.dataclass
class KimiCache:
    """Mixed decode state (explicit pytree, in and out of every model call), one buffer per layer.

    convs: per KDA layer ``[1, B, W-1, 3*H*K]`` short-conv inputs (q, k, v concatenated).
    recurrents: per KDA layer ``[1, B, H, K, V]`` float32 KDA states.
    latents: per MLA layer ``[1, B, S, kv_lora_rank + qk_rope_head_dim]`` MLA latent cache (left-aligned
    slots).
    lengths: ``[B]`` int32 tokens seen per row. All rows must advance together in prefill: the KDA
    state has no notion of padding (pass equal-length prompts, or prefill rows separately).

    Why per-layer buffers: a decode step writes each layer's new latent into that layer's buffer in
    place (``dynamic_update_slice``; the buffer is carried through the decode loop or donated at the jit
    boundary). One stacked ``[L, B, S, C]`` array would have to be sliced per layer (a copy: XLA does
    not alias slices) and re-stacked (a concatenate of the whole cache) on every step. The leading axis
    of size 1 keeps every leaf ``[layers, B, ...]``, as the continuous-batching engine expects; a kind
    with no layers holds one empty ``[0, B, ...]`` array, so the stacked views below keep their shapes.

    ``conv`` / ``recurrent`` / ``latent`` are those stacked views (``[L_kda, B, W-1, 3*H*K]``,
    ``[L_kda, B, H, K, V]``, ``[L_mla, B, S, C]``): a concatenate, for inspection, not for a decode loop.
    """

    convs: tuple[jax.Array, ...]
    recurrents: tuple[jax.Array, ...]
    latents: tuple[jax.Array, ...]
    lengths: jax.Array

    @property
    def conv(self) -> jax.Array:
        return _stacked(self.convs)

    @property
    def recurrent(self) -> jax.Array:
        return _stacked(self.recurrents)

    @property
    def latent(self) -> jax.Array:
        return _stacked(self.latents)

    @property
    def max_length(self) -> int:
        return self.latents[0].shape[2]

    @classmethod
    def from_stacked(cls, conv: jax.Array, recurrent: jax.Array, latent: jax.Array, lengths: jax.Array) -> KimiCache:
        """A cache from stacked arrays (the layout of the views above): each ``[L, B, ...]`` split per layer."""
        return cls(convs=_per_layer(conv), recurrents=_per_layer(recurrent), latents=_per_layer(latent),
                   lengths=lengths)


def _stacked(buffers: tuple[jax.Array, ...]) -> jax.Array:
    return buffers[0] if len(buffers) == 1 else jnp.concatenate(buffers, axis=0)


def _per_layer(stacked: jax.Array) -> tuple[jax.Array, ...]:
    if stacked.shape[0] == 0:
        return (stacked,)
    return tuple(stacked[i : i + 1] for i in range(stacked.shape[0]))


def init_cache(config: KimiLinearConfig, batch_size: int, max_length: int, dtype: Any = jnp.float32) -> KimiCache:
    """An empty cache: ``batch_size`` rows, up to ``max_length`` tokens (MLA slots). dtype: conv + latent."""
    if batch_size <= 0 or max_length <= 0:
        raise ValueError(f"init_cache: batch_size and max_length must be positive, got {batch_size}, {max_length}")
    hk = config.kda_num_heads * config.kda_head_dim
    k = config.kda_head_dim

    def buffers(count, shape, buffer_dtype):
        return tuple(jnp.zeros((1 if count else 0,) + shape, buffer_dtype) for _ in range(max(count, 1)))

    return KimiCache(
        convs=buffers(config.num_kda_layers, (batch_size, config.short_conv_kernel_size - 1, 3 * hk), dtype),
        recurrents=buffers(config.num_kda_layers, (batch_size, config.kda_num_heads, k, k), jnp.float32),
        latents=buffers(config.num_mla_layers, (batch_size, max_length, config.latent_dim), dtype),
        lengths=jnp.zeros((batch_size,), jnp.int32),
    )


# ----------------------------------------------------------------------------------------------------
# Modules


class DecoderLayer(nnx.Module):
    """Pre-norm block: ``x + mixer(norm(x))``; ``x + ffn(norm(x))``. ``self_attn`` is KDA or MLA."""

    def __init__(self, config: KimiLinearConfig, index: int, *, policy: DtypePolicy, rngs: nnx.Rngs):
        std = config.initializer_range
        self.kind = config.layer_types[index]
        self.input_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, policy=policy)
        if self.kind == "linear_attention":
            self.self_attn = KimiDeltaAttention(
                config.hidden_size, config.kda_num_heads, config.kda_head_dim,
                conv_kernel_size=config.short_conv_kernel_size, norm_eps=config.rms_norm_eps,
                backend=config.kda_backend, chunk_size=config.kda_chunk_size, init_std=std, policy=policy, rngs=rngs,
            )
        else:
            self.self_attn = MultiHeadLatentAttention(
                config.hidden_size, config.num_heads, kv_lora_rank=config.kv_lora_rank,
                qk_nope_head_dim=config.qk_nope_head_dim, qk_rope_head_dim=config.qk_rope_head_dim,
                v_head_dim=config.v_head_dim, q_lora_rank=config.q_lora_rank, use_nope=config.mla_use_nope,
                # The latent norms use a fixed eps 1e-6 (KimiRMSNorm's default in the released modeling
                # code and in transformers), not rms_norm_eps: 1e-5 would move f32 logits by ~1e-5.
                norm_eps=1e-6, init_std=std, policy=policy, rngs=rngs,
            )
        self.post_attention_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, policy=policy)
        if config.mlp_layer_types[index] == "sparse":
            self.mlp = MoE(
                config.hidden_size, config.moe_intermediate_size, config.num_experts, config.num_experts_per_token,
                num_shared_experts=config.num_shared_experts, routed_scaling_factor=config.routed_scaling_factor,
                renormalize=config.moe_renormalize, num_groups=config.num_expert_group, topk_groups=config.topk_group,
                implementation=config.moe_implementation, init_std=std, policy=policy, rngs=rngs,
            )
        else:
            self.mlp = SwiGLU(config.hidden_size, config.intermediate_size, init_std=std, policy=policy, rngs=rngs)

    def __call__(self, x, rope, *, segment_ids=None, state=None, mode=None):
        """x: [B, T, d]. state: KDAState (KDA) or (latent [B, S, C], lengths [B]) (MLA) or None.

        Returns (x, new state or None).
        """
        x, new_state, _, _ = self.parts(x, rope, segment_ids=segment_ids, state=state, mode=mode)
        return x, new_state

    def parts(self, x, rope, *, segment_ids=None, state=None, mode=None):
        """As ``__call__``, also returning the block's two residual updates: (x, new state or None,
        mixer output [B, T, d], FFN output [B, T, d])."""
        h = self.input_norm(x)
        if self.kind == "linear_attention":
            mixed, new_state = self.self_attn(h, state=state, mode=mode)
        else:
            mixed, new_state = self.self_attn(h, rope, segment_ids=segment_ids, cache=state)
        x = x + mixed
        ffn = self.mlp(self.post_attention_norm(x))
        x = x + ffn
        return x, new_state, mixed, ffn


def _layer_step(layer: DecoderLayer, x, rope, segment_ids, state, mode, layer_index: int,
                hooks: LayerHooks | None = None, edit: LayerIntervention | None = None, buffers=None):
    """One layer, with the call's intervention slice and captures (``layers.interventions.LayerHooks``).
    Returns (x, new state or None, buffers)."""
    if hooks is None:
        x, new_state = layer(x, rope, segment_ids=segment_ids, state=state, mode=mode)
        return x, new_state, buffers
    x, buffers = hooks.before(x, layer_index, edit, buffers)
    x, new_state, mixed, ffn = layer.parts(x, rope, segment_ids=segment_ids, state=state, mode=mode)
    x, buffers = hooks.after(x, mixed, ffn, layer_index, edit, buffers)
    return x, new_state, buffers


class KimiLinearForCausalLM(nnx.Module):
    """Hybrid KDA / MLA decoder LM. ``model(tokens, positions=None, *, segment_ids=None, cache=None, mode=None,
    intervention=None, capture=None)``."""

    def __init__(self, config: KimiLinearConfig, *, policy: DtypePolicy | str | None = None, rngs: nnx.Rngs):
        self.config = config
        self.policy = policy = get_policy(policy)
        std = config.initializer_range
        # The pad token's row starts at zero, as in transformers (nn.Embedding(padding_idx=pad_token_id));
        # a pad id outside the vocabulary (a preset whose vocab was shrunk) has no row to zero.
        pad = config.pad_token_id
        padding_idx = pad if pad is not None and 0 <= pad < config.vocab_size else None
        self.embed = Embedding(config.vocab_size, config.hidden_size, init_std=std, padding_idx=padding_idx,
                               policy=policy, rngs=rngs)
        self.layers = nnx.List([DecoderLayer(config, i, policy=policy, rngs=rngs) for i in range(config.num_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, policy=policy)
        if config.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = param(rngs, (config.hidden_size, config.vocab_size), ("embed", "vocab"), std=std,
                                 dtype=policy.param_dtype)
        # Position of each layer inside its kind's cache stack.
        types = config.layer_types
        self._slot = tuple(types[:i].count(types[i]) for i in range(config.num_layers))

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        *,
        segment_ids: jax.Array | None = None,
        cache: KimiCache | None = None,
        mode: Mode | None = None,
        intervention: Intervention | None = None,
        capture: Capture | None = None,
    ) -> ModelOutput:
        """tokens: ``[B, T]`` int. positions: ``[B, T]`` absolute positions (used by MLA without NoPE and
        by intervention windows; default ``0..T-1``, or ``cache.lengths + t`` with a cache).

        segment_ids: ``[B, T]`` packed-sequence ids; not supported yet (KDA state would leak across
        documents), raises. cache: a :class:`KimiCache` to continue (the T tokens are appended).
        mode: KDA path, ``"chunk"`` (training / prefill) or ``"recurrent"`` (decode); default
        ``"recurrent"`` for one token with a cache, else ``"chunk"``.
        intervention: an :class:`~jaxstack.layers.interventions.Intervention` (residual edits per layer
        and row over a window of absolute positions). capture: a
        :class:`~jaxstack.layers.interventions.Capture`; ``output.captured[name]`` is [K, B, P, d]
        ("attention" is the KDA or MLA mixer output, "mlp" the dense or MoE FFN output).
        Returns ModelOutput(logits [B, T, vocab] in policy.output_dtype, cache, captured).
        """
        self._check_inputs(tokens, positions, segment_ids, cache, mode)
        config = self.config
        batch, length = tokens.shape
        if intervention is not None:
            intervention.validate(config.num_layers, batch, config.hidden_size)
        if capture is not None:
            capture.validate(config.num_layers, batch, length)
        needs_rope = not config.mla_use_nope and config.qk_rope_head_dim and config.num_mla_layers
        if positions is None and (needs_rope or intervention is not None):
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
            if cache is not None:
                positions = positions + cache.lengths[:, None]
        rope = None
        if needs_rope:
            rope = rope_angles(positions, config.qk_rope_head_dim, config.rope_theta, None, self.policy.accum_dtype)
        hooks = None
        if intervention is not None or capture is not None:
            hooks = LayerHooks(positions, None if intervention is None else intervention.site, capture,
                               config.num_layers)
        x = self.embed(tokens)
        buffers = {} if hooks is None else hooks.init_buffers(batch, x.shape[-1], x.dtype, stacked=False)
        # Each layer reads and returns its own buffers ([1, B, ...] -> [B, ...] and back: bitcasts, no
        # copies); nothing is stacked (see KimiCache).
        convs, recurrents, latents = [], [], []
        for index, layer in enumerate(self.layers):
            state = None
            slot = self._slot[index]
            if cache is not None:
                if layer.kind == "linear_attention":
                    state = KDAState(conv=cache.convs[slot][0], recurrent=cache.recurrents[slot][0])
                else:
                    state = (cache.latents[slot][0], cache.lengths)
            edit = None if intervention is None else intervention.layer(index)
            x, new_state, buffers = _layer_step(layer, x, rope, segment_ids, state, mode, index, hooks, edit, buffers)
            if cache is not None:
                if layer.kind == "linear_attention":
                    convs.append(new_state.conv[None])
                    recurrents.append(new_state.recurrent[None])
                else:
                    latents.append(new_state[None])
        x = self.norm(x)
        if self.lm_head is None:
            logits = self.embed.attend(x)
        else:
            compute = self.policy.compute_dtype
            logits = x.astype(compute) @ self.lm_head[...].astype(compute)
        new_cache = None
        if cache is not None:
            new_cache = KimiCache(
                convs=tuple(convs) if convs else cache.convs,
                recurrents=tuple(recurrents) if recurrents else cache.recurrents,
                latents=tuple(latents) if latents else cache.latents,
                lengths=cache.lengths + length,
            )
        captured = None if hooks is None else hooks.finish(buffers)
        return ModelOutput(logits=logits.astype(self.policy.output_dtype), cache=new_cache, captured=captured)

    def _check_inputs(self, tokens, positions, segment_ids, cache, mode):
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens: expected an integer array [B, T], got {tokens.dtype}{list(tokens.shape)}")
        if positions is not None and (positions.shape != tokens.shape or not jnp.issubdtype(positions.dtype, jnp.integer)):
            raise ValueError(f"positions: expected an integer array of the tokens' shape {list(tokens.shape)}, "
                             f"got {positions.dtype}{list(positions.shape)}")
        if segment_ids is not None:
            raise ValueError("segment_ids: packed sequences are not supported by KimiLinearForCausalLM yet "
                             "(the KDA state and short conv would carry across documents); pass one sequence per row")
        if mode not in (None, "chunk", "recurrent"):
            raise ValueError(f"mode: expected None, 'chunk' or 'recurrent', got {mode!r}")
        if cache is not None:
            self._check_cache(cache, tokens)

    def _check_cache(self, cache, tokens):
        """Shapes and per-layer buffer counts of a KimiCache, with errors naming the stacked view's shape."""
        if not isinstance(cache, KimiCache):
            raise TypeError(f"cache: expected a KimiCache (init_cache), got {type(cache).__name__}")
        config, batch = self.config, tokens.shape[0]
        hk = config.kda_num_heads * config.kda_head_dim
        k = config.kda_head_dim
        expected = {
            "conv": (config.num_kda_layers, (batch, config.short_conv_kernel_size - 1, 3 * hk)),
            "recurrent": (config.num_kda_layers, (batch, config.kda_num_heads, k, k)),
            "latent": (config.num_mla_layers, None),
        }
        for name, (layers, shape) in expected.items():
            buffers = getattr(cache, name + "s")
            stacked = (sum(b.shape[0] for b in buffers),) + tuple(buffers[0].shape[1:])
            per_layer = len(buffers) == max(layers, 1) and all(b.shape[0] == (1 if layers else 0) for b in buffers)
            same = len({tuple(b.shape) for b in buffers}) == 1
            if name == "latent":
                if (not per_layer or not same or stacked[:2] != (layers, batch) or len(stacked) != 4
                        or stacked[3] != config.latent_dim):
                    raise ValueError(f"cache.latent: expected [L_mla={layers}, B={batch}, S, {config.latent_dim}] "
                                     f"as {max(layers, 1)} per-layer [1, B, S, C] buffers, got "
                                     f"{[list(b.shape) for b in buffers]}")
            elif not per_layer or not same or stacked != (layers,) + shape:
                raise ValueError(f"cache.{name}: expected shape {[layers, *shape]} as {max(layers, 1)} per-layer "
                                 f"buffers, got {list(stacked)} ({[list(b.shape) for b in buffers]})")
        if config.num_mla_layers and tokens.shape[1] > cache.max_length:
            raise ValueError(f"tokens: {tokens.shape[1]} tokens do not fit a cache of {cache.max_length} slots")


# ----------------------------------------------------------------------------------------------------
# Cache size report


def cache_bytes(
    config: KimiLinearConfig,
    *,
    context_lengths: tuple[int, ...] = (4096, 131072, 1048576),
    dtype: Any = "bfloat16",
    state_dtype: Any = "float32",
) -> dict[str, Any]:
    """Decode-cache bytes of this hybrid vs an all-MLA model of the same shape, per sequence.

    MLA layers store ``kv_lora_rank + qk_rope_head_dim`` values per token (``dtype``); KDA layers a fixed
    ``H*K*V`` recurrent state (``state_dtype``) plus ``(W-1) * 3*H*K`` short-conv inputs (``dtype``).
    Returns a dict: ``per_token`` (hybrid and all-MLA growth per token), ``fixed`` (hybrid bytes that do
    not grow), and per context length the totals, effective bytes per token and the reduction.
    """
    item = as_dtype(dtype).itemsize
    state_item = as_dtype(state_dtype).itemsize
    latent_per_layer = config.latent_dim * item
    hk = config.kda_num_heads * config.kda_head_dim
    kda_state = config.kda_num_heads * config.kda_head_dim * config.kda_head_dim * state_item
    kda_conv = (config.short_conv_kernel_size - 1) * 3 * hk * item
    hybrid_per_token = config.num_mla_layers * latent_per_layer
    all_mla_per_token = config.num_layers * latent_per_layer
    fixed = config.num_kda_layers * (kda_state + kda_conv)
    report: dict[str, Any] = {
        "dtype": as_dtype(dtype).name,
        "state_dtype": as_dtype(state_dtype).name,
        "layers": {"kda": config.num_kda_layers, "mla": config.num_mla_layers},
        "per_token": {"hybrid": hybrid_per_token, "all_mla": all_mla_per_token},
        "fixed": {"hybrid": fixed, "kda_state_per_layer": kda_state, "kda_conv_per_layer": kda_conv},
        "contexts": {},
    }
    for n in context_lengths:
        hybrid, all_mla = hybrid_per_token * n + fixed, all_mla_per_token * n
        report["contexts"][int(n)] = {
            "hybrid_bytes": hybrid,
            "all_mla_bytes": all_mla,
            "hybrid_bytes_per_token": hybrid / n,
            "all_mla_bytes_per_token": all_mla / n,
            "reduction": 1.0 - hybrid / all_mla,
        }
    return report


__all__ = [
    "DecoderLayer",
    "KimiCache",
    "KimiLinearForCausalLM",
    "ModelOutput",
    "cache_bytes",
    "init_cache",
]

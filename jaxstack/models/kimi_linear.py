"""Kimi Linear (Moonshot AI, 2025): a hybrid of Kimi Delta Attention and NoPE MLA with MoE, in Flax NNX.

Read top to bottom: the config (layer schedule as data, as in the released ``config.json``), the cache
and output pytrees, the decoder layer, the model, presets, and the cache-size report.

Block (Moonlight / DeepSeek-V3 style, pre-norm)::

    x = x + Mixer(RMSNorm(x))      Mixer = KimiDeltaAttention (KDA layers) or MLA (full-attention layers)
    x = x + FFN(RMSNorm(x))        FFN = SwiGLU for the first ``first_k_dense_replace`` layers, else MoE
    logits = RMSNorm(x) @ lm_head  (untied)

Decode state is one explicit pytree, :class:`KimiCache`: per KDA layer a short-conv state and a float32
recurrent state (fixed size, independent of context length), per MLA layer a latent cache of
``kv_lora_rank + qk_rope_head_dim`` values per token. :func:`cache_bytes` compares it with an all-MLA
model of the same shape.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxstack.models.llama import ModelOutput  # shared output pytree (logits, cache)

from jaxstack.layers.attention import param
from jaxstack.layers.embedding import Embedding
from jaxstack.layers.kda import KDAState, KimiDeltaAttention
from jaxstack.layers.mla import MultiHeadLatentAttention
from jaxstack.layers.mlp import SwiGLU
from jaxstack.layers.moe import MoE
from jaxstack.layers.norms import RMSNorm
from jaxstack.layers.rotary import rope_angles
from jaxstack.precision import DtypePolicy, as_dtype, get_policy

Mode = Literal["chunk", "recurrent"]


# ----------------------------------------------------------------------------------------------------
# Config


@dataclasses.dataclass(frozen=True)
class KimiLinearConfig:
    """Kimi Linear decoder. Field names follow the released ``config.json`` where one exists.

    Layer schedule: ``full_attn_layers`` / ``kda_layers`` are **1-based** layer numbers, exactly as in
    ``linear_attn_config`` of the checkpoint (48B: MLA at 4, 8, ..., 24, 27). Every layer must be in
    exactly one list. MoE replaces the dense FFN at 0-based layer ``i`` when
    ``i >= first_k_dense_replace and i % moe_layer_freq == 0`` (DeepSeek / HF-hub rule).
    """

    vocab_size: int = 163840
    hidden_size: int = 2304
    intermediate_size: int = 9216  # dense FFN layers
    num_layers: int = 27
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    # Layer schedule (1-based, as in linear_attn_config).
    full_attn_layers: tuple[int, ...] = (4, 8, 12, 16, 20, 24, 27)
    kda_layers: tuple[int, ...] = (1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19, 21, 22, 23, 25, 26)
    # MLA
    num_heads: int = 32
    kv_lora_rank: int = 512
    q_lora_rank: int | None = None
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    mla_use_nope: bool = True
    rope_theta: float = 10000.0
    # KDA (linear_attn_config)
    kda_num_heads: int = 32
    kda_head_dim: int = 128
    short_conv_kernel_size: int = 4
    kda_backend: str = "auto"
    kda_chunk_size: int | None = None
    # MoE
    num_experts: int = 256
    num_experts_per_token: int = 8
    num_shared_experts: int = 1
    moe_intermediate_size: int = 1024
    routed_scaling_factor: float = 2.446
    moe_renormalize: bool = True
    num_expert_group: int = 1
    topk_group: int = 1
    first_k_dense_replace: int = 1
    moe_layer_freq: int = 1
    moe_implementation: str = "auto"
    # Tokens / context
    max_position_embeddings: int = 1048576
    bos_token_id: int | None = 163584
    eos_token_id: int | tuple[int, ...] | None = 163586
    pad_token_id: int | None = 163839

    def __post_init__(self):
        positive = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "kv_lora_rank",
                    "qk_nope_head_dim", "v_head_dim", "kda_num_heads", "kda_head_dim", "short_conv_kernel_size",
                    "num_experts", "num_experts_per_token", "moe_intermediate_size", "num_expert_group", "topk_group",
                    "moe_layer_freq")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"model.{name}: expected a positive integer, got {value!r}")
        for name in ("full_attn_layers", "kda_layers"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        full, linear = set(self.full_attn_layers), set(self.kda_layers)
        if len(full) != len(self.full_attn_layers) or len(linear) != len(self.kda_layers):
            raise ValueError("model.full_attn_layers / kda_layers: a layer number is listed twice")
        if full & linear:
            raise ValueError(f"model: layers {sorted(full & linear)} are in both full_attn_layers and kda_layers")
        expected = set(range(1, self.num_layers + 1))
        if full | linear != expected:
            missing, extra = sorted(expected - (full | linear)), sorted((full | linear) - expected)
            raise ValueError(
                f"model.full_attn_layers + kda_layers must cover layers 1..{self.num_layers} (1-based) exactly; "
                f"missing {missing}, out of range {extra}"
            )
        if self.num_experts_per_token > self.num_experts:
            raise ValueError(f"model.num_experts_per_token={self.num_experts_per_token} exceeds "
                             f"num_experts={self.num_experts}")
        if self.first_k_dense_replace < 0:
            raise ValueError(f"model.first_k_dense_replace: expected >= 0, got {self.first_k_dense_replace}")
        if self.qk_rope_head_dim < 0 or (not self.mla_use_nope and self.qk_rope_head_dim % 2):
            raise ValueError(f"model.qk_rope_head_dim: expected >= 0 (even with RoPE), got {self.qk_rope_head_dim}")
        if self.moe_implementation not in ("auto", "dense", "ragged"):
            raise ValueError(f"model.moe_implementation: expected 'auto', 'dense' or 'ragged', "
                             f"got {self.moe_implementation!r}")

    # -- derived schedule ----------------------------------------------------------------------------
    @property
    def layer_types(self) -> tuple[str, ...]:
        """Per 0-based layer: ``"linear_attention"`` (KDA) or ``"full_attention"`` (MLA), HF's names."""
        full = set(self.full_attn_layers)
        return tuple("full_attention" if i + 1 in full else "linear_attention" for i in range(self.num_layers))

    @property
    def mlp_layer_types(self) -> tuple[str, ...]:
        """Per 0-based layer: ``"dense"`` (SwiGLU) or ``"sparse"`` (MoE)."""
        return tuple(
            "sparse" if i >= self.first_k_dense_replace and i % self.moe_layer_freq == 0 else "dense"
            for i in range(self.num_layers)
        )

    @property
    def num_kda_layers(self) -> int:
        return len(self.kda_layers)

    @property
    def num_mla_layers(self) -> int:
        return len(self.full_attn_layers)

    @property
    def latent_dim(self) -> int:
        """MLA cache entries per token per layer: kv_lora_rank + qk_rope_head_dim."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    def replace(self, **changes: Any) -> KimiLinearConfig:
        return dataclasses.replace(self, **changes)

    def with_schedule(self, layer_types: list[str] | tuple[str, ...]) -> KimiLinearConfig:
        """A copy with the schedule from per-layer types (``"linear_attention"`` / ``"full_attention"``)."""
        if len(layer_types) != self.num_layers:
            raise ValueError(f"layer_types: expected {self.num_layers} entries, got {len(layer_types)}")
        bad = sorted({t for t in layer_types} - {"linear_attention", "full_attention"})
        if bad:
            raise ValueError(f"layer_types: unknown types {bad}; expected 'linear_attention' or 'full_attention'")
        full = tuple(i + 1 for i, t in enumerate(layer_types) if t == "full_attention")
        linear = tuple(i + 1 for i, t in enumerate(layer_types) if t == "linear_attention")
        return self.replace(full_attn_layers=full, kda_layers=linear)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KimiLinearConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"model: unknown KimiLinearConfig fields {unknown}")
        return cls(**data)

    def num_params(self) -> dict[str, int]:
        """Parameter counts: ``total`` and ``activated`` per token (routed top-k + shared), from shapes."""
        model = nnx.eval_shape(lambda: KimiLinearForCausalLM(self, rngs=nnx.Rngs(0)))
        total = sum(v.size for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
        d, f = self.hidden_size, self.moe_intermediate_size
        unused_experts = self.num_experts - self.num_experts_per_token
        moe_layers = self.mlp_layer_types.count("sparse")
        return {"total": int(total), "activated": int(total - moe_layers * unused_experts * 3 * d * f)}


# ----------------------------------------------------------------------------------------------------
# Cache and output pytrees


@struct.dataclass
class KimiCache:
    """Mixed decode state (explicit pytree, in and out of every model call).

    conv: ``[L_kda, B, W-1, 3*H*K]`` short-conv inputs of the KDA layers (q, k, v concatenated).
    recurrent: ``[L_kda, B, H, K, V]`` float32 KDA states.
    latent: ``[L_mla, B, S, kv_lora_rank + qk_rope_head_dim]`` MLA latent cache (left-aligned slots).
    lengths: ``[B]`` int32 tokens seen per row. All rows must advance together in prefill: the KDA
    state has no notion of padding (pass equal-length prompts, or prefill rows separately).
    """

    conv: jax.Array
    recurrent: jax.Array
    latent: jax.Array
    lengths: jax.Array

    @property
    def max_length(self) -> int:
        return self.latent.shape[2]


def init_cache(config: KimiLinearConfig, batch_size: int, max_length: int, dtype: Any = jnp.float32) -> KimiCache:
    """An empty cache: ``batch_size`` rows, up to ``max_length`` tokens (MLA slots). dtype: conv + latent."""
    if batch_size <= 0 or max_length <= 0:
        raise ValueError(f"init_cache: batch_size and max_length must be positive, got {batch_size}, {max_length}")
    hk = config.kda_num_heads * config.kda_head_dim
    k = config.kda_head_dim
    return KimiCache(
        conv=jnp.zeros((config.num_kda_layers, batch_size, config.short_conv_kernel_size - 1, 3 * hk), dtype),
        recurrent=jnp.zeros((config.num_kda_layers, batch_size, config.kda_num_heads, k, k), jnp.float32),
        latent=jnp.zeros((config.num_mla_layers, batch_size, max_length, config.latent_dim), dtype),
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
        h = self.input_norm(x)
        if self.kind == "linear_attention":
            mixed, new_state = self.self_attn(h, state=state, mode=mode)
        else:
            mixed, new_state = self.self_attn(h, rope, segment_ids=segment_ids, cache=state)
        x = x + mixed
        x = x + self.mlp(self.post_attention_norm(x))
        return x, new_state


def _layer_step(layer: DecoderLayer, x, rope, segment_ids, state, mode, layer_index: int):
    """One layer. ``layer_index`` is where interventions / capture will hook in (DESIGN principle 5)."""
    del layer_index
    return layer(x, rope, segment_ids=segment_ids, state=state, mode=mode)


class KimiLinearForCausalLM(nnx.Module):
    """Hybrid KDA / MLA decoder LM. ``model(tokens, positions=None, *, segment_ids=None, cache=None, mode=None)``."""

    def __init__(self, config: KimiLinearConfig, *, policy: DtypePolicy | str | None = None, rngs: nnx.Rngs):
        self.config = config
        self.policy = policy = get_policy(policy)
        std = config.initializer_range
        self.embed = Embedding(config.vocab_size, config.hidden_size, init_std=std, policy=policy, rngs=rngs)
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
    ) -> ModelOutput:
        """tokens: ``[B, T]`` int. positions: ``[B, T]`` (only used by MLA without NoPE).

        segment_ids: ``[B, T]`` packed-sequence ids; not supported yet (KDA state would leak across
        documents), raises. cache: a :class:`KimiCache` to continue (the T tokens are appended).
        mode: KDA path, ``"chunk"`` (training / prefill) or ``"recurrent"`` (decode); default
        ``"recurrent"`` for one token with a cache, else ``"chunk"``.
        Returns ModelOutput(logits [B, T, vocab] in policy.output_dtype, cache).
        """
        self._check_inputs(tokens, positions, segment_ids, cache, mode)
        config = self.config
        batch, length = tokens.shape
        rope = None
        if not config.mla_use_nope and config.qk_rope_head_dim and config.num_mla_layers:
            if positions is None:
                positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
                if cache is not None:
                    positions = positions + cache.lengths[:, None]
            rope = rope_angles(positions, config.qk_rope_head_dim, config.rope_theta, None, self.policy.accum_dtype)
        x = self.embed(tokens)
        convs, recurrents, latents = [], [], []
        for index, layer in enumerate(self.layers):
            state = None
            slot = self._slot[index]
            if cache is not None:
                if layer.kind == "linear_attention":
                    state = KDAState(conv=cache.conv[slot], recurrent=cache.recurrent[slot])
                else:
                    state = (cache.latent[slot], cache.lengths)
            x, new_state = _layer_step(layer, x, rope, segment_ids, state, mode, index)
            if cache is not None:
                if layer.kind == "linear_attention":
                    convs.append(new_state.conv)
                    recurrents.append(new_state.recurrent)
                else:
                    latents.append(new_state)
        x = self.norm(x)
        if self.lm_head is None:
            logits = self.embed.attend(x)
        else:
            compute = self.policy.compute_dtype
            logits = x.astype(compute) @ self.lm_head[...].astype(compute)
        new_cache = None
        if cache is not None:
            new_cache = KimiCache(
                conv=jnp.stack(convs) if convs else cache.conv,
                recurrent=jnp.stack(recurrents) if recurrents else cache.recurrent,
                latent=jnp.stack(latents) if latents else cache.latent,
                lengths=cache.lengths + length,
            )
        return ModelOutput(logits=logits.astype(self.policy.output_dtype), cache=new_cache)

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
            config, batch = self.config, tokens.shape[0]
            hk = config.kda_num_heads * config.kda_head_dim
            expected = {
                "conv": (config.num_kda_layers, batch, config.short_conv_kernel_size - 1, 3 * hk),
                "recurrent": (config.num_kda_layers, batch, config.kda_num_heads, config.kda_head_dim,
                              config.kda_head_dim),
            }
            for name, shape in expected.items():
                if tuple(getattr(cache, name).shape) != shape:
                    raise ValueError(f"cache.{name}: expected shape {list(shape)}, got {list(getattr(cache, name).shape)}")
            latent = cache.latent.shape
            if latent[:2] != (config.num_mla_layers, batch) or latent[3] != config.latent_dim:
                raise ValueError(f"cache.latent: expected [L_mla={config.num_mla_layers}, B={batch}, S, "
                                 f"{config.latent_dim}], got {list(latent)}")
            if config.num_mla_layers and tokens.shape[1] > cache.max_length:
                raise ValueError(f"tokens: {tokens.shape[1]} tokens do not fit a cache of {cache.max_length} slots")


# ----------------------------------------------------------------------------------------------------
# Presets


def _schedule(num_layers: int, full: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    return {"full_attn_layers": full, "kda_layers": tuple(i for i in range(1, num_layers + 1) if i not in full)}


KIMI_PRESETS: dict[str, KimiLinearConfig] = {
    # The released Kimi-Linear-48B-A3B config.json (shapes / memory maths; 27 layers, MLA at 4,8,..,24,27).
    "kimi-linear-48b-a3b": KimiLinearConfig(),
    # CPU-minutes scale: 4 layers, MLA at the 4th (3:1), MoE 2-of-4 + 1 shared, first layer dense.
    "kimi-linear-tiny": KimiLinearConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=4, **_schedule(4, (4,)),
        num_heads=4, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        kda_num_heads=4, kda_head_dim=16, num_experts=4, num_experts_per_token=2, num_shared_experts=1,
        moe_intermediate_size=32, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    ),
    # One accelerator: 8 layers (3:1, MLA at 4 and 8), d=1024, MoE 4-of-32 + 1 shared.
    "kimi-linear-small": KimiLinearConfig(
        vocab_size=32768, hidden_size=1024, intermediate_size=2816, num_layers=8, **_schedule(8, (4, 8)),
        num_heads=8, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
        kda_num_heads=8, kda_head_dim=128, num_experts=32, num_experts_per_token=4, num_shared_experts=1,
        moe_intermediate_size=512, routed_scaling_factor=2.446, max_position_embeddings=65536,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    ),
}


def get_kimi_config(name: str, **overrides: Any) -> KimiLinearConfig:
    """A Kimi Linear preset by name (``kimi-linear-48b-a3b``, ``-tiny``, ``-small``), with overrides."""
    if name not in KIMI_PRESETS:
        raise ValueError(f"model preset: unknown {name!r}; known Kimi Linear presets are {sorted(KIMI_PRESETS)}")
    return KIMI_PRESETS[name].replace(**overrides) if overrides else KIMI_PRESETS[name]


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
    "KIMI_PRESETS",
    "DecoderLayer",
    "KimiCache",
    "KimiLinearConfig",
    "KimiLinearForCausalLM",
    "ModelOutput",
    "cache_bytes",
    "get_kimi_config",
    "init_cache",
]

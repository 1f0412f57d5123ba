"""Model configurations: frozen dataclasses and named presets.

SmolLM2 presets carry the *released* Hugging Face config.json values (max positions 8192, RoPE theta
1e5 / 1e5 / 1.3e5 after context extension; pretraining used 2048 and theta 1e4 -- override
``rope_theta`` / ``max_position_embeddings`` to reproduce pretraining). Qwen2.5 presets carry the
released base-model configs (q/k/v bias, tied embeddings for 0.5B / 1.5B / 3B). Kimi Linear presets
(``KIMI_PRESETS``) carry the released Kimi-Linear-48B-A3B config plus tiny / small shapes for tests and
one-accelerator runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxstack.layers.rotary import RopeScaling


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """A Llama-family decoder (Llama, SmolLM2, Qwen2/2.5).

    ``attention_implementation``: None (XLA picks), ``"xla"`` or ``"cudnn"`` for
    ``jax.nn.dot_product_attention``. ``scan_layers``: run the layer stack with ``lax.scan`` over
    stacked parameters (fast compile for deep models); logits are identical to the Python loop.
    """

    vocab_size: int = 49152
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_layers: int = 30
    num_heads: int = 9
    num_kv_heads: int = 3
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    qkv_bias: bool = False
    sliding_window: int | None = None
    initializer_range: float = 0.02
    bos_token_id: int | None = 0
    eos_token_id: int | tuple[int, ...] | None = 0
    attention_implementation: str | None = None
    scan_layers: bool = False
    remat: bool = False

    def __post_init__(self):
        positive = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"model.{name}: expected a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"model.num_kv_heads: must divide num_heads={self.num_heads}, got {self.num_kv_heads}"
            )
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"model.head_dim: hidden_size={self.hidden_size} is not divisible by "
                    f"num_heads={self.num_heads}; set head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.head_dim % 2:
            raise ValueError(f"model.head_dim: RoPE needs an even head_dim, got {self.head_dim}")
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if self.attention_implementation not in (None, "xla", "cudnn"):
            raise ValueError(
                "model.attention_implementation: expected null, 'xla' or 'cudnn', "
                f"got {self.attention_implementation!r}"
            )
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ValueError(f"model.sliding_window: expected a positive integer or null, got {self.sliding_window}")

    def replace(self, **changes: Any) -> "LlamaConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LlamaConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"model config: unknown fields {unknown}; known fields are {sorted(known)}")
        return cls(**data)

    def num_params(self) -> int:
        """Total parameter count (tied head counted once)."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * hd * (self.num_heads * 2 + self.num_kv_heads * 2)
        if self.qkv_bias:
            attn += hd * (self.num_heads + 2 * self.num_kv_heads)
        per_layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else d * self.vocab_size
        return self.vocab_size * d + self.num_layers * per_layer + d + head

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 x (parameters used in matmuls, the output head included, the
        embedding lookup excluded) + causal attention 6 * L * T * H * hd (the PaLM-style estimate
        halved for causality)."""
        matmul_params = self.num_params() - (0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size)
        attention = 6 * self.num_layers * seq_len * self.num_heads * self.head_dim
        return 6.0 * matmul_params + attention


_SMOLLM2 = dict(vocab_size=49152, rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=8192,
                bos_token_id=0, eos_token_id=0, initializer_range=0.02)
_QWEN25 = dict(vocab_size=151936, rms_norm_eps=1e-6, qkv_bias=True, rope_theta=1000000.0,
               max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151643, initializer_range=0.02)

PRESETS: dict[str, LlamaConfig] = {
    # SmolLM2 (HuggingFaceTB/SmolLM2-*, released config.json).
    "smollm2-135m": LlamaConfig(**_SMOLLM2, hidden_size=576, intermediate_size=1536, num_layers=30,
                                num_heads=9, num_kv_heads=3, rope_theta=100000.0),
    "smollm2-360m": LlamaConfig(**_SMOLLM2, hidden_size=960, intermediate_size=2560, num_layers=32,
                                num_heads=15, num_kv_heads=5, rope_theta=100000.0),
    "smollm2-1.7b": LlamaConfig(**_SMOLLM2, hidden_size=2048, intermediate_size=8192, num_layers=24,
                                num_heads=32, num_kv_heads=32, rope_theta=130000.0),
    # Qwen2.5 base models (Qwen/Qwen2.5-*, released config.json).
    "qwen2.5-0.5b": LlamaConfig(**_QWEN25, hidden_size=896, intermediate_size=4864, num_layers=24,
                                num_heads=14, num_kv_heads=2, tie_word_embeddings=True),
    "qwen2.5-1.5b": LlamaConfig(**_QWEN25, hidden_size=1536, intermediate_size=8960, num_layers=28,
                                num_heads=12, num_kv_heads=2, tie_word_embeddings=True),
    "qwen2.5-3b": LlamaConfig(**_QWEN25, hidden_size=2048, intermediate_size=11008, num_layers=36,
                              num_heads=16, num_kv_heads=2, tie_word_embeddings=True),
    # Tiny shapes for tests and CPU demos (SmolLM2-shaped: GQA 3:1, tied, eps 1e-5).
    "smollm2-tiny": LlamaConfig(vocab_size=2048, hidden_size=192, intermediate_size=512, num_layers=4,
                                num_heads=6, num_kv_heads=2, rope_theta=10000.0, max_position_embeddings=1024,
                                tie_word_embeddings=True),
    "llama-test": LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=160, num_layers=2,
                              num_heads=4, num_kv_heads=2, rope_theta=10000.0, max_position_embeddings=256,
                              tie_word_embeddings=False),
    "qwen2.5-test": LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=160, num_layers=2,
                                num_heads=4, num_kv_heads=2, rope_theta=1000000.0, max_position_embeddings=256,
                                qkv_bias=True, rms_norm_eps=1e-6, tie_word_embeddings=True),
}


def get_config(name: str, **overrides: Any) -> LlamaConfig:
    """Returns a preset by name with field overrides."""
    if name not in PRESETS:
        raise ValueError(f"model preset: unknown {name!r}; known presets are {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


# ----------------------------------------------------------------------------------------------------
# Kimi Linear


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
        """Parameter counts: ``total`` and ``activated`` per token (routed top-k + shared), from the shapes
        of KimiLinearForCausalLM's parameters (tests check this against its abstract state)."""
        d, f, e = self.hidden_size, self.moe_intermediate_size, self.num_experts
        h, k, w = self.kda_num_heads, self.kda_head_dim, self.short_conv_kernel_size
        # KDA: q/k/v/o projections, 3 short convs, low-rank f and g gates, A_log, dt_bias, b_proj, o_norm.
        kda = 4 * d * h * k + 3 * w * h * k + 2 * (d * k + k * h * k) + h + h * k + d * h + k
        qk = self.qk_nope_head_dim + self.qk_rope_head_dim
        q = d * self.num_heads * qk if self.q_lora_rank is None else self.q_lora_rank * (d + 1 + self.num_heads * qk)
        mla = (q + d * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank
               + self.kv_lora_rank * self.num_heads * (self.qk_nope_head_dim + self.v_head_dim)
               + self.num_heads * self.v_head_dim * d)
        moe = d * e + e + 3 * e * d * f + 3 * d * f * self.num_shared_experts  # router, bias, experts, shared
        dense = 3 * d * self.intermediate_size
        total = self.vocab_size * d * (1 if self.tie_word_embeddings else 2) + d + 2 * d * self.num_layers
        total += sum(kda if t == "linear_attention" else mla for t in self.layer_types)
        total += sum(moe if t == "sparse" else dense for t in self.mlp_layer_types)
        unused_experts = self.num_experts - self.num_experts_per_token
        moe_layers = self.mlp_layer_types.count("sparse")
        return {"total": int(total), "activated": int(total - moe_layers * unused_experts * 3 * d * f)}


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

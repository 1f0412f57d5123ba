"""Model configurations: frozen dataclasses and named presets.

SmolLM2 presets carry the *released* Hugging Face config.json values (max positions 8192, RoPE theta
1e5 / 1e5 / 1.3e5 after context extension; pretraining used 2048 and theta 1e4 -- override
``rope_theta`` / ``max_position_embeddings`` to reproduce pretraining). Qwen2.5 presets carry the
released base-model configs (q/k/v bias, tied embeddings for 0.5B / 1.5B / 3B).
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

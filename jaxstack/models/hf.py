"""Hugging Face checkpoints of the Llama family: ``config.json`` mapping and tensor table.

Architectures: ``LlamaForCausalLM`` (SmolLM2, Llama) and ``Qwen2ForCausalLM`` (Qwen2 / Qwen2.5). Tensors
map one to one (``.weight`` transposed from torch's ``[out, in]``); RoPE uses HF's rotate-half
convention on both sides, so no q/k permutation is needed. Tied models carry no ``lm_head.weight``.
With ``scan_layers`` each per-layer tensor is one slice of the stacked ``[L, ...]`` parameter.

Registered with :mod:`jaxstack.models.checkpoint`, whose ``load_pretrained`` / ``save_pretrained`` /
``config_from_hf`` read and write these checkpoints.
"""

from __future__ import annotations

from typing import Any

from jaxstack.layers.rotary import RopeScaling
from jaxstack.models.checkpoint import (
    CONFIG_FILE,
    IDENTITY,
    CheckpointError,
    Family,
    TensorSpec,
    TensorTable,
    config_field,
    config_token_ids,
    linear,
    linear_in,
    register,
    reshape,
)
from jaxstack.models.configs import LlamaConfig
from jaxstack.models.llama import LlamaForCausalLM

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")


# ----------------------------------------------------------------------------------------------------
# config.json <-> LlamaConfig


def _rope_scaling(hf: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    """(rope_theta, scaling) from the top-level keys or transformers >= 5's nested ``rope_parameters``."""
    rope = config_field(hf, "rope_parameters", dict, {})
    theta = config_field(rope, "rope_theta", float, None, name="rope_parameters")
    if theta is None:
        theta = config_field(hf, "rope_theta", float, 10000.0)
    scaling, where = config_field(hf, "rope_scaling", dict, {}), "rope_scaling"
    if not scaling:
        scaling, where = rope, "rope_parameters"
    rope_type = config_field(scaling, ("rope_type", "type"), str, "default", name=where)
    if rope_type not in ("default", "linear", "llama3"):
        raise CheckpointError(f"{CONFIG_FILE}: rope type {rope_type!r} is not supported (default, linear, llama3)")
    if rope_type == "default":
        return theta, None
    kwargs = {"kind": rope_type, "factor": config_field(scaling, "factor", float, name=where)}
    if rope_type == "llama3":
        kwargs.update(
            low_freq_factor=config_field(scaling, "low_freq_factor", float, name=where),
            high_freq_factor=config_field(scaling, "high_freq_factor", float, name=where),
            original_max_position_embeddings=config_field(scaling, "original_max_position_embeddings", int,
                                                          name=where),
        )
    return theta, RopeScaling(**kwargs)


def _config_from_hf(hf: dict[str, Any], **overrides: Any) -> LlamaConfig:
    """LlamaConfig from a HF ``config.json`` dict whose ``architectures[0]`` is one of ARCHITECTURES."""
    is_qwen = hf["architectures"][0] == "Qwen2ForCausalLM"
    if config_field(hf, "hidden_act", str, "silu") != "silu":
        raise CheckpointError(f"{CONFIG_FILE}: hidden_act={hf['hidden_act']!r} is not supported (expected 'silu')")
    if config_field(hf, "mlp_bias", bool, False):
        raise CheckpointError(f"{CONFIG_FILE}: mlp_bias=true is not supported")
    if not is_qwen and config_field(hf, "attention_bias", bool, False):
        raise CheckpointError(f"{CONFIG_FILE}: attention_bias=true (bias on q/k/v/o) is not supported for Llama")
    layers = config_field(hf, "num_hidden_layers", int)
    heads = config_field(hf, "num_attention_heads", int)
    sliding_window = None
    if is_qwen and config_field(hf, "use_sliding_window", bool, False):
        if config_field(hf, "max_window_layers", int, 0) < layers:
            raise CheckpointError(
                f"{CONFIG_FILE}: use_sliding_window with max_window_layers < num_hidden_layers (per-layer windows) "
                "is not supported"
            )
        sliding_window = config_field(hf, "sliding_window", int, None)
    theta, rope_scaling = _rope_scaling(hf)
    values = dict(
        vocab_size=config_field(hf, "vocab_size", int),
        hidden_size=config_field(hf, "hidden_size", int),
        intermediate_size=config_field(hf, "intermediate_size", int),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=config_field(hf, "num_key_value_heads", int, heads),
        head_dim=config_field(hf, "head_dim", int, None),
        rms_norm_eps=config_field(hf, "rms_norm_eps", float, 1e-6),
        rope_theta=theta,
        rope_scaling=rope_scaling,
        max_position_embeddings=config_field(hf, "max_position_embeddings", int, 2048),
        tie_word_embeddings=config_field(hf, "tie_word_embeddings", bool, not is_qwen),
        qkv_bias=is_qwen,
        sliding_window=sliding_window,
        initializer_range=config_field(hf, "initializer_range", float, 0.02),
        bos_token_id=config_token_ids(hf, "bos_token_id"),
        eos_token_id=config_token_ids(hf, "eos_token_id"),
    )
    values.update(overrides)
    try:
        return LlamaConfig(**values)
    except ValueError as error:
        raise CheckpointError(f"{CONFIG_FILE}: {error}") from error


def _config_to_hf(config: LlamaConfig, dtype: str = "float32") -> dict[str, Any]:
    """The HF ``config.json`` dict for a LlamaConfig (Qwen2 when it has q/k/v bias)."""
    architecture = "Qwen2ForCausalLM" if config.qkv_bias else "LlamaForCausalLM"
    rope_parameters: dict[str, Any] = {"rope_theta": config.rope_theta, "rope_type": "default"}
    rope_scaling = None
    if config.rope_scaling is not None and config.rope_scaling.kind != "default":
        s = config.rope_scaling
        rope_scaling = {"rope_type": s.kind, "factor": s.factor}
        if s.kind == "llama3":
            rope_scaling.update(
                low_freq_factor=s.low_freq_factor,
                high_freq_factor=s.high_freq_factor,
                original_max_position_embeddings=s.original_max_position_embeddings,
            )
        rope_parameters.update(rope_scaling)
    hf = {
        "architectures": [architecture],
        "model_type": "qwen2" if config.qkv_bias else "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": rope_scaling,
        "rope_parameters": rope_parameters,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        "initializer_range": config.initializer_range,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": list(config.eos_token_id) if isinstance(config.eos_token_id, tuple) else config.eos_token_id,
        "torch_dtype": dtype,
        "dtype": dtype,
    }
    if config.qkv_bias:
        hf.update(use_sliding_window=config.sliding_window is not None,
                  sliding_window=config.sliding_window, max_window_layers=config.num_layers)
    else:
        hf.update(attention_bias=False, mlp_bias=False)
    return hf


# ----------------------------------------------------------------------------------------------------
# Tensor table


def _tensor_table(config: LlamaConfig) -> TensorTable:
    h, kv, hd = config.num_heads, config.num_kv_heads, config.head_dim
    specs = [TensorSpec("model.embed_tokens.weight", ("embed", "embedding")),
             TensorSpec("model.norm.weight", ("norm", "scale"))]
    if not config.tie_word_embeddings:
        specs.append(TensorSpec("lm_head.weight", ("lm_head",), linear()))
    layer_tensors = [
        ("self_attn.q_proj.weight", ("attention", "q_proj"), linear(h, hd)),
        ("self_attn.k_proj.weight", ("attention", "k_proj"), linear(kv, hd)),
        ("self_attn.v_proj.weight", ("attention", "v_proj"), linear(kv, hd)),
        ("self_attn.o_proj.weight", ("attention", "o_proj"), linear_in(h, hd)),
        ("mlp.gate_proj.weight", ("mlp", "gate_proj"), linear()),
        ("mlp.up_proj.weight", ("mlp", "up_proj"), linear()),
        ("mlp.down_proj.weight", ("mlp", "down_proj"), linear()),
        ("input_layernorm.weight", ("input_norm", "scale"), IDENTITY),
        ("post_attention_layernorm.weight", ("post_attention_norm", "scale"), IDENTITY),
    ]
    if config.qkv_bias:
        layer_tensors += [
            ("self_attn.q_proj.bias", ("attention", "q_bias"), reshape((h, hd), (h * hd,))),
            ("self_attn.k_proj.bias", ("attention", "k_bias"), reshape((kv, hd), (kv * hd,))),
            ("self_attn.v_proj.bias", ("attention", "v_bias"), reshape((kv, hd), (kv * hd,))),
        ]
    for i in range(config.num_layers):
        for name, path, transform in layer_tensors:
            # scan_layers: one [L, ...] parameter per name, this layer's tensor is its slice i.
            spec = (TensorSpec(f"model.layers.{i}.{name}", ("layers",) + path, transform, index=(i,))
                    if config.scan_layers else TensorSpec(f"model.layers.{i}.{name}", ("layers", i) + path, transform))
            specs.append(spec)
    ignored = ("lm_head.weight",) if config.tie_word_embeddings else ()
    return TensorTable(tuple(specs), ignored)


LLAMA = register(Family(
    name="llama",
    architectures=ARCHITECTURES,
    model_types=(),  # is_qwen is read from architectures[0], so a config must name one
    config_class=LlamaConfig,
    model_class=LlamaForCausalLM,
    config_from_hf=_config_from_hf,
    config_to_hf=_config_to_hf,
    tensor_table=_tensor_table,
))

__all__ = ["ARCHITECTURES", "LLAMA"]

"""Hugging Face checkpoints of ``KimiLinearForCausalLM``: ``config.json`` mapping and tensor table.

Registered with :mod:`jaxstack.models.checkpoint`, whose ``load_pretrained`` / ``save_pretrained`` /
``config_from_hf`` read and write these checkpoints. No downloads.

On-disk format: the released checkpoint's names (``moonshotai/Kimi-Linear-48B-A3B``; transformers >= 5.24
writes the same names, converting to its fused in-memory layout at load time):

* KDA: ``self_attn.{q,k,v}_proj``, ``self_attn.{q,k,v}_conv1d.weight [H*K, 1, W]``, ``self_attn.f_a_proj``,
  ``f_b_proj``, ``A_log [1, 1, H, 1]``, ``dt_bias [H*K]``, ``b_proj``, ``g_a_proj``, ``g_b_proj``,
  ``o_norm.weight [K]``, ``o_proj``;
* MLA: ``self_attn.q_proj`` (or ``q_a_proj`` / ``q_a_layernorm`` / ``q_b_proj``), ``kv_a_proj_with_mqa``,
  ``kv_a_layernorm``, ``kv_b_proj``, ``o_proj``;
* MoE: ``block_sparse_moe.gate.weight``, ``block_sparse_moe.gate.e_score_correction_bias``,
  ``block_sparse_moe.experts.{e}.w1`` (gate) / ``w2`` (down) / ``w3`` (up),
  ``block_sparse_moe.shared_experts.{gate,up,down}_proj``;
* dense FFN layers: ``mlp.{gate,up,down}_proj`` (the released files); transformers' ``save_pretrained``
  writes them as ``block_sparse_moe.{gate,up,down}_proj`` -- both are read (table aliases), ``mlp.`` is
  written. Each expert's tensor is one slice of the stacked ``[E, ...]`` parameter.

``config.json``: both the released form (``linear_attn_config`` with 1-based ``kda_layers`` /
``full_attn_layers``, ``first_k_dense_replace``, ``moe_layer_freq``) and transformers' saved form
(``layer_types``, ``mlp_layer_types``, ``linear_num_heads``, ...) are read; both are written.
"""

from __future__ import annotations

from typing import Any

from jaxstack.models.checkpoint import (
    CONFIG_FILE,
    CheckpointError,
    Family,
    TensorSpec,
    TensorTable,
    Transform,
    config_field,
    config_token_ids,
    linear,
    linear_in,
    register,
    reshape,
)
from jaxstack.models.configs import KimiLinearConfig
from jaxstack.models.kimi_linear import KimiLinearForCausalLM

ARCHITECTURE = "KimiLinearForCausalLM"


# ----------------------------------------------------------------------------------------------------
# config.json <-> KimiLinearConfig


def _config_from_hf(hf: dict[str, Any], **overrides: Any) -> KimiLinearConfig:
    """KimiLinearConfig from a HF ``config.json`` dict (released or transformers form).

    Raises CheckpointError naming the unsupported, missing or malformed field.
    """
    if config_field(hf, "hidden_act", str, "silu") != "silu":
        raise CheckpointError(f"{CONFIG_FILE}: hidden_act={hf['hidden_act']!r} is not supported (expected 'silu')")
    if config_field(hf, "attention_bias", bool, False):
        raise CheckpointError(f"{CONFIG_FILE}: attention_bias=true is not supported")
    if config_field(hf, "moe_router_activation_func", str, "sigmoid") != "sigmoid":
        raise CheckpointError(f"{CONFIG_FILE}: moe_router_activation_func={hf['moe_router_activation_func']!r} "
                              "is not supported (expected 'sigmoid')")
    if config_field(hf, "num_nextn_predict_layers", int, 0):
        raise CheckpointError(f"{CONFIG_FILE}: num_nextn_predict_layers > 0 (MTP heads) is not supported")
    heads = config_field(hf, "num_attention_heads", int)
    kv_heads = config_field(hf, "num_key_value_heads", int, heads)
    if kv_heads != heads:
        raise CheckpointError(f"{CONFIG_FILE}: num_key_value_heads={kv_heads} != num_attention_heads={heads} "
                              "is not supported for MLA")
    linear_config = config_field(hf, "linear_attn_config", dict, {})
    unsupported = sorted(set(linear_config) & {"gate_lower_bound", "use_full_rank_gate"})
    if unsupported:
        raise CheckpointError(f"{CONFIG_FILE}: linear_attn_config.{unsupported[0]} is not supported "
                              "(the released Kimi Linear uses the softplus low-rank gate)")
    layers = config_field(hf, "num_hidden_layers", int)
    layer_types = config_field(hf, "layer_types", list, None)
    if layer_types is not None:
        if len(layer_types) != layers:
            raise CheckpointError(f"{CONFIG_FILE}: layer_types has {len(layer_types)} entries, "
                                  f"num_hidden_layers={layers}")
        full = tuple(i + 1 for i, t in enumerate(layer_types) if t == "full_attention")
        kda = tuple(i + 1 for i, t in enumerate(layer_types) if t == "linear_attention")
        if len(full) + len(kda) != layers:
            raise CheckpointError(f"{CONFIG_FILE}: layer_types entries must be 'linear_attention' or "
                                  f"'full_attention', got {sorted(set(map(str, layer_types)))}")
    elif "full_attn_layers" in linear_config and "kda_layers" in linear_config:
        full = tuple(config_field(linear_config, "full_attn_layers", list, name="linear_attn_config"))
        kda = tuple(config_field(linear_config, "kda_layers", list, name="linear_attn_config"))
        for field, numbers in (("full_attn_layers", full), ("kda_layers", kda)):
            if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
                raise CheckpointError(f"{CONFIG_FILE}: linear_attn_config.{field}: expected a list of integers "
                                      f"(1-based layer numbers), got {list(numbers)!r}")
    else:
        raise CheckpointError(f"{CONFIG_FILE}: no layer schedule (need linear_attn_config.kda_layers / "
                              "full_attn_layers or layer_types)")
    first_dense = config_field(hf, "first_k_dense_replace", int, 1)
    freq = config_field(hf, "moe_layer_freq", int, 1)
    mlp_types = config_field(hf, "mlp_layer_types", list, None)
    if mlp_types is not None:
        first_dense = next((i for i, t in enumerate(mlp_types) if t == "sparse"), layers)
        expected = ["sparse" if i >= first_dense and i % freq == 0 else "dense" for i in range(layers)]
        if mlp_types != expected:
            raise CheckpointError(f"{CONFIG_FILE}: mlp_layer_types={mlp_types} is not a first_k_dense_replace / "
                                  "moe_layer_freq pattern")

    def linear_or_top(nested: str, top: str, default: int) -> int:
        """linear_attn_config.<nested> (released form), else the top-level <top> (transformers' form)."""
        value = config_field(linear_config, nested, int, None, name="linear_attn_config")
        return config_field(hf, top, int, default) if value is None else value

    # Top-level rope_theta wins over transformers >= 5's nested rope_parameters.rope_theta.
    rope_theta = config_field(config_field(hf, "rope_parameters", dict, {}), "rope_theta", float, 10000.0,
                              name="rope_parameters")
    values = {
        "vocab_size": config_field(hf, "vocab_size", int),
        "hidden_size": config_field(hf, "hidden_size", int),
        "intermediate_size": config_field(hf, "intermediate_size", int, 9216),
        "num_layers": layers,
        "rms_norm_eps": config_field(hf, "rms_norm_eps", float, 1e-5),
        "tie_word_embeddings": config_field(hf, "tie_word_embeddings", bool, False),
        "initializer_range": config_field(hf, "initializer_range", float, 0.02),
        "full_attn_layers": full,
        "kda_layers": kda,
        "num_heads": heads,
        "kv_lora_rank": config_field(hf, "kv_lora_rank", int),
        "q_lora_rank": config_field(hf, "q_lora_rank", int, None),
        "qk_nope_head_dim": config_field(hf, "qk_nope_head_dim", int, 128),
        "qk_rope_head_dim": config_field(hf, "qk_rope_head_dim", int, 64),
        "v_head_dim": config_field(hf, "v_head_dim", int, 128),
        # transformers' native model never rotates (NoPE); the released config says so explicitly.
        "mla_use_nope": config_field(hf, "mla_use_nope", bool, True),
        "rope_theta": config_field(hf, "rope_theta", float, rope_theta),
        "kda_num_heads": linear_or_top("num_heads", "linear_num_heads", 32),
        "kda_head_dim": linear_or_top("head_dim", "linear_head_dim", 128),
        "short_conv_kernel_size": linear_or_top("short_conv_kernel_size", "linear_conv_kernel_dim", 4),
        "num_experts": config_field(hf, ("num_experts", "num_local_experts", "n_routed_experts"), int, 256),
        "num_experts_per_token": config_field(hf, ("num_experts_per_token", "num_experts_per_tok"), int, 8),
        "num_shared_experts": config_field(hf, ("num_shared_experts", "n_shared_experts"), int, 0),
        "moe_intermediate_size": config_field(hf, "moe_intermediate_size", int, 1024),
        "routed_scaling_factor": config_field(hf, "routed_scaling_factor", float, 1.0),
        "moe_renormalize": config_field(hf, ("moe_renormalize", "norm_topk_prob"), bool, True),
        "num_expert_group": config_field(hf, ("num_expert_group", "n_group"), int, 1),
        "topk_group": config_field(hf, "topk_group", int, 1),
        "first_k_dense_replace": first_dense,
        "moe_layer_freq": freq,
        "max_position_embeddings": config_field(hf, ("model_max_length", "max_position_embeddings"), int, 1048576),
        "bos_token_id": config_token_ids(hf, "bos_token_id"),
        "eos_token_id": config_token_ids(hf, "eos_token_id"),
        "pad_token_id": config_field(hf, "pad_token_id", int, None),
    }
    values.update(overrides)
    try:
        return KimiLinearConfig(**values)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{CONFIG_FILE}: {error}") from error


def _config_to_hf(config: KimiLinearConfig, dtype: str = "float32") -> dict[str, Any]:
    """The ``config.json`` dict: the released fields plus transformers' explicit layer / MLP types."""
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "kimi_linear",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "initializer_range": config.initializer_range,
        "hidden_act": "silu",
        "attention_bias": False,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_heads,
        "kv_lora_rank": config.kv_lora_rank,
        "q_lora_rank": config.q_lora_rank,
        "qk_nope_head_dim": config.qk_nope_head_dim,
        "qk_rope_head_dim": config.qk_rope_head_dim,
        "v_head_dim": config.v_head_dim,
        "mla_use_nope": config.mla_use_nope,
        "rope_theta": config.rope_theta,
        "linear_attn_config": {
            "kda_layers": list(config.kda_layers),
            "full_attn_layers": list(config.full_attn_layers),
            "num_heads": config.kda_num_heads,
            "head_dim": config.kda_head_dim,
            "short_conv_kernel_size": config.short_conv_kernel_size,
        },
        "layer_types": list(config.layer_types),
        "mlp_layer_types": list(config.mlp_layer_types),
        "linear_num_heads": config.kda_num_heads,
        "linear_head_dim": config.kda_head_dim,
        "linear_conv_kernel_dim": config.short_conv_kernel_size,
        "num_experts": config.num_experts,
        "num_experts_per_token": config.num_experts_per_token,
        "num_shared_experts": config.num_shared_experts,
        "moe_intermediate_size": config.moe_intermediate_size,
        "moe_router_activation_func": "sigmoid",
        "moe_renormalize": config.moe_renormalize,
        "routed_scaling_factor": config.routed_scaling_factor,
        "num_expert_group": config.num_expert_group,
        "topk_group": config.topk_group,
        "use_grouped_topk": True,
        "first_k_dense_replace": config.first_k_dense_replace,
        "moe_layer_freq": config.moe_layer_freq,
        "num_nextn_predict_layers": 0,
        "model_max_length": config.max_position_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": list(config.eos_token_id) if isinstance(config.eos_token_id, tuple) else config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "torch_dtype": dtype,
        "dtype": dtype,
    }


# ----------------------------------------------------------------------------------------------------
# Tensor table. Torch Linear weights are [out, in].

_CONV = Transform(lambda w: w[:, 0, :].T, lambda w: w.T[:, None, :])  # [C, 1, W] <-> [W, C]
_FLOAT32 = "float32"  # A_log, dt_bias, the router and its bias: float32 on disk, as released


def _tensor_table(config: KimiLinearConfig) -> TensorTable:
    h, k = config.kda_num_heads, config.kda_head_dim
    mh, qk = config.num_heads, config.qk_nope_head_dim + config.qk_rope_head_dim
    specs = [TensorSpec("model.embed_tokens.weight", ("embed", "embedding")),
             TensorSpec("model.norm.weight", ("norm", "scale"))]
    if not config.tie_word_embeddings:
        specs.append(TensorSpec("lm_head.weight", ("lm_head",), linear()))
    for i, (kind, mlp) in enumerate(zip(config.layer_types, config.mlp_layer_types)):
        p, layer = f"model.layers.{i}.", ("layers", i)
        specs += [TensorSpec(p + "input_layernorm.weight", layer + ("input_norm", "scale")),
                  TensorSpec(p + "post_attention_layernorm.weight", layer + ("post_attention_norm", "scale"))]
        a, at = p + "self_attn.", layer + ("self_attn",)
        if kind == "linear_attention":
            specs += [
                TensorSpec(a + "q_proj.weight", at + ("q_proj",), linear(h, k)),
                TensorSpec(a + "k_proj.weight", at + ("k_proj",), linear(h, k)),
                TensorSpec(a + "v_proj.weight", at + ("v_proj",), linear(h, k)),
                TensorSpec(a + "q_conv1d.weight", at + ("q_conv1d", "weight"), _CONV),
                TensorSpec(a + "k_conv1d.weight", at + ("k_conv1d", "weight"), _CONV),
                TensorSpec(a + "v_conv1d.weight", at + ("v_conv1d", "weight"), _CONV),
                TensorSpec(a + "f_a_proj.weight", at + ("f_a_proj",), linear()),
                TensorSpec(a + "f_b_proj.weight", at + ("f_b_proj",), linear(h, k)),
                TensorSpec(a + "A_log", at + ("A_log",), reshape((-1,), (1, 1, -1, 1)), dtype=_FLOAT32),
                TensorSpec(a + "dt_bias", at + ("dt_bias",), reshape((h, k), (-1,)), dtype=_FLOAT32),
                TensorSpec(a + "b_proj.weight", at + ("b_proj",), linear()),
                TensorSpec(a + "g_a_proj.weight", at + ("g_a_proj",), linear()),
                TensorSpec(a + "g_b_proj.weight", at + ("g_b_proj",), linear(h, k)),
                TensorSpec(a + "o_norm.weight", at + ("o_norm",)),
                TensorSpec(a + "o_proj.weight", at + ("o_proj",), linear_in(h, k)),
            ]
        else:
            if config.q_lora_rank is None:
                specs.append(TensorSpec(a + "q_proj.weight", at + ("q_proj",), linear(mh, qk)))
            else:
                specs += [TensorSpec(a + "q_a_proj.weight", at + ("q_a_proj",), linear()),
                          TensorSpec(a + "q_a_layernorm.weight", at + ("q_a_layernorm", "scale")),
                          TensorSpec(a + "q_b_proj.weight", at + ("q_b_proj",), linear(mh, qk))]
            specs += [
                TensorSpec(a + "kv_a_proj_with_mqa.weight", at + ("kv_a_proj_with_mqa",), linear()),
                TensorSpec(a + "kv_a_layernorm.weight", at + ("kv_a_layernorm", "scale")),
                TensorSpec(a + "kv_b_proj.weight", at + ("kv_b_proj",),
                           linear(mh, config.qk_nope_head_dim + config.v_head_dim)),
                TensorSpec(a + "o_proj.weight", at + ("o_proj",), linear_in(mh, config.v_head_dim)),
            ]
        m, mt = p + "block_sparse_moe.", layer + ("mlp",)
        if mlp == "dense":
            # Released files say mlp.*; transformers' save_pretrained says block_sparse_moe.*.
            specs += [TensorSpec(p + f"mlp.{name}.weight", mt + (name,), linear(), aliases=(m + f"{name}.weight",))
                      for name in ("gate_proj", "up_proj", "down_proj")]
        else:
            specs += [TensorSpec(m + "gate.weight", mt + ("router",), linear(), dtype=_FLOAT32),
                      TensorSpec(m + "gate.e_score_correction_bias", mt + ("e_score_correction_bias",),
                                 dtype=_FLOAT32)]
            if config.num_shared_experts:
                specs += [TensorSpec(m + f"shared_experts.{name}.weight", mt + ("shared_experts", name), linear())
                          for name in ("gate_proj", "up_proj", "down_proj")]
            # Each expert's tensor is slice e of the stacked [E, ...] parameter.
            for e in range(config.num_experts):
                specs += [TensorSpec(m + f"experts.{e}.{hf_w}.weight", mt + (name,), linear(), index=(e,))
                          for hf_w, name in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj"))]
    ignored = ("lm_head.weight",) if config.tie_word_embeddings else ()
    return TensorTable(tuple(specs), ignored)


KIMI_LINEAR = register(Family(
    name="kimi_linear",
    architectures=(ARCHITECTURE,),
    model_types=("kimi_linear", "kimi"),
    config_class=KimiLinearConfig,
    model_class=KimiLinearForCausalLM,
    config_from_hf=_config_from_hf,
    config_to_hf=_config_to_hf,
    tensor_table=_tensor_table,
))

__all__ = ["ARCHITECTURE", "KIMI_LINEAR"]

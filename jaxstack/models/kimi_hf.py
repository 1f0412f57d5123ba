"""Hugging Face interop for ``KimiLinearForCausalLM``: local ``config.json`` + safetensors <-> jaxstack.

Reached through :func:`jaxstack.models.hf.load_pretrained` / ``save_pretrained`` (architecture
dispatch) or called directly. No downloads.

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
  writes them as ``block_sparse_moe.{gate,up,down}_proj`` -- both are read, ``mlp.`` is written.

``config.json``: both the released form (``linear_attn_config`` with 1-based ``kda_layers`` /
``full_attn_layers``, ``first_k_dense_replace``, ``moe_layer_freq``) and transformers' saved form
(``layer_types``, ``mlp_layer_types``, ``linear_num_heads``, ...) are read; both are written.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open

from jaxstack.models.hf import CheckpointError, _tensor_files
from jaxstack.models.kimi_linear import KimiLinearConfig, KimiLinearForCausalLM
from jaxstack.precision import DtypePolicy, get_policy

ARCHITECTURE = "KimiLinearForCausalLM"
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# ----------------------------------------------------------------------------------------------------
# config.json <-> KimiLinearConfig


def _first(hf: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if name in hf and hf[name] is not None:
            return hf[name]
    return default


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> KimiLinearConfig:
    """KimiLinearConfig from a HF ``config.json`` dict (released or transformers form).

    Raises CheckpointError naming the unsupported or missing field.
    """
    architectures = hf.get("architectures") or []
    if ARCHITECTURE not in architectures and hf.get("model_type") not in ("kimi_linear", "kimi"):
        raise CheckpointError(f"config.json: architectures={architectures!r}, expected [{ARCHITECTURE!r}]")
    for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "kv_lora_rank"):
        if field not in hf:
            raise CheckpointError(f"config.json: missing required field {field!r}")
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"config.json: hidden_act={hf['hidden_act']!r} is not supported (expected 'silu')")
    if hf.get("attention_bias"):
        raise CheckpointError("config.json: attention_bias=true is not supported")
    if hf.get("moe_router_activation_func", "sigmoid") != "sigmoid":
        raise CheckpointError(f"config.json: moe_router_activation_func={hf['moe_router_activation_func']!r} "
                              "is not supported (expected 'sigmoid')")
    if hf.get("num_nextn_predict_layers", 0):
        raise CheckpointError("config.json: num_nextn_predict_layers > 0 (MTP heads) is not supported")
    heads, kv_heads = hf["num_attention_heads"], hf.get("num_key_value_heads") or hf["num_attention_heads"]
    if kv_heads != heads:
        raise CheckpointError(f"config.json: num_key_value_heads={kv_heads} != num_attention_heads={heads} "
                              "is not supported for MLA")
    linear = hf.get("linear_attn_config") or {}
    unsupported = sorted(set(linear) & {"gate_lower_bound", "use_full_rank_gate"})
    if unsupported:
        raise CheckpointError(f"config.json: linear_attn_config.{unsupported[0]} is not supported "
                              "(the released Kimi Linear uses the softplus low-rank gate)")
    layers = hf["num_hidden_layers"]
    if hf.get("layer_types") is not None:
        layer_types = list(hf["layer_types"])
        if len(layer_types) != layers:
            raise CheckpointError(f"config.json: layer_types has {len(layer_types)} entries, "
                                  f"num_hidden_layers={layers}")
        full = tuple(i + 1 for i, t in enumerate(layer_types) if t == "full_attention")
        kda = tuple(i + 1 for i, t in enumerate(layer_types) if t == "linear_attention")
        if len(full) + len(kda) != layers:
            raise CheckpointError(f"config.json: layer_types entries must be 'linear_attention' or "
                                  f"'full_attention', got {sorted(set(layer_types))}")
    elif "full_attn_layers" in linear and "kda_layers" in linear:
        full, kda = tuple(linear["full_attn_layers"]), tuple(linear["kda_layers"])
    else:
        raise CheckpointError("config.json: no layer schedule (need linear_attn_config.kda_layers / "
                              "full_attn_layers or layer_types)")
    first_dense = hf.get("first_k_dense_replace", 1)
    freq = hf.get("moe_layer_freq", 1)
    if hf.get("mlp_layer_types") is not None:
        mlp_types = list(hf["mlp_layer_types"])
        first_dense = next((i for i, t in enumerate(mlp_types) if t == "sparse"), layers)
        expected = ["sparse" if i >= first_dense and i % freq == 0 else "dense" for i in range(layers)]
        if mlp_types != expected:
            raise CheckpointError(f"config.json: mlp_layer_types={mlp_types} is not a first_k_dense_replace / "
                                  "moe_layer_freq pattern")
    values = {
        "vocab_size": hf["vocab_size"],
        "hidden_size": hf["hidden_size"],
        "intermediate_size": hf.get("intermediate_size", 9216),
        "num_layers": layers,
        "rms_norm_eps": float(hf.get("rms_norm_eps", 1e-5)),
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "initializer_range": float(hf.get("initializer_range", 0.02)),
        "full_attn_layers": full,
        "kda_layers": kda,
        "num_heads": heads,
        "kv_lora_rank": hf["kv_lora_rank"],
        "q_lora_rank": hf.get("q_lora_rank"),
        "qk_nope_head_dim": hf.get("qk_nope_head_dim", 128),
        "qk_rope_head_dim": hf.get("qk_rope_head_dim", 64),
        "v_head_dim": hf.get("v_head_dim", 128),
        # transformers' native model never rotates (NoPE); the released config says so explicitly.
        "mla_use_nope": bool(hf.get("mla_use_nope", True)),
        "rope_theta": float(hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0))),
        "kda_num_heads": _first(linear, "num_heads", default=_first(hf, "linear_num_heads", default=32)),
        "kda_head_dim": _first(linear, "head_dim", default=_first(hf, "linear_head_dim", default=128)),
        "short_conv_kernel_size": _first(linear, "short_conv_kernel_size",
                                      default=_first(hf, "linear_conv_kernel_dim", default=4)),
        "num_experts": _first(hf, "num_experts", "num_local_experts", "n_routed_experts", default=256),
        "num_experts_per_token": _first(hf, "num_experts_per_token", "num_experts_per_tok", default=8),
        "num_shared_experts": _first(hf, "num_shared_experts", "n_shared_experts", default=0),
        "moe_intermediate_size": hf.get("moe_intermediate_size", 1024),
        "routed_scaling_factor": float(hf.get("routed_scaling_factor", 1.0)),
        "moe_renormalize": bool(_first(hf, "moe_renormalize", "norm_topk_prob", default=True)),
        "num_expert_group": _first(hf, "num_expert_group", "n_group", default=1),
        "topk_group": _first(hf, "topk_group", default=1),
        "first_k_dense_replace": first_dense,
        "moe_layer_freq": freq,
        "max_position_embeddings": _first(hf, "model_max_length", "max_position_embeddings", default=1048576),
        "bos_token_id": hf.get("bos_token_id"),
        "eos_token_id": hf.get("eos_token_id"),
        "pad_token_id": hf.get("pad_token_id"),
    }
    values.update(overrides)
    try:
        return KimiLinearConfig(**values)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"config.json: {error}") from error


def config_to_hf(config: KimiLinearConfig, dtype: str = "float32") -> dict[str, Any]:
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
# Tensor table: (HF name, jaxstack path, to_jax, to_hf). Torch Linear weights are [out, in].


def _linear(*out_shape):
    """[out, in] torch Linear <-> jaxstack [in, *out_shape]."""

    def to_jax(w):
        return w.T.reshape(w.shape[1], *out_shape) if out_shape else w.T

    def to_hf(w):
        return w.reshape(w.shape[0], -1).T

    return to_jax, to_hf


def _linear_in(*in_shape):
    """[out, in] torch Linear <-> jaxstack [*in_shape, out] (output projections)."""

    def to_jax(w):
        return w.T.reshape(*in_shape, w.shape[0])

    def to_hf(w):
        return w.reshape(-1, w.shape[-1]).T

    return to_jax, to_hf


_IDENTITY = (lambda w: w, lambda w: w)


def _tensor_table(config: KimiLinearConfig, dense_prefix: str = "mlp.") -> list[tuple[str, tuple, Any, Any]]:
    h, k = config.kda_num_heads, config.kda_head_dim
    mh, qk = config.num_heads, config.qk_nope_head_dim + config.qk_rope_head_dim
    table = [("model.embed_tokens.weight", ("embed", "embedding"), *_IDENTITY),
             ("model.norm.weight", ("norm", "scale"), *_IDENTITY)]
    if not config.tie_word_embeddings:
        table.append(("lm_head.weight", ("lm_head",), *_linear()))
    conv = (lambda w: w[:, 0, :].T, lambda w: w.T[:, None, :])  # [C, 1, W] <-> [W, C]
    for i, (kind, mlp) in enumerate(zip(config.layer_types, config.mlp_layer_types)):
        p, layer = f"model.layers.{i}.", ("layers", i)
        table += [(p + "input_layernorm.weight", layer + ("input_norm", "scale"), *_IDENTITY),
                  (p + "post_attention_layernorm.weight", layer + ("post_attention_norm", "scale"), *_IDENTITY)]
        a, at = p + "self_attn.", layer + ("self_attn",)
        if kind == "linear_attention":
            table += [
                (a + "q_proj.weight", at + ("q_proj",), *_linear(h, k)),
                (a + "k_proj.weight", at + ("k_proj",), *_linear(h, k)),
                (a + "v_proj.weight", at + ("v_proj",), *_linear(h, k)),
                (a + "q_conv1d.weight", at + ("q_conv1d", "weight"), *conv),
                (a + "k_conv1d.weight", at + ("k_conv1d", "weight"), *conv),
                (a + "v_conv1d.weight", at + ("v_conv1d", "weight"), *conv),
                (a + "f_a_proj.weight", at + ("f_a_proj",), *_linear()),
                (a + "f_b_proj.weight", at + ("f_b_proj",), *_linear(h, k)),
                (a + "A_log", at + ("A_log",), lambda w: w.reshape(-1), lambda w: w.reshape(1, 1, -1, 1)),
                (a + "dt_bias", at + ("dt_bias",), lambda w: w.reshape(h, k), lambda w: w.reshape(-1)),
                (a + "b_proj.weight", at + ("b_proj",), *_linear()),
                (a + "g_a_proj.weight", at + ("g_a_proj",), *_linear()),
                (a + "g_b_proj.weight", at + ("g_b_proj",), *_linear(h, k)),
                (a + "o_norm.weight", at + ("o_norm",), *_IDENTITY),
                (a + "o_proj.weight", at + ("o_proj",), *_linear_in(h, k)),
            ]
        else:
            if config.q_lora_rank is None:
                table.append((a + "q_proj.weight", at + ("q_proj",), *_linear(mh, qk)))
            else:
                table += [(a + "q_a_proj.weight", at + ("q_a_proj",), *_linear()),
                          (a + "q_a_layernorm.weight", at + ("q_a_layernorm", "scale"), *_IDENTITY),
                          (a + "q_b_proj.weight", at + ("q_b_proj",), *_linear(mh, qk))]
            table += [
                (a + "kv_a_proj_with_mqa.weight", at + ("kv_a_proj_with_mqa",), *_linear()),
                (a + "kv_a_layernorm.weight", at + ("kv_a_layernorm", "scale"), *_IDENTITY),
                (a + "kv_b_proj.weight", at + ("kv_b_proj",),
                 *_linear(mh, config.qk_nope_head_dim + config.v_head_dim)),
                (a + "o_proj.weight", at + ("o_proj",), *_linear_in(mh, config.v_head_dim)),
            ]
        m, mt = p + "block_sparse_moe.", layer + ("mlp",)
        if mlp == "dense":
            d = p + dense_prefix
            table += [(d + "gate_proj.weight", mt + ("gate_proj",), *_linear()),
                      (d + "up_proj.weight", mt + ("up_proj",), *_linear()),
                      (d + "down_proj.weight", mt + ("down_proj",), *_linear())]
        else:
            table += [(m + "gate.weight", mt + ("router",), *_linear()),
                      (m + "gate.e_score_correction_bias", mt + ("e_score_correction_bias",), *_IDENTITY)]
            if config.num_shared_experts:
                s = m + "shared_experts."
                table += [(s + "gate_proj.weight", mt + ("shared_experts", "gate_proj"), *_linear()),
                          (s + "up_proj.weight", mt + ("shared_experts", "up_proj"), *_linear()),
                          (s + "down_proj.weight", mt + ("shared_experts", "down_proj"), *_linear())]
            # Per-expert tensors map onto slices of the stacked [E, ...] parameters (see _EXPERT).
            for e in range(config.num_experts):
                for hf_w, name in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
                    table.append((m + f"experts.{e}.{hf_w}.weight", mt + (name,), _EXPERT, e))
    return table


_EXPERT = "expert"  # marker: entry's 4th field is the expert index; the tensor is one slice, transposed


def _expected_shape(entry, target_shape) -> tuple[int, ...]:
    _, _, to_jax, to_hf = entry
    if to_jax is _EXPERT:
        return tuple(target_shape[1:][::-1])
    return tuple(jax.eval_shape(to_hf, jax.ShapeDtypeStruct(target_shape, jnp.float32)).shape)


# ----------------------------------------------------------------------------------------------------
# Loading / saving


def load_pretrained(
    path: str | pathlib.Path, *, policy: DtypePolicy | str | None = None, **config_overrides: Any
) -> KimiLinearForCausalLM:
    """Loads a local ``KimiLinearForCausalLM`` checkpoint directory (config.json + safetensors).

    Parameters are cast to ``policy.param_dtype`` except the ones Kimi keeps in float32 (A_log,
    dt_bias, the router weight and e_score_correction_bias). Raises CheckpointError naming the missing /
    unexpected tensor, a wrong shape or a bad config field.
    """
    path = pathlib.Path(path)
    config_path = path / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{path}: no config.json (expected a local Hugging Face model directory)")
    config = config_from_hf(json.loads(config_path.read_text()), **config_overrides)
    policy = get_policy(policy)
    files = _tensor_files(path)
    dense_prefix = "mlp."
    if any(".block_sparse_moe.gate_proj.weight" in name for name in files):
        dense_prefix = "block_sparse_moe."  # transformers' save_pretrained spelling of dense layers
    table = _tensor_table(config, dense_prefix)

    abstract = nnx.eval_shape(lambda: KimiLinearForCausalLM(config, policy=policy, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    flat_abstract = dict(nnx.to_flat_state(abstract_state))

    for entry in table:
        if entry[0] not in files:
            raise CheckpointError(f"{path}: missing tensor {entry[0]!r}")
        if entry[1] not in flat_abstract:
            raise CheckpointError(f"internal: no parameter {entry[1]} for tensor {entry[0]!r}")
    by_file: dict[pathlib.Path, list] = {}
    for entry in table:
        by_file.setdefault(files[entry[0]], []).append(entry)
    used, values, experts = set(), {}, {}
    for file, entries in by_file.items():
        with safe_open(file, framework="flax") as handle:  # flax: bf16 tensors load too
            for entry in entries:
                hf_name, jax_path, to_jax, extra = entry
                target = flat_abstract[jax_path]
                tensor = handle.get_tensor(hf_name)
                expected = _expected_shape(entry, target.shape)
                if tuple(tensor.shape) != expected:
                    raise CheckpointError(f"{path}: tensor {hf_name!r} has shape {list(tensor.shape)}, expected "
                                          f"{list(expected)} from config.json")
                if to_jax is _EXPERT:
                    experts.setdefault(jax_path, {})[extra] = tensor.T
                else:
                    values[jax_path] = to_jax(tensor)
                used.add(hf_name)
    for jax_path, slices in experts.items():
        values[jax_path] = jnp.stack([slices[e] for e in range(config.num_experts)])
    unexpected = [name for name in files if name not in used and not name.endswith(_IGNORED_SUFFIXES)
                  and not (config.tie_word_embeddings and name == "lm_head.weight")]
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensors not used by KimiLinearForCausalLM: {sorted(unexpected)[:10]}")
    missing = [p for p in flat_abstract if p not in values]
    if missing:
        raise CheckpointError(f"internal: parameters with no HF tensor: {missing[:5]}")
    # Keep each variable's own dtype (float32 for A_log, dt_bias, router, bias; param dtype elsewhere).
    state = nnx.from_flat_state(
        {p: v.replace(jnp.asarray(values[p]).astype(v.dtype)) for p, v in flat_abstract.items()}
    )
    return nnx.merge(graphdef, state)


def save_pretrained(model: KimiLinearForCausalLM, path: str | pathlib.Path, *, dtype: Any = None) -> pathlib.Path:
    """Writes ``config.json`` + ``model.safetensors`` (released names) that transformers loads.

    dtype: dtype of the written tensors (default: the model's param dtype); A_log, dt_bias, the router
    and its bias stay float32, as in the released checkpoint.
    """
    from safetensors.numpy import save_file

    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.config
    dtype = jnp.dtype(dtype or model.policy.param_dtype)
    flat = {p: v[...] for p, v in nnx.to_flat_state(nnx.state(model))}
    keep_f32 = ("A_log", "dt_bias", "router", "e_score_correction_bias")
    tensors = {}
    for hf_name, jax_path, to_jax, extra in _tensor_table(config):
        value = flat[jax_path]
        array = value[extra].T if to_jax is _EXPERT else extra(value)
        out_dtype = jnp.float32 if jax_path[-1] in keep_f32 else dtype
        tensors[hf_name] = np.ascontiguousarray(np.asarray(jax.device_get(array.astype(out_dtype))))
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config_to_hf(config, dtype.name), indent=2) + "\n")
    return path


__all__ = ["ARCHITECTURE", "config_from_hf", "config_to_hf", "load_pretrained", "save_pretrained"]

"""Hugging Face interop: local ``config.json`` + safetensors <-> jaxstack models. No downloads.

Supported architectures: ``LlamaForCausalLM`` (SmolLM2, Llama) and ``Qwen2ForCausalLM`` (Qwen2 /
Qwen2.5). Tensors map one to one (``.weight`` transposed from torch's ``[out, in]``); RoPE uses HF's
rotate-half convention on both sides, so no q/k permutation is needed. Tied models carry no
``lm_head.weight``.

``KimiLinearForCausalLM`` checkpoints are dispatched to :mod:`jaxstack.models.kimi_hf` by
``load_pretrained`` (from config.json's ``architectures``) and ``save_pretrained`` (by model class).
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

from jaxstack.layers.rotary import RopeScaling
from jaxstack.models.configs import LlamaConfig
from jaxstack.models.llama import LlamaForCausalLM
from jaxstack.precision import DtypePolicy, get_policy

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
_KIMI_ARCHITECTURE = "KimiLinearForCausalLM"  # handled by jaxstack.models.kimi_hf
# Tensors some checkpoints carry that hold no parameters.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
    """A local HF checkpoint does not match what the architecture needs (names the tensor / field)."""


# ----------------------------------------------------------------------------------------------------
# config.json <-> LlamaConfig


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> LlamaConfig:
    """Builds a LlamaConfig from a HF ``config.json`` dict. Raises CheckpointError naming bad fields."""
    architectures = hf.get("architectures") or []
    architecture = architectures[0] if architectures else None
    if architecture not in ARCHITECTURES:
        raise CheckpointError(
            f"config.json: architectures={architectures!r} is not supported; expected one of {list(ARCHITECTURES)}"
        )
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if field not in hf:
            raise CheckpointError(f"config.json: missing required field {field!r}")
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"config.json: hidden_act={hf['hidden_act']!r} is not supported (expected 'silu')")
    if hf.get("mlp_bias"):
        raise CheckpointError("config.json: mlp_bias=true is not supported")
    is_qwen = architecture == "Qwen2ForCausalLM"
    if not is_qwen and hf.get("attention_bias"):
        raise CheckpointError("config.json: attention_bias=true (bias on q/k/v/o) is not supported for Llama")
    sliding_window = None
    if is_qwen and hf.get("use_sliding_window"):
        if hf.get("max_window_layers", 0) < hf["num_hidden_layers"]:
            raise CheckpointError(
                "config.json: use_sliding_window with max_window_layers < num_hidden_layers (per-layer windows) "
                "is not supported"
            )
        sliding_window = hf.get("sliding_window")

    # transformers >= 5 nests theta and scaling under rope_parameters; older configs use top-level keys.
    rope = dict(hf.get("rope_parameters") or {})
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling_dict = hf.get("rope_scaling") or rope
    rope_type = scaling_dict.get("rope_type", scaling_dict.get("type", "default")) if scaling_dict else "default"
    if rope_type not in ("default", "linear", "llama3"):
        raise CheckpointError(f"config.json: rope type {rope_type!r} is not supported (default, linear, llama3)")
    rope_scaling = None
    if rope_type != "default":
        kwargs = {"kind": rope_type, "factor": float(scaling_dict["factor"])}
        if rope_type == "llama3":
            kwargs.update(
                low_freq_factor=float(scaling_dict["low_freq_factor"]),
                high_freq_factor=float(scaling_dict["high_freq_factor"]),
                original_max_position_embeddings=int(scaling_dict["original_max_position_embeddings"]),
            )
        rope_scaling = RopeScaling(**kwargs)

    values = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim"),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=float(theta),
        rope_scaling=rope_scaling,
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", not is_qwen)),
        qkv_bias=is_qwen,
        sliding_window=sliding_window,
        initializer_range=float(hf.get("initializer_range", 0.02)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
    )
    values.update(overrides)
    try:
        return LlamaConfig(**values)
    except ValueError as error:
        raise CheckpointError(f"config.json: {error}") from error


def config_to_hf(config: LlamaConfig, dtype: str = "float32") -> dict[str, Any]:
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
# Tensor name mapping. Each entry: (HF name, jaxstack path, to_jax(array, config), to_hf(array, config)).


def _tensor_table(config: LlamaConfig) -> list[tuple[str, tuple, Any, Any]]:
    d, h, kv, hd = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    table = [("model.embed_tokens.weight", ("embed", "embedding"), lambda w: w, lambda w: w),
             ("model.norm.weight", ("norm", "scale"), lambda w: w, lambda w: w)]
    if not config.tie_word_embeddings:
        table.append(("lm_head.weight", ("lm_head",), lambda w: w.T, lambda w: w.T))
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        layer = ("layers", i)
        table += [
            (p + "self_attn.q_proj.weight", layer + ("attention", "q_proj"),
             lambda w: w.T.reshape(d, h, hd), lambda w: w.reshape(d, h * hd).T),
            (p + "self_attn.k_proj.weight", layer + ("attention", "k_proj"),
             lambda w: w.T.reshape(d, kv, hd), lambda w: w.reshape(d, kv * hd).T),
            (p + "self_attn.v_proj.weight", layer + ("attention", "v_proj"),
             lambda w: w.T.reshape(d, kv, hd), lambda w: w.reshape(d, kv * hd).T),
            (p + "self_attn.o_proj.weight", layer + ("attention", "o_proj"),
             lambda w: w.T.reshape(h, hd, d), lambda w: w.reshape(h * hd, d).T),
            (p + "mlp.gate_proj.weight", layer + ("mlp", "gate_proj"), lambda w: w.T, lambda w: w.T),
            (p + "mlp.up_proj.weight", layer + ("mlp", "up_proj"), lambda w: w.T, lambda w: w.T),
            (p + "mlp.down_proj.weight", layer + ("mlp", "down_proj"), lambda w: w.T, lambda w: w.T),
            (p + "input_layernorm.weight", layer + ("input_norm", "scale"), lambda w: w, lambda w: w),
            (p + "post_attention_layernorm.weight", layer + ("post_attention_norm", "scale"), lambda w: w, lambda w: w),
        ]
        if config.qkv_bias:
            table += [
                (p + "self_attn.q_proj.bias", layer + ("attention", "q_bias"),
                 lambda b: b.reshape(h, hd), lambda b: b.reshape(h * hd)),
                (p + "self_attn.k_proj.bias", layer + ("attention", "k_bias"),
                 lambda b: b.reshape(kv, hd), lambda b: b.reshape(kv * hd)),
                (p + "self_attn.v_proj.bias", layer + ("attention", "v_bias"),
                 lambda b: b.reshape(kv, hd), lambda b: b.reshape(kv * hd)),
            ]
    return table


def _expected_hf_shape(to_hf, jax_shape) -> tuple[int, ...]:
    return tuple(jax.eval_shape(to_hf, jax.ShapeDtypeStruct(jax_shape, jnp.float32)).shape)


# ----------------------------------------------------------------------------------------------------
# Loading


def _tensor_files(path: pathlib.Path) -> dict[str, pathlib.Path]:
    """Maps each tensor name to the safetensors file that holds it."""
    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index.exists():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: expected a 'weight_map' object")
        files = {name: path / file for name, file in weight_map.items()}
        for file in sorted(set(files.values())):
            if not file.exists():
                raise CheckpointError(f"{index}: names shard {file.name}, which does not exist")
        return files
    if single.exists():
        with safe_open(single, framework="numpy") as handle:
            return {name: single for name in handle.keys()}
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")


def load_pretrained(
    path: str | pathlib.Path, *, policy: DtypePolicy | str | None = None, **config_overrides: Any
) -> LlamaForCausalLM:
    """Loads a local HF checkpoint directory into a ``LlamaForCausalLM``.

    path: a directory with ``config.json`` and ``model.safetensors`` (or a sharded index).
    policy: dtype policy; parameters are cast to ``policy.param_dtype``.
    config_overrides: LlamaConfig fields to change (e.g. ``scan_layers=True``).
    Raises CheckpointError naming the missing / unexpected tensor, wrong shape or bad config field.
    """
    path = pathlib.Path(path)
    config_path = path / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{path}: no config.json (expected a local Hugging Face model directory)")
    raw_config = json.loads(config_path.read_text())
    if _KIMI_ARCHITECTURE in (raw_config.get("architectures") or []):
        from jaxstack.models import kimi_hf

        return kimi_hf.load_pretrained(path, policy=policy, **config_overrides)
    config = config_from_hf(raw_config, **config_overrides)
    policy = get_policy(policy)
    files = _tensor_files(path)
    table = _tensor_table(config)

    loop_config = config.replace(scan_layers=False)
    abstract = nnx.eval_shape(lambda: LlamaForCausalLM(loop_config, policy=policy, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    flat_abstract = dict(nnx.to_flat_state(abstract_state))

    for hf_name, _, _, _ in table:
        if hf_name not in files:
            raise CheckpointError(f"{path}: missing tensor {hf_name!r}")
    by_file: dict[pathlib.Path, list] = {}
    for entry in table:
        by_file.setdefault(files[entry[0]], []).append(entry)
    used = set()
    values = {}
    for file, entries in by_file.items():
        with safe_open(file, framework="flax") as handle:  # each shard opened once
            for hf_name, jax_path, to_jax, to_hf in entries:
                target = flat_abstract[jax_path]
                tensor = handle.get_tensor(hf_name)
                expected = _expected_hf_shape(to_hf, target.shape)
                if tuple(tensor.shape) != expected:
                    raise CheckpointError(
                        f"{path}: tensor {hf_name!r} has shape {list(tensor.shape)}, expected "
                        f"{list(expected)} from config.json"
                    )
                values[jax_path] = jnp.asarray(to_jax(tensor)).astype(policy.param_dtype)
                used.add(hf_name)
    unexpected = [
        name for name in files
        if name not in used and not name.endswith(_IGNORED_SUFFIXES)
        and not (config.tie_word_embeddings and name == "lm_head.weight")
    ]
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensors not used by {config.__class__.__name__}: {sorted(unexpected)[:10]}")

    state = nnx.from_flat_state({p: v.replace(values[p]) if p in values else v for p, v in flat_abstract.items()})
    missing = [p for p in flat_abstract if p not in values]
    if missing:
        raise CheckpointError(f"internal: parameters with no HF tensor: {missing[:5]}")
    model = nnx.merge(graphdef, state)
    if config.scan_layers:
        from jaxstack.models.llama import stack_layer_params

        model = stack_layer_params(model)
    return model


# ----------------------------------------------------------------------------------------------------
# Saving


def _unstack(model: LlamaForCausalLM) -> dict[tuple, jax.Array]:
    """Flat {loop-layout path: array} for a loop- or scan-layers model."""
    flat = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = variable[...]
        if model.config.scan_layers and path[0] == "layers":
            for i in range(model.config.num_layers):
                flat[("layers", i) + path[1:]] = value[i]
        else:
            flat[path] = value
    return flat


def save_pretrained(model: LlamaForCausalLM, path: str | pathlib.Path, *, dtype: Any = None) -> pathlib.Path:
    """Writes ``config.json`` + ``model.safetensors`` that ``transformers`` loads.

    dtype: dtype of the written tensors (default: the model's param dtype).
    """
    from safetensors.numpy import save_file

    if type(model).__name__ == _KIMI_ARCHITECTURE:
        from jaxstack.models import kimi_hf

        return kimi_hf.save_pretrained(model, path, dtype=dtype)
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.config
    dtype = jnp.dtype(dtype or model.policy.param_dtype)
    flat = _unstack(model)
    tensors = {}
    for hf_name, jax_path, _, to_hf in _tensor_table(config):
        array = np.asarray(jax.device_get(to_hf(flat[jax_path]).astype(dtype)))
        tensors[hf_name] = np.ascontiguousarray(array)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config_to_hf(config, dtype.name), indent=2) + "\n")
    return path

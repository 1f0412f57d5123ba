"""HF checkpoint I/O (``jaxstack.models.checkpoint``): save/load round trips for both families through the
one loader, and strict loading -- each malformed checkpoint is a CheckpointError naming the file and the
tensor or config field.

Checkpoints are tiny random models written by our own ``save_pretrained`` into tmp_path and then
corrupted. Round trips are exact (float32 in, float32 out: transposes and reshapes only), so the
comparisons use atol=rtol=0.
"""

import json
import pathlib
import shutil

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from jaxstack.models import build_model, checkpoint
from jaxstack.models.checkpoint import CheckpointError, load_pretrained, save_pretrained
from jaxstack.models.configs import get_config, get_kimi_config
from jaxstack.models.kimi_linear import KimiLinearForCausalLM
from jaxstack.models.llama import LlamaForCausalLM, stack_layer_params


def _params(model) -> dict:
    return nnx.to_pure_dict(nnx.state(model))


def _assert_same(a, b):
    chex.assert_trees_all_close(_params(a), _params(b), atol=0, rtol=0)


@pytest.fixture(scope="module")
def llama():
    return LlamaForCausalLM(get_config("llama-test", initializer_range=0.3), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def qwen():
    return LlamaForCausalLM(get_config("qwen2.5-test", initializer_range=0.3), rngs=nnx.Rngs(1))


@pytest.fixture(scope="module")
def kimi():
    return KimiLinearForCausalLM(get_kimi_config("kimi-linear-tiny", vocab_size=64), rngs=nnx.Rngs(2))


@pytest.fixture(scope="module")
def llama_dir(llama, tmp_path_factory):
    return save_pretrained(llama, tmp_path_factory.mktemp("llama") / "ckpt")


@pytest.fixture
def corrupt(llama_dir, tmp_path):
    """A fresh copy of the saved Llama checkpoint to break."""

    def copy(name: str = "broken") -> pathlib.Path:
        return pathlib.Path(shutil.copytree(llama_dir, tmp_path / name))

    return copy


def _edit_config(path: pathlib.Path, edit) -> None:
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))


def _edit_tensors(path: pathlib.Path, edit) -> None:
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def _shard(path: pathlib.Path, shard_names=("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")):
    """Splits model.safetensors into two shards + an index, as transformers writes them; returns the map."""
    tensors = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    names = sorted(tensors)
    halves = {shard_names[0]: names[: len(names) // 2], shard_names[1]: names[len(names) // 2:]}
    weight_map = {}
    for shard, members in halves.items():
        save_file({n: tensors[n] for n in members}, str(path / shard), metadata={"format": "pt"})
        weight_map.update({n: shard for n in members})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return weight_map


# ----------------------------------------------------------------------------------------------------
# Round trips


def test_llama_round_trip_loop_and_scan(llama, llama_dir, tmp_path):
    loaded = load_pretrained(llama_dir)
    assert isinstance(loaded, LlamaForCausalLM) and loaded.config == llama.config
    _assert_same(loaded, llama)
    scanned = load_pretrained(llama_dir, scan_layers=True)  # per-layer tensors -> slices of [L, ...]
    assert scanned.config.scan_layers
    _assert_same(scanned, stack_layer_params(llama))
    # Saving the scanned model writes the same tensors as the loop model.
    again = save_pretrained(scanned, tmp_path / "from_scan")
    chex.assert_trees_all_close(load_file(again / "model.safetensors"), load_file(llama_dir / "model.safetensors"),
                                atol=0, rtol=0)


def test_qwen_round_trip_tied_with_bias(qwen, tmp_path):
    path = save_pretrained(qwen, tmp_path / "qwen")
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    tensors = load_file(path / "model.safetensors")
    assert "lm_head.weight" not in tensors and tensors["model.layers.1.self_attn.k_proj.bias"].shape == (32,)
    _assert_same(load_pretrained(path), qwen)
    # transformers may write the tied head anyway: tolerated, not loaded.
    _edit_tensors(path, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"]}))
    _assert_same(load_pretrained(path), qwen)


def test_kimi_round_trip_and_sharded(kimi, tmp_path):
    path = save_pretrained(kimi, tmp_path / "kimi")
    loaded = load_pretrained(path)
    assert isinstance(loaded, KimiLinearForCausalLM) and loaded.config == kimi.config
    _assert_same(loaded, kimi)
    _shard(path)
    _assert_same(load_pretrained(path), kimi)


def test_bfloat16_save_keeps_pinned_float32_tensors(kimi, tmp_path):
    path = save_pretrained(kimi, tmp_path / "bf16", dtype="bfloat16")
    tensors = load_file(path / "model.safetensors")
    assert tensors["model.layers.0.self_attn.q_proj.weight"].dtype == jnp.bfloat16
    for name in ("model.layers.0.self_attn.A_log", "model.layers.0.self_attn.dt_bias",
                 "model.layers.1.block_sparse_moe.gate.weight", "model.layers.1.block_sparse_moe.gate.e_score_correction_bias"):
        assert tensors[name].dtype == np.float32, name
    loaded = load_pretrained(path)  # float32 policy: bf16 tensors are widened exactly
    expected = np.asarray(kimi.layers[0].self_attn.q_proj[...]).astype(jnp.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(loaded.layers[0].self_attn.q_proj[...]), expected)
    np.testing.assert_array_equal(np.asarray(loaded.layers[0].self_attn.A_log[...]),
                                  np.asarray(kimi.layers[0].self_attn.A_log[...]))


def test_registry_picks_family_by_architecture_then_model_type():
    assert checkpoint.family_for_hf({"architectures": ["Qwen2ForCausalLM"]}).name == "llama"
    assert checkpoint.family_for_hf({"model_type": "kimi_linear"}).name == "kimi_linear"
    assert checkpoint.family_for_config(get_kimi_config("kimi-linear-tiny")).model_class is KimiLinearForCausalLM
    with pytest.raises(CheckpointError, match=r"architectures=\['MistralForCausalLM'\]"):
        checkpoint.family_for_hf({"architectures": ["MistralForCausalLM"], "model_type": "mistral"})
    llama_family = checkpoint.family_for_hf({"architectures": ["LlamaForCausalLM"]})
    with pytest.raises(ValueError, match="already registered"):
        checkpoint.register(checkpoint.Family(**{**llama_family.__dict__, "name": "copy"}))
    with pytest.raises(TypeError, match="no checkpoint family for Linear"):
        save_pretrained(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), "/nonexistent")
    with pytest.raises(TypeError, match=r"model config: expected one of \['KimiLinearConfig', 'LlamaConfig'\]"):
        build_model({"hidden_size": 8}, rngs=nnx.Rngs(0))


# ----------------------------------------------------------------------------------------------------
# Strict loading: each of these escaped as another exception type (or loaded) before.


def test_truncated_safetensors_names_the_file(corrupt):
    path = corrupt()
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"broken/model\.safetensors: not a readable safetensors file"):
        load_pretrained(path)


def test_truncated_shard_names_the_shard(corrupt):
    path = corrupt()
    _shard(path)
    shard = path / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors: not a readable safetensors"):
        load_pretrained(path)


def test_non_numeric_config_field_is_named(corrupt):
    path = corrupt()
    _edit_config(path, lambda c: c.update(rms_norm_eps="abc"))
    with pytest.raises(CheckpointError, match=r"broken: config\.json: rms_norm_eps: expected a number, got 'abc'"):
        load_pretrained(path)


def test_llama3_rope_without_factor_is_named(corrupt):
    path = corrupt()
    _edit_config(path, lambda c: c.update(rope_scaling={"rope_type": "llama3", "low_freq_factor": 1.0,
                                                        "high_freq_factor": 4.0,
                                                        "original_max_position_embeddings": 16}))
    with pytest.raises(CheckpointError, match=r"config\.json: missing required field 'rope_scaling\.factor'"):
        load_pretrained(path)


def test_invalid_config_json_is_named(corrupt):
    path = corrupt()
    (path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],')
    with pytest.raises(CheckpointError, match=r"broken/config\.json: invalid JSON .* line 1 column"):
        load_pretrained(path)


@pytest.mark.parametrize("escape", ["../outside.safetensors", "ABSOLUTE", "sub/../../outside.safetensors"],
                         ids=["dotdot", "absolute", "nested-dotdot"])
def test_shard_outside_the_model_directory_is_refused(corrupt, escape):
    path = corrupt()
    outside = path.parent / "outside.safetensors"
    shutil.copy(path / "model.safetensors", outside)  # a complete, valid checkpoint outside the directory
    (path / "model.safetensors").unlink()
    shard = str(outside) if escape == "ABSOLUTE" else escape
    names = load_file(outside).keys()
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: shard for n in names}}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json: weight_map\['.+'\] = .* points "
                                              r"outside the model directory"):
        load_pretrained(path)


def test_index_naming_a_tensor_its_shard_lacks(corrupt):
    path = corrupt()
    weight_map = _shard(path)
    name = "model.layers.0.mlp.down_proj.weight"
    weight_map[name] = next(s for s in set(weight_map.values()) if s != weight_map[name])
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=rf"index\.json: maps tensor '{name}' to model-0000\d-of-00002"
                                              r"\.safetensors, which does not hold it"):
        load_pretrained(path)


def test_missing_tensor_names_tensor_and_file(corrupt):
    path = corrupt()
    _edit_tensors(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"broken/model\.safetensors: missing tensor "
                                              r"'model\.layers\.1\.mlp\.up_proj\.weight'"):
        load_pretrained(path)


def test_unexpected_tensor_names_tensor_and_file(corrupt):
    path = corrupt()
    _edit_tensors(path, lambda t: t.update({"model.layers.0.self_attn.q_norm.weight": np.ones(16, np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensors not used by LlamaForCausalLM: "
                                              r"'model\.layers\.0\.self_attn\.q_norm\.weight' \(model\.safetensors\)"):
        load_pretrained(path)


def test_wrong_shape_names_tensor_and_file(corrupt):
    path = corrupt()
    name = "model.layers.0.self_attn.k_proj.weight"
    _edit_tensors(path, lambda t: t.update({name: t[name][:-1]}))
    with pytest.raises(CheckpointError, match=r"broken/model\.safetensors: tensor 'model\.layers\.0\.self_attn\."
                                              r"k_proj\.weight' has shape \[31, 64\], expected \[32, 64\]"):
        load_pretrained(path)


def test_integer_tensor_is_not_cast_silently(corrupt):
    path = corrupt()
    name = "model.norm.weight"
    _edit_tensors(path, lambda t: t.update({name: np.ones(t[name].shape, np.int32)}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'model\.norm\.weight' has dtype I32; "
                                              r"expected a floating dtype"):
        load_pretrained(path)


def test_kimi_config_field_of_wrong_type_is_named(kimi, tmp_path):
    path = save_pretrained(kimi, tmp_path / "kimi")
    _edit_config(path, lambda c: c.update(moe_renormalize="yes"))
    with pytest.raises(CheckpointError, match=r"config\.json: moe_renormalize: expected true or false, got 'yes'"):
        load_pretrained(path)

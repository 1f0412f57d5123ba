"""The same train steps on one device and on 8 simulated CPU devices (tests/conftest.py) agree.

Parity tolerance: 1e-5 absolute on loss, grad norm and every parameter after two AdamW steps at a
constant lr=1e-3 (no warmup, so both steps move the parameters). A different mesh changes only the
order of float32 reductions (gradients agree to ~1e-8); Adam turns that into parameter differences
of at most lr * noise / eps, so the check optimizer uses eps=1e-6 (see multihost_check.CHECK_OPTIMIZER).
Measured (10 mesh x model cases): <= 1.3e-6 on parameters, <= 9.6e-7 on loss / grad norm.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxstack.models.configs import get_config
from jaxstack.models.llama import LlamaForCausalLM
from jaxstack.train import sharding as sharding_lib
from jaxstack.train.multihost_check import CHECK_OPTIMIZER, gather_params, train_on_mesh
from jaxstack.train.optimizers import make_optimizer
from jaxstack.train.sharding import make_mesh, param_shardings, spec_for
from jaxstack.train.step import init_train_state, split_model

ATOL = 1e-5
CONFIGS = {
    "llama": get_config("llama-test"),  # Python-loop layers, GQA 4:2, untied head
    "qwen-scan": get_config("qwen2.5-test", scan_layers=True),  # stacked [L, ...] params, q/k/v bias, tied
    "llama-scan": get_config("llama-test", scan_layers=True),
    "qwen": get_config("qwen2.5-test"),
}


def _abstract_params(config):
    model = nnx.eval_shape(lambda: LlamaForCausalLM(config, rngs=nnx.Rngs(0)))
    return nnx.state(model, nnx.Param)


def _flat(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    return {sharding_lib.path_name(path): leaf for path, leaf in flat}


def test_devices():
    assert jax.device_count() == 8, "tests/conftest.py should give 8 simulated CPU devices"


@pytest.mark.parametrize(
    "name, mesh_shape",
    [
        ("llama", (2, 2, 2)),
        # scan + q/k/v bias + GQA: kv_heads=2 on tensor=4, so k/v projections and biases are replicated
        pytest.param("qwen-scan", (1, 2, 4), marks=pytest.mark.slow),  # ~23 s; llama (above) stays fast
        pytest.param("llama", (1, 2, 4), marks=pytest.mark.slow),
        pytest.param("qwen-scan", (2, 2, 2), marks=pytest.mark.slow),
        pytest.param("llama", (8, 1, 1), marks=pytest.mark.slow),
        pytest.param("llama", (1, 8, 1), marks=pytest.mark.slow),
        pytest.param("llama-scan", (2, 2, 2), marks=pytest.mark.slow),
        pytest.param("llama-scan", (1, 4, 2), marks=pytest.mark.slow),
        pytest.param("qwen", (2, 2, 2), marks=pytest.mark.slow),
        pytest.param("qwen", (1, 2, 4), marks=pytest.mark.slow),
        pytest.param("qwen-scan", (1, 1, 8), marks=pytest.mark.slow),
    ],
)
def test_sharded_steps_match_single_device(name, mesh_shape, single_device_run):
    ref_params, ref_history, init = single_device_run(CONFIGS[name])
    mesh = make_mesh(*mesh_shape)
    state, history = train_on_mesh(CONFIGS[name], mesh, len(ref_history))

    for step, (ref, got) in enumerate(zip(ref_history, history)):
        assert ref["lr"] > 0, "the check must move the parameters"
        for key in ("loss", "grad_norm", "tokens"):
            assert abs(got[key] - ref[key]) <= ATOL, (step, key, got[key], ref[key])
    params = gather_params(state.params, mesh)
    assert params.keys() == ref_params.keys()
    for path, ref in ref_params.items():
        assert not np.allclose(ref, init[path], rtol=0, atol=1e-4), f"{path} did not move"
        np.testing.assert_allclose(params[path], ref, rtol=0, atol=ATOL, err_msg=path)

    # The updated state stays sharded by the rules (out_shardings), not gathered.
    for path, variable in _flat(state.params).items():
        expected = spec_for(variable.shape, variable.get_metadata()["out_sharding"], mesh)
        assert variable[...].sharding.spec == expected, path


def _spec_and_shard_shape(variable):
    array = variable[...]
    return array.sharding.spec, array.addressable_shards[0].data.shape


def test_params_and_optimizer_state_are_sharded_by_the_rules():
    mesh = make_mesh(2, 2, 2)
    _, params = split_model(LlamaForCausalLM(CONFIGS["llama"], rngs=nnx.Rngs(0)))
    state = init_train_state(params, make_optimizer(CHECK_OPTIMIZER, 10, params), 0)
    state = sharding_lib.shard(state, sharding_lib.state_shardings(state, mesh))
    flat = _flat(state.params)
    # q_proj [embed=64, heads=4, head_dim=16]: embed over fsdp (2), heads over tensor (2)
    assert _spec_and_shard_shape(flat["layers/0/attention/q_proj"]) == (P("fsdp", "tensor", None), (32, 2, 16))
    assert _spec_and_shard_shape(flat["layers/0/attention/k_proj"]) == (P("fsdp", "tensor", None), (32, 1, 16))
    assert _spec_and_shard_shape(flat["layers/1/attention/o_proj"]) == (P("tensor", None, "fsdp"), (2, 16, 32))
    assert _spec_and_shard_shape(flat["layers/0/mlp/gate_proj"]) == (P("fsdp", "tensor"), (32, 80))
    assert _spec_and_shard_shape(flat["layers/0/mlp/down_proj"]) == (P("tensor", "fsdp"), (80, 32))
    assert _spec_and_shard_shape(flat["embed/embedding"]) == (P("tensor", "fsdp"), (128, 32))
    assert _spec_and_shard_shape(flat["lm_head"]) == (P("fsdp", "tensor"), (32, 128))
    assert flat["norm/scale"][...].sharding.is_fully_replicated
    # Adam moments are sharded like their parameters; step counters replicated.
    adam = state.opt_state[1][0]
    assert _flat(adam.mu)["layers/0/attention/q_proj"][...].sharding.spec == P("fsdp", "tensor", None)
    assert _flat(adam.nu)["layers/0/mlp/down_proj"][...].sharding.spec == P("tensor", "fsdp")
    assert adam.count.sharding.is_fully_replicated
    assert state.step.sharding.is_fully_replicated


def test_scanned_params_keep_the_layer_axis_unsharded():
    mesh = make_mesh(2, 2, 2)
    flat = _flat(param_shardings(_abstract_params(CONFIGS["llama-scan"]), mesh))
    assert flat["layers/attention/q_proj"].get_value().spec == P(None, "fsdp", "tensor", None)
    assert flat["layers/mlp/down_proj"].get_value().spec == P(None, "tensor", "fsdp")
    assert flat["layers/input_norm/scale"].get_value().spec == P(None, None)


def test_qkv_bias_sharded_over_heads():
    flat = _flat(param_shardings(_abstract_params(CONFIGS["qwen"]), make_mesh(2, 2, 2)))
    assert flat["layers/0/attention/q_bias"].get_value().spec == P("tensor", None)
    assert flat["layers/0/attention/k_bias"].get_value().spec == P("tensor", None)


def test_gqa_kv_heads_not_divisible_by_tensor_are_replicated_with_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="jaxstack.train.sharding")
    # llama-test: 4 query heads, 2 kv heads; tensor=4 divides the former only.
    flat = _flat(param_shardings(_abstract_params(CONFIGS["llama"]), make_mesh(1, 2, 4)))
    assert flat["layers/0/attention/q_proj"].get_value().spec == P("fsdp", "tensor", None)
    assert flat["layers/0/attention/k_proj"].get_value().spec == P("fsdp", None, None)
    assert flat["layers/1/attention/v_proj"].get_value().spec == P("fsdp", None, None)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for path in ("layers/0/attention/k_proj", "layers/0/attention/v_proj", "layers/1/attention/k_proj"):
        hits = [m for m in messages if m.startswith(path + ":")]
        assert len(hits) == 1, (path, messages)
        assert "'kv_heads'" in hits[0] and "size 2" in hits[0] and "'tensor' of size 4" in hits[0]
    assert not any("q_proj" in m or "mlp" in m for m in messages), messages


# ---- make_mesh / spec_for / batch helpers -------------------------------------------------------


def test_make_mesh_shapes():
    assert dict(make_mesh().shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert dict(make_mesh(-1, 2, 2).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(make_mesh(1, -1, 4).shape) == {"data": 1, "fsdp": 2, "tensor": 4}
    assert make_mesh(1, 1, 1, devices=jax.devices()[:1]).devices.shape == (1, 1, 1)


@pytest.mark.parametrize(
    "sizes, message",
    [
        ((-1, -1, 2), "at most one axis may be -1"),
        ((3, -1, 1), "8 devices are not divisible by fsdp*tensor*data=3"),
        ((2, 2, 1), "data*fsdp*tensor = 4 but 8 devices"),
        ((4, 4, 1), "data*fsdp*tensor = 16 but 8 devices"),
        ((-1, 0, 2), "axis sizes must be positive integers or -1"),
        ((-2, 2, 2), "axis sizes must be positive integers or -1"),
    ],
)
def test_make_mesh_errors(sizes, message):
    with pytest.raises(ValueError, match="^mesh: ") as info:
        make_mesh(*sizes)
    assert message in str(info.value)


def test_spec_for():
    mesh = make_mesh(2, 2, 2)
    assert spec_for((64, 4, 16), ("embed", "heads", "head_dim"), mesh) == P("fsdp", "tensor", None)
    assert spec_for((8, 16), ("batch", None), mesh) == P(("data", "fsdp"), None)
    assert spec_for((64, 64), ("embed", "embed"), mesh) == P("fsdp", None)  # a mesh axis is used once
    assert spec_for((3,), None, mesh) == P()
    # axes of size 1 are left out
    assert spec_for((64, 4, 16), ("embed", "heads", "head_dim"), make_mesh(8, 1, 1)) == P(None, None, None)


def test_spec_for_errors_name_the_axis_and_the_array():
    mesh = make_mesh(2, 2, 2)
    with pytest.raises(ValueError, match=r"moe/router: logical axis 'experts' has no sharding rule") as info:
        spec_for((8, 64), ("experts", "embed"), mesh, what="moe/router")
    assert "'embed'" in str(info.value)  # lists the known axes
    wrong_rank = r"w: 2 logical axis names \('embed', 'mlp'\) for an array of shape \(4, 4, 4\)"
    with pytest.raises(ValueError, match=wrong_rank):
        spec_for((4, 4, 4), ("embed", "mlp"), mesh, what="w")
    with pytest.raises(ValueError, match="logical axis 'heads' has no sharding rule"):
        spec_for((4,), ("heads",), mesh, rules={"embed": "fsdp"})


def test_batch_helpers_single_process():
    mesh = make_mesh(2, 2, 2)
    assert sharding_lib.batch_sharding(mesh).spec == P(("data", "fsdp"))
    assert sharding_lib.process_batch_slice(mesh, 8) == slice(0, 8)
    tokens = np.arange(8 * 5, dtype=np.int32).reshape(8, 5)
    batch = sharding_lib.make_global_batch({"tokens": tokens}, mesh, 8)["tokens"]
    np.testing.assert_array_equal(np.asarray(batch), tokens)
    assert batch.addressable_shards[0].data.shape == (2, 5)
    with pytest.raises(ValueError, match="holds rows 0:8 of 8, got a local batch of 4 rows"):
        sharding_lib.make_global_batch({"tokens": tokens[:4]}, mesh, 8)

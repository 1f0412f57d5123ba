"""Kimi Linear hybrid model: schedule-as-data config, presets and parameter counts, cache-bytes report,
decode with the mixed cache equals the full forward, HF save/load round trip and named checkpoint errors.

Decode tolerance: float32, logits O(0.1..1); prefill + decode differs from one pass only by summation
order in the KDA chunk vs recurrent kernels and the MLA absorbed vs expanded forms (measured ~1e-7);
2e-5 max-abs is far below what a dropped conv / recurrent state or a misplaced latent slot does (>1e-2).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from jaxstack.models.checkpoint import CheckpointError, load_pretrained, save_pretrained
from jaxstack.models.configs import KIMI_PRESETS, KimiLinearConfig, get_kimi_config
from jaxstack.models.kimi_linear import KimiLinearForCausalLM, cache_bytes, init_cache

DECODE_ATOL = 2e-5


def random_model(config, seed=0, std=0.1):
    """A model with NumPy-drawn parameters: eval_shape + device_put, no per-shape RNG compiles
    (``KimiLinearForCausalLM(config, rngs=...)`` compiles ~50 random kernels, ~20 s on a loaded 2-core
    CPU). Real initialisation is tested at layer level."""
    abstract = nnx.eval_shape(lambda: KimiLinearForCausalLM(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)
    flat = {}
    for path, var in nnx.to_flat_state(state):
        name, shape = path[-1], var.shape
        if name in ("scale", "o_norm"):
            value = 1 + 0.1 * rng.standard_normal(shape)
        elif name == "A_log":
            value = np.log(rng.uniform(1, 16, shape))
        elif name == "dt_bias":
            value = rng.uniform(-6.0, -2.0, shape)  # softplus -> decays exp(-A dt) between ~0.1 and ~1
        else:
            value = std * rng.standard_normal(shape)
        flat[path] = var.replace(jnp.asarray(value, var.dtype))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


@pytest.fixture(scope="module")
def tiny():
    return random_model(get_kimi_config("kimi-linear-tiny", kda_backend="xla", kda_chunk_size=8))


def test_schedule_is_data_and_validated():
    big = KIMI_PRESETS["kimi-linear-48b-a3b"]
    assert big.full_attn_layers == (4, 8, 12, 16, 20, 24, 27) and big.num_kda_layers == 20
    assert big.layer_types[3] == "full_attention" and big.layer_types[26] == "full_attention"
    assert big.mlp_layer_types[0] == "dense" and set(big.mlp_layer_types[1:]) == {"sparse"}
    one_to_one = get_kimi_config("kimi-linear-tiny").with_schedule(["linear_attention", "full_attention"] * 2)
    assert one_to_one.full_attn_layers == (2, 4) and one_to_one.kda_layers == (1, 3)
    with pytest.raises(ValueError, match="in both"):
        KimiLinearConfig(num_layers=2, full_attn_layers=(2,), kda_layers=(1, 2))
    with pytest.raises(ValueError, match=r"missing \[2\]"):
        KimiLinearConfig(num_layers=2, full_attn_layers=(), kda_layers=(1,))
    with pytest.raises(ValueError, match="out of range"):
        KimiLinearConfig(num_layers=2, full_attn_layers=(0,), kda_layers=(1, 2))
    with pytest.raises(ValueError, match="num_experts_per_token"):
        get_kimi_config("kimi-linear-tiny", num_experts_per_token=5)
    with pytest.raises(ValueError, match="unknown 'kimi-linear-xl'"):
        get_kimi_config("kimi-linear-xl")


def test_48b_parameter_counts_and_cache_bytes():
    counts = KIMI_PRESETS["kimi-linear-48b-a3b"].num_params()
    assert 48e9 < counts["total"] < 50e9  # "48B"
    assert 3.0e9 < counts["activated"] < 3.6e9  # "A3B" (with embeddings and head)
    report = cache_bytes(KIMI_PRESETS["kimi-linear-48b-a3b"], dtype="bfloat16")
    assert report["per_token"] == {"hybrid": 7 * 576 * 2, "all_mla": 27 * 576 * 2}  # 8064 vs 31104 B
    assert report["fixed"]["kda_state_per_layer"] == 32 * 128 * 128 * 4  # 2 MiB float32 per layer
    assert report["fixed"]["kda_conv_per_layer"] == 3 * 3 * 32 * 128 * 2
    at_1m = report["contexts"][1048576]
    assert at_1m["all_mla_bytes"] == 31104 * 1048576
    assert 0.73 < at_1m["reduction"] < 0.75  # the paper's "up to 75%"


@nnx.jit(static_argnames=("mode",))
def _forward(model, tokens, cache, mode=None):
    return model(tokens, cache=cache, mode=mode)


def test_decode_after_prefill_equals_full_forward(tiny):
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, tiny.config.vocab_size)
    full = _forward(tiny, tokens, None).logits
    assert float(full.std()) > 1e-2
    cache = init_cache(tiny.config, 2, 20)
    out = _forward(tiny, tokens[:, :13], cache, mode="chunk")  # prefill crosses chunks of 8
    pieces = [out.logits]
    cache = out.cache
    for t in range(13, 16):
        out = _forward(tiny, tokens[:, t : t + 1], cache)  # default: recurrent KDA, absorbed MLA
        pieces.append(out.logits)
        cache = out.cache
    np.testing.assert_allclose(np.asarray(jnp.concatenate(pieces, 1)), np.asarray(full), atol=DECODE_ATOL, rtol=0)
    assert cache.lengths.tolist() == [16, 16]
    assert cache.recurrent.dtype == jnp.float32 and cache.recurrent.shape == (3, 2, 4, 16, 16)
    assert cache.latent.shape == (1, 2, 20, 40) and cache.conv.shape == (3, 2, 3, 3 * 64)
    np.testing.assert_array_equal(np.asarray(cache.latent[:, :, 16:]), 0)


def test_model_bad_inputs(tiny):
    tokens = jnp.zeros((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="segment_ids"):
        tiny(tokens, segment_ids=tokens)
    with pytest.raises(ValueError, match="tokens: expected an integer"):
        tiny(jnp.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"cache.conv: expected shape \[3, 1, 3, 192\]"):
        tiny(tokens, cache=init_cache(tiny.config, 2, 8))
    with pytest.raises(ValueError, match="do not fit"):
        tiny(jnp.zeros((1, 9), jnp.int32), cache=init_cache(tiny.config, 1, 8))
    with pytest.raises(ValueError, match="mode"):
        tiny(tokens, mode="fused")


def test_save_load_round_trip_and_named_errors(tiny, tmp_path):
    path = save_pretrained(tiny, tmp_path / "ckpt")  # registry: the kimi_linear family
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["KimiLinearForCausalLM"]
    assert config["linear_attn_config"]["full_attn_layers"] == [4]
    tensors = load_file(path / "model.safetensors")
    assert tensors["model.layers.0.self_attn.A_log"].shape == (1, 1, 4, 1)
    assert tensors["model.layers.0.self_attn.q_conv1d.weight"].shape == (64, 1, 4)
    assert tensors["model.layers.1.block_sparse_moe.experts.3.w2.weight"].shape == (64, 32)
    loaded = load_pretrained(path)
    a = dict(nnx.to_flat_state(nnx.state(tiny)))
    b = dict(nnx.to_flat_state(nnx.state(loaded)))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key][...]), np.asarray(b[key][...]), err_msg=str(key))

    def broken(name, edit=None, config_edit=None):
        target = tmp_path / name
        target.mkdir()
        data = dict(tensors)
        if edit:
            edit(data)
        save_file(data, str(target / "model.safetensors"))
        cfg = json.loads(json.dumps(config))  # deep copy
        if config_edit:
            config_edit(cfg)
        (target / "config.json").write_text(json.dumps(cfg))
        return target

    with pytest.raises(CheckpointError, match="missing tensor 'model.layers.2.self_attn.dt_bias'"):
        load_pretrained(broken("missing", lambda d: d.pop("model.layers.2.self_attn.dt_bias")))
    with pytest.raises(CheckpointError, match=r"'model.layers.3.self_attn.kv_b_proj.weight' has shape \[3, 3\]"):
        load_pretrained(broken("shape", lambda d: d.update({"model.layers.3.self_attn.kv_b_proj.weight":
                                                               np.zeros((3, 3), np.float32)})))
    with pytest.raises(CheckpointError, match="unexpected tensors"):
        load_pretrained(broken("extra", lambda d: d.update({"model.layers.0.extra": np.zeros(2, np.float32)})))
    with pytest.raises(CheckpointError, match="gate_lower_bound"):
        load_pretrained(broken("gate", config_edit=lambda c: c["linear_attn_config"].update(gate_lower_bound=-5.0)))
    # transformers' save_pretrained spells the dense FFN "block_sparse_moe.*_proj": accepted too.

    def rename(d):
        for part in ("gate", "up", "down"):
            d[f"model.layers.0.block_sparse_moe.{part}_proj.weight"] = d.pop(f"model.layers.0.mlp.{part}_proj.weight")

    renamed = load_pretrained(broken("renamed", rename))
    np.testing.assert_array_equal(np.asarray(renamed.layers[0].mlp.down_proj[...]),
                                  np.asarray(tiny.layers[0].mlp.down_proj[...]))


def test_every_parameter_has_a_sharding_rule(tiny):
    from jax.sharding import PartitionSpec as P

    from jaxstack.train.sharding import make_mesh, param_shardings

    mesh = make_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])
    shardings = param_shardings(nnx.state(tiny, nnx.Param), mesh)  # raises on an unknown logical axis
    assert shardings["layers"][0]["self_attn"]["q_proj"].get_value().spec == P("fsdp", "tensor", None)
    assert shardings["layers"][1]["mlp"]["gate_proj"].get_value().spec == P(None, "fsdp", "tensor")  # [E, d, I]
    assert shardings["layers"][3]["self_attn"]["kv_b_proj"].get_value().spec == P(None, "tensor", None)


@pytest.mark.slow
@pytest.mark.parametrize("layer_types", [("linear_attention",) * 2, ("full_attention",) * 2,
                                         ("linear_attention", "full_attention")],
                         ids=["all-kda", "all-mla", "1-to-1"])
def test_other_schedules_decode(layer_types):
    """The ablation schedules (all-KDA, all-MLA, 1:1) build, and decode matches the full forward."""
    config = get_kimi_config("kimi-linear-tiny", num_layers=2, full_attn_layers=(2,), kda_layers=(1,),
                             kda_backend="xla").with_schedule(layer_types)
    model = random_model(config, seed=1)
    tokens = jax.random.randint(jax.random.key(3), (1, 6), 0, config.vocab_size)
    full = _forward(model, tokens, None).logits
    out = _forward(model, tokens[:, :5], init_cache(config, 1, 8))
    last = _forward(model, tokens[:, 5:], out.cache)
    got = jnp.concatenate([out.logits, last.logits], 1)
    np.testing.assert_allclose(np.asarray(got), np.asarray(full), atol=DECODE_ATOL, rtol=0)


@pytest.mark.slow
def test_training_path_gradients_and_bf16(tiny):
    """Gradients flow through the chunk path to every parameter (A_log and dt_bias included); a bf16
    policy keeps the gate parameters and the recurrent state in float32."""
    tokens = jax.random.randint(jax.random.key(4), (2, 12), 0, tiny.config.vocab_size)

    def loss_fn(model):
        logits = model(tokens[:, :-1], mode="chunk").logits
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        return -jnp.take_along_axis(logp, tokens[:, 1:, None], -1).mean()

    loss, grads = nnx.jit(nnx.value_and_grad(loss_fn))(tiny)
    assert np.isfinite(float(loss))
    flat = {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(grads)}
    for name, g in flat.items():
        assert np.isfinite(g).all(), name
    for name in ("layers/0/self_attn/A_log", "layers/0/self_attn/dt_bias", "layers/3/self_attn/kv_b_proj",
                 "layers/1/mlp/router", "layers/1/mlp/gate_proj"):
        assert np.abs(flat[name]).max() > 0, name
    assert np.abs(flat["layers/1/mlp/e_score_correction_bias"]).max() == 0  # selection only
    # One step of the project's own train step (AdamW + weight-decay mask from metadata).
    from jaxstack.train.optimizers import OptimizerConfig, make_optimizer
    from jaxstack.train.step import (
        init_train_state,
        make_batch,
        make_train_step,
        split_model,
    )

    graphdef, params = split_model(tiny)  # accepts the model: no non-Param state
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-2, warmup_steps=0, schedule="constant"), 10, params)
    state = init_train_state(params, tx, seed=0)
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = make_train_step(graphdef, tx, donate=False)(state, make_batch(tokens))
    assert np.isfinite(float(metrics["loss"]))
    after = state.params
    np.testing.assert_array_equal(np.asarray(after["layers"][1]["mlp"]["e_score_correction_bias"][...]),
                                  before["layers"][1]["mlp"]["e_score_correction_bias"][...])
    assert np.abs(np.asarray(after["layers"][0]["self_attn"]["A_log"][...])
                  - before["layers"][0]["self_attn"]["A_log"][...]).max() > 0

    bf16 = KimiLinearForCausalLM(tiny.config.replace(num_layers=4), policy="bf16", rngs=nnx.Rngs(0))
    assert bf16.layers[0].self_attn.A_log.dtype == jnp.float32 and bf16.lm_head.dtype == jnp.bfloat16
    out = _forward(bf16, tokens[:, :4], init_cache(tiny.config, 2, 8, jnp.bfloat16))
    assert out.logits.dtype == jnp.bfloat16 and out.cache.recurrent.dtype == jnp.float32
    assert bool(jnp.isfinite(out.logits.astype(jnp.float32)).all())

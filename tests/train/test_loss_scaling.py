"""Dynamic loss scaling in the trainer's step: on for float16 compute, a no-op otherwise."""

import pytest
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxstack.models import build_model
from jaxstack.models.configs import get_config
from jaxstack.precision import LossScaleConfig, get_policy, init_loss_scale, loss_scale_for
from jaxstack.train.step import init_train_state, loss_scaled_update, make_batch, split_model, train_step


def _setup(policy_name):
    config = get_config("llama-test")
    model = build_model(config, policy=get_policy(policy_name), rngs=nnx.Rngs(0))
    graphdef, params = split_model(model)
    tokens = jax.random.randint(jax.random.key(1), (2, 17), 0, config.vocab_size)
    return graphdef, params, make_batch(tokens)


def _equal(a, b):
    return all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_fp16_overflow_skips_the_step_and_halves_the_scale():
    graphdef, params, batch = _setup("fp16-mixed")
    tx = optax.adamw(1e-3)
    # 2^100 times the loss overflows float16 (max 65504) in the backward pass: every gradient is inf/nan.
    config = LossScaleConfig(initial_scale=2.0**100, max_scale=2.0**101, growth_interval=2)
    state = init_train_state(params, tx, 0, config)
    step = jax.jit(lambda s, b: train_step(s, b, graphdef=graphdef, tx=tx, loss_scale=config))
    new, metrics = step(state, batch)
    assert _equal(new.params, state.params) and _equal(new.opt_state, state.opt_state)  # skipped
    assert float(new.loss_scale.scale) == 2.0**99 and int(new.loss_scale.skipped) == 1
    assert float(metrics["loss_scale"]) == 2.0**100 and int(metrics["skipped_steps"]) == 1
    assert int(new.step) == 1 and np.isfinite(float(metrics["loss"]))


def test_fp16_finite_steps_update_and_grow_the_scale():
    graphdef, params, batch = _setup("fp16-mixed")
    tx = optax.adamw(1e-3)
    config = LossScaleConfig(initial_scale=2.0**8, growth_interval=2)
    state = init_train_state(params, tx, 0, config)
    step = jax.jit(lambda s, b: train_step(s, b, graphdef=graphdef, tx=tx, loss_scale=config))
    s1, _ = step(state, batch)
    s2, m2 = step(s1, batch)
    assert not _equal(s1.params, state.params)  # a finite step is applied
    assert int(s2.loss_scale.skipped) == 0
    assert float(s2.loss_scale.scale) == 2.0**9  # grown after growth_interval = 2 finite steps
    assert np.isfinite(float(m2["grad_norm"]))


@pytest.mark.slow  # two trainer runs; the fp16 trainer test keeps the scaler's logging covered
def test_scaler_is_off_and_absent_from_metrics_for_float32_and_bfloat16():
    for name in ("fp32", "bf16-mixed"):
        assert not loss_scale_for(get_policy(name).compute_dtype).enabled
    graphdef, params, batch = _setup("fp32")
    tx = optax.adamw(1e-3)
    state = init_train_state(params, tx, 0, loss_scale_for(jnp.float32))
    new, metrics = train_step(state, batch, graphdef=graphdef, tx=tx)
    assert float(new.loss_scale.scale) == 1.0 and "loss_scale" not in metrics


def test_loss_scaled_update_skip_nonfinite_with_a_disabled_scaler():
    """The shared step with a custom loss: a disabled scaler applies every step (the trainer) unless
    ``skip_nonfinite`` (the RL loop), which keeps params / optimizer state and counts the skip."""
    params = {"w": jnp.ones((3,))}
    tx = optax.sgd(0.1)
    scaler = init_loss_scale(LossScaleConfig(enabled=False))

    def nan_loss(p):
        return jnp.sum(p["w"]) * jnp.nan, {"aux": jnp.ones(())}

    (applied, _, same), (_, aux, _, finite) = loss_scaled_update(nan_loss, params, tx.init(params), scaler, tx=tx)
    assert not bool(finite) and not np.isfinite(np.asarray(applied["w"])).any() and int(same.skipped) == 0
    assert float(aux["aux"]) == 1.0
    (kept, _, counted), _ = loss_scaled_update(nan_loss, params, tx.init(params), scaler, tx=tx, skip_nonfinite=True)
    assert _equal(kept, params) and int(counted.skipped) == 1 and float(counted.scale) == 1.0


# ~17 s (a trainer run); the scaler itself stays fast: test_fp16_overflow_skips_the_step_and_halves_the_scale
# and test_fp16_finite_steps_update_and_grow_the_scale, on the same train step the trainer jits.
@pytest.mark.slow
def test_trainer_logs_the_loss_scale_for_fp16(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-m", "jaxstack.cli", "train", "--out", str(tmp_path), "--model", "llama-test",
         "--model.vocab_size=512", "--train.steps=3", "--train.batch_size=2", "--train.seq_len=32", "--train.log_every=1",
         "--train.eval_every=1000", "--train.policy=fp16-mixed", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["loss_scale"] == 2.0**16 for r in records)  # growth interval 400: no growth in 3 steps
    assert all(np.isfinite(r["loss"]) for r in records)

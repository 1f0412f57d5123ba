"""Non-finite faults: a NaN (or out-of-range) optimizer value is refused when the config is built; a
batch that makes the loss NaN is a skipped, counted step (parameters and optimizer state unchanged);
``train.max_nonfinite_steps`` skipped steps in a row stop the run (``jaxstack train`` exits 1) with
the newest checkpoint finite and restorable and no ``hf/`` export.

The NaN enters through the float ``loss_mask`` of a batch (token ids are integers): the masked mean
loss and every gradient become NaN.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxstack.cli import main
from jaxstack.models import build_model
from jaxstack.models.configs import get_config
from jaxstack.train.checkpoint import Checkpointer
from jaxstack.train.optimizers import OptimizerConfig, make_optimizer
from jaxstack.train.step import init_train_state, make_batch, make_train_step, split_model
from jaxstack.train.trainer import NonFiniteTrainingError, TrainConfig, train


@pytest.mark.parametrize("flag, message", [
    ("--optimizer.learning_rate=nan", "--optimizer.learning_rate: expected a finite positive number, got nan"),
    ("--optimizer.learning_rate=inf", "--optimizer.learning_rate: expected a finite positive number, got inf"),
    ("--optimizer.learning_rate=-1e-3", "--optimizer.learning_rate: expected a finite positive number, got -0.001"),
    ("--optimizer.b2=5", "--optimizer.b2: expected a number in [0, 1), got 5.0"),
    ("--optimizer.b1=nan", "--optimizer.b1: expected a number in [0, 1), got nan"),
    ("--optimizer.eps=0", "--optimizer.eps: expected a finite positive number, got 0.0"),
    ("--optimizer.weight_decay=-0.1", "--optimizer.weight_decay: expected a finite number >= 0, got -0.1"),
    ("--optimizer.clip_norm=0", "--optimizer.clip_norm: expected a finite positive number or None, got 0.0"),
    ("--optimizer.min_lr=nan", "--optimizer.min_lr: expected a finite number >= 0, got nan"),
    ("--optimizer.decay_fraction=nan", "--optimizer.decay_fraction: expected a value in [0, 1], got nan"),
    ("--train.max_nonfinite_steps=0", "--train.max_nonfinite_steps: expected a positive integer, got 0"),
    ("--train.peak_tflops=nan", "--train.peak_tflops: expected a finite positive number or None, got nan"),
])
def test_nonfinite_config_is_refused_naming_the_flag(capsys, flag, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "llama-test", "--out", "/nonexistent/never-written", flag])
    assert exit_info.value.code == 2
    assert f"jaxstack train: error: {message}" in capsys.readouterr().err


def test_optimizer_config_accepts_the_edges():
    OptimizerConfig(b1=0.0, b2=0.0, weight_decay=0.0, min_lr=0.0, clip_norm=None)


SEQ, BATCH = 16, 8
CONFIG = get_config("llama-test")


def _tokens(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, CONFIG.vocab_size, (BATCH, SEQ + 1), dtype=np.int32)


def _data(nan_from: int | None, nan_until: int | None = None):
    """A checkpointable iterator of batches; batches nan_from <= i < nan_until have a NaN loss mask."""
    def batch(i: int) -> dict[str, np.ndarray]:
        mask = np.ones((BATCH, SEQ + 1), np.float32)
        if nan_from is not None and nan_from <= i < (nan_until or 1 << 30):
            mask[0, 5] = np.nan
        return {"tokens": _tokens(i), "loss_mask": mask}

    return iter(grain.MapDataset.range(1 << 20).map(batch).to_iter_dataset())


def test_nonfinite_step_leaves_params_and_optimizer_state_unchanged():
    model = build_model(CONFIG, rngs=nnx.Rngs(0))
    graphdef, params = split_model(model)
    tx = make_optimizer(OptimizerConfig(warmup_steps=0), 10, params)
    state = init_train_state(params, tx, seed=0)
    step = make_train_step(graphdef, tx, donate=False)
    state, metrics = step(state, make_batch(**_tokens_and_mask(next(_data(None)))))
    assert bool(metrics["finite"]) and int(metrics["skipped_steps"]) == 0
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    bad = next(_data(0))
    after, metrics = step(state, make_batch(**_tokens_and_mask(bad)))
    assert not bool(metrics["finite"]) and int(metrics["skipped_steps"]) == 1
    assert not np.isfinite(float(metrics["loss"]))
    jax.tree.map(np.testing.assert_array_equal, (after.params, after.opt_state), before)
    assert int(after.step) == int(state.step) + 1


def _tokens_and_mask(batch):
    return {"tokens": jnp.asarray(batch["tokens"]), "loss_mask": jnp.asarray(batch["loss_mask"])}


def _train_config(**changes) -> TrainConfig:
    base = dict(steps=8, batch_size=BATCH, seq_len=SEQ, log_every=1, eval_every=1000, checkpoint_every=2,
                max_nonfinite_steps=3)
    return TrainConfig(**(base | changes))


def test_skipped_steps_are_counted_and_the_run_finishes(tmp_path):
    _, summary = train(CONFIG, _train_config(), OptimizerConfig(warmup_steps=0), _data(3, 5), tmp_path / "run",
                       show_progress=False)
    records = {r["step"]: r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())}
    assert [records[s]["finite"] for s in range(1, 9)] == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert [records[s]["skipped_steps"] for s in range(1, 9)] == [0, 0, 0, 1, 2, 2, 2, 2]
    assert summary["steps_done"] == 8 and np.isfinite(summary["final"]["loss"])
    assert (tmp_path / "run" / "hf" / "model.safetensors").is_file()


def test_consecutive_nonfinite_steps_stop_the_run_with_the_last_checkpoint_intact(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(NonFiniteTrainingError, match=r"stopped at step 7: 3 steps in a row .* newest checkpoint is "
                                                     r"step 6"):
        train(CONFIG, _train_config(), OptimizerConfig(warmup_steps=0), _data(4), run, show_progress=False)
    assert not (run / "hf").exists()
    assert "stopped at step 7" in json.loads((run / "summary.json").read_text())["error"]
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [4, 6]  # nothing saved for the stopping step
    model = build_model(CONFIG, rngs=nnx.Rngs(0))
    _, params = split_model(model)
    state = init_train_state(params, make_optimizer(OptimizerConfig(warmup_steps=0), 8, params), seed=0)
    checkpointer = Checkpointer(run / "checkpoints", async_save=False)
    restored, step = checkpointer.restore(state)
    checkpointer.close()
    assert step == 6
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(restored.params))
    # steps 5 and 6 were skipped: the step-6 parameters are those of step 4
    checkpointer = Checkpointer(run / "checkpoints", async_save=False)
    at_4, _ = checkpointer.restore(state, step=4)
    checkpointer.close()
    jax.tree.map(np.testing.assert_array_equal, restored.params, at_4.params)


def test_a_streak_between_two_log_steps_stops_the_run_at_the_next_check(tmp_path):
    # Steps 5-6 are skipped, steps 7-8 are finite again: the trainer only reads the device-side count
    # at log / checkpoint steps (4, 8, ...), where the current streak is 0 again; the longest streak
    # (2 = the limit) must still stop it at step 8, before step 8 is saved.
    run = tmp_path / "run"
    config = _train_config(steps=12, log_every=4, checkpoint_every=4, max_nonfinite_steps=2)
    with pytest.raises(NonFiniteTrainingError, match=r"stopped at step 8: 2 steps in a row .* newest checkpoint is "
                                                     r"step 4"):
        train(CONFIG, config, OptimizerConfig(warmup_steps=0), _data(4, 6), run, show_progress=False)
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [4]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["skipped_steps"], r["longest_nonfinite_streak"]) for r in records] == [(4, 0, 0), (8, 2, 2)]


# `jaxstack train` whose batches get a NaN loss mask from step NAN_FROM on (1-based)
_NAN_FROM_STEP = """
import os, sys
import numpy as np
from jaxstack.train import trainer
to_host, calls = trainer._to_host_batch, [0]
def poisoned(batch):
    calls[0] += 1
    if calls[0] >= int(os.environ["NAN_FROM"]):
        mask = np.ones(batch["tokens"].shape, np.float32)
        mask[0, 3] = np.nan
        batch = dict(batch, loss_mask=mask)
    return to_host(batch)
trainer._to_host_batch = poisoned
from jaxstack.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_jaxstack_train_exits_nonzero_after_consecutive_nonfinite_steps(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--model", "llama-test", "--model.vocab_size=512", "--train.steps=6",
            "--train.batch_size=4", "--train.seq_len=32", "--train.log_every=1", "--train.eval_every=1000",
            "--train.checkpoint_every=2", "--train.max_nonfinite_steps=2", "--no-progress"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu", NAN_FROM="3")
    result = subprocess.run([sys.executable, "-c", _NAN_FROM_STEP, *args], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "jaxstack train: error: train: stopped at step 4: 2 steps in a row" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (run / "hf").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]

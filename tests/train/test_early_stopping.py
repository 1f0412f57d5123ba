"""Early stopping (``train.early_stopping_patience``): a run whose held-out loss never improves after
its first evaluation stops ``patience`` evaluations later and exports the best step's parameters; a
run whose held-out loss keeps falling is not stopped; a resumed run stops (and exports) exactly as
the uninterrupted one."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from flax import nnx

from jaxstack.data import lm
from jaxstack.models.checkpoint import load_pretrained
from jaxstack.models.configs import get_config
from jaxstack.runs import read_metrics
from jaxstack.train.optimizers import OptimizerConfig
from jaxstack.train.step import make_batch, token_cross_entropy
from jaxstack.train.trainer import TrainConfig, train

CFG = get_config("llama-test", vocab_size=32, max_position_embeddings=64)
OPTIMIZER = OptimizerConfig(learning_rate=1e-2, warmup_steps=0)
# training rows are all token 5, held-out rows all token 7: the more the model learns that the next
# token is 5, the worse its held-out loss -- it never improves after the first evaluation
TRAIN_ROWS = np.full((8, 17), 5, np.int32)
RISING_ROWS = np.full((8, 17), 7, np.int32)


def _config(**overrides) -> TrainConfig:
    fields = dict(steps=40, batch_size=8, seq_len=16, log_every=5, eval_every=5, eval_batches=1,
                  checkpoint_every=5, keep_checkpoints=10, early_stopping_patience=2)
    return TrainConfig(**(fields | overrides))


def _run(run_dir, config: TrainConfig, held_out: np.ndarray):
    data = iter(lm.lm_dataset(TRAIN_ROWS, 8, seed=0, shuffle=False))
    return train(CFG, config, OPTIMIZER, data, run_dir, show_progress=False,
                 eval_data=lambda: iter(lm.lm_dataset(held_out, 8, seed=0, shuffle=False, repeat=False)))


@nnx.jit  # one compiled program instead of ~100 eagerly dispatched ops per call
def _batch_loss(model, batch):
    loss, _ = token_cross_entropy(model(batch["inputs"]).logits, batch["targets"], batch["loss_mask"])
    return loss


def _loss(model, rows: np.ndarray) -> float:
    return float(_batch_loss(model, make_batch(rows)))


def _evals(run_dir) -> dict[int, float]:
    return {m["step"]: m["eval_loss"] for m in read_metrics(run_dir) if "eval_loss" in m}


def test_a_rising_held_out_loss_stops_the_run_and_exports_the_best_step(tmp_path):
    model, summary = _run(tmp_path / "run", _config(), RISING_ROWS)
    evals = _evals(tmp_path / "run")
    assert list(evals) == [5, 10, 15]  # evaluations 10 and 15 did not improve on 5: patience 2 -> stop
    assert evals[10] > evals[5] and evals[15] > evals[5]
    assert summary["steps_done"] == 15 < summary["steps"] == 40
    assert summary["early_stopping"] == {"patience": 2, "best_step": 5, "best_eval_loss": evals[5], "stopped_at": 15}
    # the returned and the exported model are the step-5 parameters, not the step-15 ones
    assert _loss(model, RISING_ROWS) == pytest.approx(evals[5], rel=1e-5)
    exported = load_pretrained(tmp_path / "run" / "hf")
    assert _loss(exported, RISING_ROWS) == pytest.approx(evals[5], rel=1e-5)
    assert (tmp_path / "run" / "hf" / "model.safetensors").read_bytes() == \
        (tmp_path / "run" / "best" / "model.safetensors").read_bytes()
    # running it again finds a finished run: no step is trained, the export stays the best step's
    _, again = _run(tmp_path / "run", _config(), RISING_ROWS)
    assert again["steps_done"] == 15 and _evals(tmp_path / "run") == evals
    assert _loss(load_pretrained(tmp_path / "run" / "hf"), RISING_ROWS) == pytest.approx(evals[5], rel=1e-5)


def test_a_falling_held_out_loss_runs_to_the_end(tmp_path):
    """The early-stopping test above can fail: held-out rows like the training rows keep improving."""
    model, summary = _run(tmp_path / "run", _config(steps=20, early_stopping_patience=3), TRAIN_ROWS)
    evals = _evals(tmp_path / "run")
    assert list(evals) == [5, 10, 15, 20] and evals[20] < evals[5]
    assert summary["steps_done"] == 20 and summary["early_stopping"]["stopped_at"] is None
    best = min(evals, key=evals.get)
    assert summary["early_stopping"]["best_step"] == best
    assert _loss(model, TRAIN_ROWS) == pytest.approx(evals[best], rel=1e-5)


@pytest.mark.slow  # 15-50 s of training runs on 2 cores; run by make test-all
def test_resumed_early_stopping_matches_the_uninterrupted_run(tmp_path):
    """Stop the process at step 10 (after the best step 5), restart: the run stops at 15 as before and
    exports the step-5 parameters it reloads from ``best/``, bit for bit."""
    _run(tmp_path / "straight", _config(), RISING_ROWS)
    _run(tmp_path / "resumed", _config(stop_after=10), RISING_ROWS)
    assert not (tmp_path / "resumed" / "hf").exists()  # not finished
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "10")  # restart from the step-5 checkpoint
    _, summary = _run(tmp_path / "resumed", _config(), RISING_ROWS)
    assert summary["steps_done"] == 15 and summary["early_stopping"]["best_step"] == 5
    assert _evals(tmp_path / "resumed") == _evals(tmp_path / "straight")
    assert (tmp_path / "resumed" / "hf" / "model.safetensors").read_bytes() == \
        (tmp_path / "straight" / "hf" / "model.safetensors").read_bytes()


def test_early_stopping_needs_a_positive_patience_and_held_out_data(tmp_path):
    with pytest.raises(ValueError, match="train.early_stopping_patience: expected a positive integer"):
        _config(early_stopping_patience=0)
    with pytest.raises(ValueError, match="train.early_stopping_patience: needs eval_data"):
        train(CFG, _config(), OPTIMIZER, iter(lm.lm_dataset(TRAIN_ROWS, 8, seed=0)), tmp_path / "run",
              show_progress=False)

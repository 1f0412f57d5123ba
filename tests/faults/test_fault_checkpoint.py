"""Checkpoint faults: a truncated, zeroed or missing file in the newest checkpoint, and a process
killed with SIGKILL in the middle of a save.

In process (fast): ``Checkpointer.restore`` falls back to the newest step that restores, warns which
step it restored and why each newer one failed (file, exception class, reason), moves the failed
steps to ``DIR/corrupt`` and keeps the step it restored through the next saves; when nothing
restores it raises one error listing every step.

End to end (``jaxstack train`` in a subprocess): a tiny run kills itself with SIGKILL while writing
its last checkpoint (step 6), after it logged all six losses, so its metrics are those of an
uninterrupted run. Resuming it (after corrupting a file of the step-4 checkpoint, or not) must
recompute the lost steps and log bit-identical losses and gradient norms.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import grain
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstack.train.checkpoint import CheckpointRestoreError, Checkpointer


def _largest_array_file(step_dir: pathlib.Path) -> pathlib.Path:
    """The OCDBT data file holding the array values (the largest file under state/**/d/)."""
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)


def _truncate(path: pathlib.Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _zero(path: pathlib.Path) -> None:
    path.write_bytes(b"\0" * path.stat().st_size)


# kind -> (corrupt the step directory, the file the warning must name, the exception class it names)
CORRUPTIONS = {
    "array data truncated": (lambda d: _truncate(_largest_array_file(d)), "state", "ValueError"),
    "array data zeroed": (lambda d: _zero(_largest_array_file(d)), "state", "ValueError"),
    "array file missing": (lambda d: _largest_array_file(d).unlink(), "state", "ValueError"),
    "array index truncated": (lambda d: _truncate(d / "state" / "manifest.ocdbt"), "state/manifest.ocdbt",
                              "ValueError"),
    "metadata truncated": (lambda d: _truncate(d / "state" / "_METADATA"), "state/_METADATA", "JSONDecodeError"),
    "iterator state truncated": (lambda d: _truncate(d / "data" / "process_0-of-1.json"),
                                 "data/process_0-of-1.json", "JSONDecodeError"),
    "iterator state missing": (lambda d: (d / "data" / "process_0-of-1.json").unlink(),
                               "data/process_0-of-1.json", "ValueError"),
}


def _iterator():
    return iter(grain.MapDataset.range(1000).to_iter_dataset())


def _state(step: int):
    return {"w": jnp.sin(jnp.arange(4096.0)) + step, "b": jnp.full((4, 4), float(step))}  # w: 16 KB, incompressible


def _save_steps(directory: pathlib.Path, steps, max_to_keep: int | None = 3) -> None:
    """Checkpoints of ``_state(step)`` with the iterator advanced to element ``step``."""
    checkpointer = Checkpointer(directory, max_to_keep=max_to_keep, async_save=False)
    iterator, position = _iterator(), 0
    for step in steps:
        for _ in range(step - position):
            next(iterator)
        position = step
        checkpointer.save(step, _state(step), iterator, force=True)
    checkpointer.close()


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_restore_falls_back_to_the_previous_step(tmp_path, caplog, kind):
    corrupt, culprit, error_class = CORRUPTIONS[kind]
    _save_steps(tmp_path, [5, 10])
    corrupt(tmp_path / "10")

    checkpointer = Checkpointer(tmp_path, async_save=False)
    iterator = _iterator()
    with caplog.at_level(logging.WARNING, logger="jaxstack.train.checkpoint"):
        state, step = checkpointer.restore(_state(0), iterator)
    checkpointer.close()

    assert step == 5 and next(iterator) == 5
    np.testing.assert_array_equal(state["w"], _state(5)["w"])
    message = caplog.text
    assert "restored step 5" in message
    assert f"step 10: 10/{culprit}: {error_class}: " in message
    assert (tmp_path / "corrupt" / "10").is_dir() and not (tmp_path / "10").exists()  # kept, out of the way


def test_fallback_target_survives_the_next_saves(tmp_path):
    """max_to_keep=2 with steps 5 and 10 (corrupt): the restored step 5 is deleted only once two newer
    good steps exist, and the corrupt step is kept aside, never garbage-collected."""
    _save_steps(tmp_path, [5, 10], max_to_keep=2)
    _truncate(_largest_array_file(tmp_path / "10"))
    checkpointer = Checkpointer(tmp_path, max_to_keep=2, async_save=False)
    iterator = _iterator()
    _, step = checkpointer.restore(_state(0), iterator)
    assert step == 5
    checkpointer.save(10, _state(10), iterator, force=True)  # the step number of the corrupt one
    checkpointer.wait()
    assert list(checkpointer.manager.all_steps()) == [5, 10]
    checkpointer.save(15, _state(15), iterator, force=True)
    checkpointer.close()
    assert list(checkpointer.manager.all_steps()) == [10, 15]
    assert (tmp_path / "corrupt" / "10").is_dir()

    again = Checkpointer(tmp_path, async_save=False)
    state, step = again.restore(_state(0), _iterator())
    again.close()
    assert step == 15
    np.testing.assert_array_equal(state["b"], _state(15)["b"])


def test_no_restorable_step_lists_each_failure(tmp_path):
    _save_steps(tmp_path, [5, 10])
    _truncate(tmp_path / "10" / "data" / "process_0-of-1.json")
    _truncate(tmp_path / "5" / "state" / "_METADATA")
    checkpointer = Checkpointer(tmp_path, async_save=False)
    with pytest.raises(CheckpointRestoreError) as error:
        checkpointer.restore(_state(0), _iterator())
    checkpointer.close()
    message = str(error.value)
    assert "step 10: 10/data/process_0-of-1.json: JSONDecodeError: " in message
    assert "step 5: 5/state/_METADATA: JSONDecodeError: " in message
    assert (tmp_path / "10").is_dir() and (tmp_path / "5").is_dir()  # nothing moved when nothing restores


# ---------------------------------------------------------------------------------------------
# End to end: `jaxstack train` killed mid-save, resumed
# ---------------------------------------------------------------------------------------------

ARGS = [
    "--model", "llama-test", "--model.vocab_size=512", "--train.steps=6", "--train.batch_size=4",
    "--train.seq_len=32", "--train.log_every=1", "--train.eval_every=1000", "--train.checkpoint_every=2",
    "--optimizer.warmup_steps=2", "--optimizer.learning_rate=1e-2", "--no-progress",
]

# `jaxstack train` that SIGKILLs itself while writing the data item of checkpoint KILL_AT_STEP (the
# step directory is still the temporary one: the state arrays may be half written, nothing is final)
_KILLED_MID_SAVE = """
import os, signal, sys
import grain
save = grain.checkpoint.CheckpointHandler.save
def save_then_die(self, directory, *args, **kwargs):
    if directory.parent.name.startswith(os.environ["KILL_AT_STEP"] + "."):
        os.kill(os.getpid(), signal.SIGKILL)
    return save(self, directory, *args, **kwargs)
grain.checkpoint.CheckpointHandler.save = save_then_die
from jaxstack.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu", **extra)


def _train(out: pathlib.Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "jaxstack.cli", "train", "--out", str(out), *ARGS],
                            capture_output=True, text=True, env=_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _records(run: pathlib.Path) -> dict[int, tuple[float, float]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in map(json.loads, lines)}


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> tuple[pathlib.Path, dict[int, tuple[float, float]]]:
    """(run directory killed while saving step 6, its per-step (loss, grad_norm) for steps 1..6)."""
    run = tmp_path_factory.mktemp("killed") / "run"
    result = subprocess.run([sys.executable, "-c", _KILLED_MID_SAVE, "train", "--out", str(run), *ARGS],
                            capture_output=True, text=True, env=_env(KILL_AT_STEP="6"), timeout=600)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert [n for n in names if n.isdigit()] == ["2", "4"], names
    assert any(n.startswith("6.orbax-checkpoint-tmp") for n in names), names  # killed mid-save
    records = _records(run)
    assert sorted(records) == list(range(1, 7))
    return run, records


@pytest.mark.slow  # the corrupt-checkpoint cases below resume the same killed run bit-exactly
def test_killed_mid_save_resumes_bit_exact(killed_run, tmp_path):
    run, uninterrupted = killed_run
    resumed = tmp_path / "run"
    shutil.copytree(run, resumed)
    _train(resumed)
    assert _records(resumed) == uninterrupted  # steps 5 and 6 recomputed from the step-4 checkpoint


@pytest.mark.parametrize("kind", [
    "array data truncated",
    pytest.param("metadata truncated", marks=pytest.mark.slow),
    pytest.param("iterator state truncated", marks=pytest.mark.slow),
])
def test_corrupt_checkpoint_falls_back_and_resumes_bit_exact(killed_run, tmp_path, kind):
    run, uninterrupted = killed_run
    corrupt, culprit, error_class = CORRUPTIONS[kind]
    resumed = tmp_path / "run"
    shutil.copytree(run, resumed)
    corrupt(resumed / "checkpoints" / "4")
    result = _train(resumed)
    assert "restored step 2" in result.stderr
    assert f"step 4: 4/{culprit}: {error_class}: " in result.stderr
    assert "Traceback" not in result.stderr.split("restored step 2")[-1]
    assert _records(resumed) == uninterrupted  # steps 3..6 recomputed from the step-2 checkpoint
    assert (resumed / "checkpoints" / "corrupt" / "4").is_dir()


@pytest.mark.slow  # a second subprocess training run (~15 s); the torn-line warning itself is tested fast in test_fault_resume.py
def test_torn_metrics_line_is_truncated_and_resume_is_bit_exact(killed_run, tmp_path):
    """The crash also tore the last metrics line (step 6): resume warns naming the file, drops the line
    with the rest of what followed the step-4 checkpoint, and logs the uninterrupted losses."""
    run, uninterrupted = killed_run
    resumed = tmp_path / "run"
    shutil.copytree(run, resumed)
    metrics = resumed / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text[: text.rstrip("\n").rfind("\n") + 1 + 20])  # step 6's line cut after 20 characters
    result = _train(resumed)
    assert f"{metrics}: truncated its torn last line 6" in result.stderr
    assert _records(resumed) == uninterrupted

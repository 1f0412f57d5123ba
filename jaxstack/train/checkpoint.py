"""Orbax checkpoints of the whole training state plus the Grain data-iterator position.

A checkpoint holds ``TrainState`` (params, optimizer state, step, RNG key data, loss-scaler state) and,
when given, the data iterator's state, so that a resumed run sees exactly the batches the uninterrupted run would.

Layout: ``DIR/<step>/state`` (Orbax arrays: ``_METADATA``, ``manifest.ocdbt``, ``d/...``) and
``DIR/<step>/data`` (``process_<i>-of-<n>.json``, the iterator state). A save is written to a
temporary directory and renamed when complete, so a process killed mid-save leaves no step behind
(the newest complete step is restored).

Retention: keep-last-N. After each completed save Orbax deletes the oldest steps beyond
``max_to_keep`` (``train.keep_checkpoints``, default 2; ``None`` keeps every step). There is no
keep-best policy (no metric is saved with a checkpoint).

Fallback: ``restore()`` tries the newest step first and, when a step does not restore (a truncated,
zeroed or missing array file, corrupt metadata, a corrupt iterator state), the next older one, and
so on. It logs a warning naming the step restored and, for each newer step, the failing file, the
exception class and a one-line reason. The steps that failed are moved to ``DIR/corrupt/<step>``
(kept for inspection, never deleted): left in place they would count towards ``max_to_keep`` (so
the next saves could garbage-collect the good step restored, before a newer good one exists) and
they would block re-saving their step numbers. When no step restores, ``CheckpointRestoreError``
lists every step with its reason and nothing is moved.
"""

from __future__ import annotations

import gc
import inspect
import json
import logging
import pathlib
import re
import shutil
import sys
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

_LOG = logging.getLogger(__name__)

CORRUPT_SUBDIR = "corrupt"  # DIR/corrupt/<step>: steps that failed to restore (not a step name, so Orbax ignores it)


class CheckpointRestoreError(ValueError):
    """No checkpoint in the directory restores; the message lists each step and why it failed.

    A ValueError so that the command line prints it as a one-line error instead of a traceback."""


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` with items ``state`` and (optional) ``data``."""

    def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int | None = 2, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        handlers = {"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()}
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True
            ),
            item_handlers=handlers,
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator=None, *, force: bool = False) -> None:
        items: dict[str, Any] = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, abstract_state, data_iterator=None, step: int | None = None):
        """Restores into the structure (and shardings) of ``abstract_state``; the data iterator, if
        given, is moved to the saved position in place. Returns (state, step).

        step: restore exactly this step; ``None`` = the newest step that restores, falling back to
        older ones as described in the module docstring. Raises FileNotFoundError when the directory
        has no checkpoint and CheckpointRestoreError when no candidate step restores.
        """
        candidates = sorted(self.manager.all_steps(), reverse=True) if step is None else [step]
        if not candidates:
            raise FileNotFoundError(f"checkpoint: no checkpoint in {self.directory}")
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), abstract_state
        )
        failures: list[tuple[int, str]] = []
        for candidate in candidates:
            state, reason = self._try_restore(candidate, abstract, data_iterator)
            if _all_processes(reason is None):
                if failures:
                    self._report_fallback(candidate, failures)
                return state, candidate
            failures.append((candidate, reason or "failed on another process"))
        listing = "\n".join(f"  step {s}: {reason}" for s, reason in failures)
        raise CheckpointRestoreError(
            f"checkpoint: no checkpoint in {self.directory} restores:\n{listing}\n"
            f"(move or delete the directory to start the run from scratch)"
        )

    def _try_restore(self, step: int, abstract, data_iterator) -> tuple[Any, str | None]:
        """(state, None) when ``step`` restores, else (None, "FILE: ExceptionClass: reason")."""
        items: dict[str, Any] = {"state": ocp.args.StandardRestore(abstract)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        state = None
        for name, args in items.items():  # one item at a time, so a failure names its item
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(**{name: args}))
            except Exception as error:  # noqa: BLE001 -- any failure to read a step means: try an older one
                _collect_abandoned_reads()
                return None, _failure_reason(error, self.directory / str(step) / name)
            if name == "state":
                state = restored["state"]
        return state, None

    def _report_fallback(self, restored: int, failures: list[tuple[int, str]]) -> None:
        """Warns which step was restored and why each newer one was not; moves those aside."""
        moved = []
        if jax.process_index() == 0:
            for step, _ in failures:
                moved.append(self._quarantine(step))
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes("jaxstack_checkpoint_quarantine")
        self.manager.reload()
        lines = "\n".join(f"  step {step}: {reason}" for step, reason in failures)
        where = f"; moved to {', '.join(str(p) for p in moved)}" if moved else ""
        _LOG.warning("checkpoint: restored step %d from %s; newer steps did not restore%s:\n%s",
                     restored, self.directory, where, lines)

    def _quarantine(self, step: int) -> pathlib.Path:
        """Moves step directory ``step`` to DIR/corrupt/<step> (``<step>-1``, ... if taken)."""
        target_dir = self.directory / CORRUPT_SUBDIR
        target_dir.mkdir(exist_ok=True)
        target, n = target_dir / str(step), 0
        while target.exists():
            n += 1
            target = target_dir / f"{step}-{n}"
        shutil.move(str(self.directory / str(step)), str(target))
        return target

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _all_processes(ok: bool) -> bool:
    """Whether ``ok`` holds on every process (multi-host processes must restore the same step)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _is_abandoned_orbax_read(unraisable) -> bool:
    """True for the unraisable exception of an Orbax read coroutine (or its task) that was dropped."""
    obj = unraisable.object
    coroutine = obj.get_coro() if hasattr(obj, "get_coro") else obj
    code = getattr(coroutine, "cr_code", None)
    return inspect.iscoroutine(coroutine) and code is not None and "orbax" in code.co_filename


def _collect_abandoned_reads() -> None:
    """Silences the array reads Orbax abandoned when one read of a step failed, and collects them.

    Orbax reads a step's arrays concurrently; when one read fails, the others are dropped, and each
    of their coroutines, once collected, prints "Exception ignored in: <coroutine ...>" with a
    traceback of the same failure -- some only at a later collection. The failure is reported once,
    by ``restore``; these are not. The filter stays installed for the process (it passes every other
    unraisable exception on to the previous hook)."""
    previous = sys.unraisablehook
    if not getattr(previous, "_jaxstack_orbax_filter", False):

        def hook(unraisable) -> None:
            if not _is_abandoned_orbax_read(unraisable):
                previous(unraisable)

        hook._jaxstack_orbax_filter = True
        sys.unraisablehook = hook
    # A dropped read that ran as an asyncio *task* is reported by the event loop instead: asyncio's
    # logger writes "Task exception was never retrieved" with the same traceback when the task dies.
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _AbandonedOrbaxTaskFilter) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_AbandonedOrbaxTaskFilter())
    gc.collect()


class _AbandonedOrbaxTaskFilter(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" record for a task whose coroutine is Orbax's
    (every other asyncio record passes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("exception was never retrieved" in message and "orbax" in message)


def _failure_reason(error: BaseException, item_dir: pathlib.Path) -> str:
    """``FILE: ExceptionClass: first line of the message`` for a failed restore of ``item_dir``.

    The innermost cause is reported (Orbax wraps TensorStore errors); FILE is the file the message
    names under the step directory, else the item's metadata file that is not valid JSON, else the
    item directory."""
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    text = str(root).split(" [tensorstore_spec")[0].strip()  # TensorStore appends its whole spec
    step_dir = item_dir.parent
    named = [p.rstrip(".,:;") for p in re.findall(re.escape(str(step_dir)) + r"[^\s\"'<>\\]*", text)]
    files = [p for p in named if not p.endswith("/") and pathlib.Path(p) != item_dir]
    culprit = pathlib.Path(files[-1]) if files else _invalid_json_file(item_dir) or item_dir
    message = text.splitlines()[0] if text else "(no message)"
    if len(message) > 300:
        message = message[:297] + "..."
    return f"{culprit.relative_to(step_dir.parent)}: {type(root).__name__}: {message}"


def _invalid_json_file(item_dir: pathlib.Path) -> pathlib.Path | None:
    """The first metadata file under ``item_dir`` that is not valid JSON (array data, under ``d/``,
    and the binary OCDBT manifests are skipped); None when every one parses or the dir is absent."""
    if not item_dir.is_dir():
        return None
    for path in sorted(item_dir.rglob("*")):
        if not path.is_file() or "d" in path.relative_to(item_dir).parts[:-1] or path.suffix == ".ocdbt":
            continue
        if path.name == "commit_success.txt":
            continue
        try:
            json.loads(path.read_bytes())
        except ValueError:
            return path
    return None

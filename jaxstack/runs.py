"""The one run-record writer: every run (trainer, experiment, evaluation) leaves the same record.

A run directory ``<root>/<name>/<stamp>/`` holds:

* ``config.json``: written first and atomically, so a run that crashes still says what it was;
* ``metrics.jsonl``: one JSON object per line, appended and flushed line by line; a last line torn
  by a crash is dropped, with a warning naming the file, when the file is read, truncated (a
  resume) or appended to again;
* ``summary.json``: written atomically; every write merges its keys into what is there, so several
  writers (the trainer, then the experiment around it) contribute without clobbering each other;
* plots: PNG files saved with matplotlib's Agg backend (:func:`pyplot`, :meth:`RunRecord.save_plot`).

``<stamp>`` is the local time ``YYYYmmdd-HHMMSS``; a run that finds the directory taken (a second run
started in the same second) gets ``<stamp>-1``, ``<stamp>-2``, ...: the directory is claimed with an
atomic ``mkdir``, so concurrent runs never share one.

    record = RunRecord.create("runs", "demo", config)     # runs/demo/20250101-120000/config.json
    record.log_metrics(10, loss=2.3)                      # metrics.jsonl: {"step": 10, "loss": 2.3}
    record.write_summary({"final_loss": 2.1})             # summary.json, merged
    record.save_plot(fig, "loss.png")                     # runs/demo/20250101-120000/loss.png

Multi-host: after ``jax.distributed.initialize()``, process 0 claims the directory and broadcasts its
name, so every process gets the same one; only process 0 writes (``record.writer``), the others read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import sys
import tempfile
import threading
import time
from typing import Any, Iterable, Mapping

from jaxstack.config import to_dict

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
_METRICS_LOCK = threading.Lock()
SUMMARY_FILE = "summary.json"
STAMP_FORMAT = "%Y%m%d-%H%M%S"

_LOG = logging.getLogger(__name__)

# longest run-directory name the multi-host broadcast carries (UTF-8 bytes)
_MAX_NAME_BYTES = 255


def _timestamp() -> str:
    return time.strftime(STAMP_FORMAT)


def _jsonable(value: Any) -> Any:
    """``json.dumps`` fallback: configs and paths as plain values, numpy scalars / arrays as numbers /
    lists, anything else as its ``str``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if hasattr(value, "tolist"):  # numpy and jax scalars and arrays
        return value.tolist()
    return str(value)


def _dumps(value: Any, **kwargs) -> str:
    return json.dumps(value, default=_jsonable, **kwargs)


def as_json(value: Any) -> Any:
    """``value`` as a record file holds it once read back (``config.json``: tuples as lists, paths and
    dtypes as strings), so an in-memory config compares equal to the one on disk."""
    return json.loads(_dumps(value))


def _write_atomic(path: pathlib.Path, text: str) -> None:
    """Writes ``text`` to a temporary file beside ``path``, then renames it over ``path``: readers (and
    a crash) see the old file or the new one, never half of one."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        pathlib.Path(temporary).unlink(missing_ok=True)
        raise


def _distributed_jax():
    """The ``jax`` module when ``jax.distributed`` is initialised (a multi-host run), else None. Looked
    up without importing jax: a process that never imported it is not part of a multi-host run."""
    jax = sys.modules.get("jax")
    if jax is not None and jax.distributed.is_initialized():
        return jax
    return None


def _is_writer() -> bool:
    jax = _distributed_jax()
    return jax is None or jax.process_index() == 0


def _broadcast_name(name: str) -> str:
    """Process 0's ``name`` on every process (a collective: all processes must call it)."""
    jax = _distributed_jax()
    if jax is None or jax.process_count() == 1:
        return name
    import numpy as np
    from jax.experimental import multihost_utils

    encoded = name.encode("utf-8")
    if len(encoded) > _MAX_NAME_BYTES:
        raise ValueError(f"run name: at most {_MAX_NAME_BYTES} bytes, got {len(encoded)} ({name!r})")
    buffer = np.zeros(_MAX_NAME_BYTES, np.uint8)
    buffer[:len(encoded)] = np.frombuffer(encoded, np.uint8)
    received = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    return bytes(received.astype(np.uint8)).rstrip(b"\0").decode("utf-8")


def _check_component(value: str, field: str) -> None:
    if not value or value in (".", "..") or "/" in value or os.sep in value:
        raise ValueError(f"{field}: expected one directory name (no path separators), got {value!r}")


def read_metrics(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (or of the one in run directory ``path``), in order.

    A last line without its newline that does not parse is a write torn by a crash and is skipped,
    with a warning naming the file; any other line that does not parse raises ValueError naming the
    file and the line.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    records, torn = _read_records(path)
    if torn is not None:
        _LOG.warning("metrics: %s: skipped its torn last line %d (a write cut short by a crash)", path, torn)
    return records


def _read_records(path: pathlib.Path) -> tuple[list[dict[str, Any]], int | None]:
    """(the records of ``path``, the number of its torn last line or None); see :func:`read_metrics`."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):  # the unterminated last line: a torn append
                return records, number
            raise ValueError(f"{path}:{number}: not a JSON object per line ({error})") from None
    return records, None


class RunRecord:
    """One run directory and the files every run leaves in it (see the module docstring).

    Make one with :meth:`create` (a new, unique directory) or :meth:`open` (a given directory: resume,
    or a path the user chose). ``dir`` is the directory; ``writer`` is False on the processes of a
    multi-host run other than process 0, where every write method does nothing.
    """

    def __init__(self, directory: str | pathlib.Path, *, writer: bool | None = None):
        self.dir = pathlib.Path(directory)
        self.writer = _is_writer() if writer is None else writer
        self._metrics_checked = False

    def __repr__(self) -> str:
        return f"RunRecord({str(self.dir)!r})"

    # -- making one

    @classmethod
    def create(cls, root: str | pathlib.Path, name: str, config: Any, *, stamp: str | None = None) -> RunRecord:
        """A new run directory ``root/name/<stamp>`` with ``config.json`` written in it.

        config: a dataclass config or a mapping (dataclasses inside are serialised with ``to_dict``).
        stamp: a fixed directory name instead of the timestamp (``run_name`` of an experiment); that
        directory is used as it is, existing or not (a trainer run in it then resumes). Without it the
        directory is ``<timestamp>``, or ``<timestamp>-N`` for the first N free, claimed atomically.
        """
        _check_component(name, "run record name")
        parent = pathlib.Path(root) / name
        writer = _is_writer()
        if stamp is not None:
            _check_component(stamp, "run_name")
            directory = parent / stamp
            directory.mkdir(parents=True, exist_ok=True)
        else:
            directory = None
            if writer:
                parent.mkdir(parents=True, exist_ok=True)
                base, suffix = _timestamp(), 0
                while directory is None:
                    candidate = parent / (base if suffix == 0 else f"{base}-{suffix}")
                    try:
                        candidate.mkdir()
                        directory = candidate
                    except FileExistsError:
                        suffix += 1
            directory = parent / _broadcast_name(directory.name if directory is not None else "")
            directory.mkdir(parents=True, exist_ok=True)  # other hosts: a local disk, or already there
        record = cls(directory, writer=writer)
        record.write_config(config)
        return record

    @classmethod
    def open(cls, directory: str | pathlib.Path, config: Any = None) -> RunRecord:
        """The run directory ``directory`` (created if missing): to resume a run, or where the user named
        the directory (``jaxstack train --out DIR``). With ``config``, ``config.json`` is (re)written
        first; existing metrics and summary are kept."""
        record = cls(directory)
        record.dir.mkdir(parents=True, exist_ok=True)
        if config is not None:
            record.write_config(config)
        return record

    # -- files

    def path(self, *parts: str) -> pathlib.Path:
        """``dir / parts...``, with its parent directories created (for the run's other files)."""
        target = self.dir.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_config(self, config: Any) -> pathlib.Path:
        """Writes ``config.json`` atomically (a dataclass or a mapping) and returns its path."""
        path = self.dir / CONFIG_FILE
        if self.writer:
            _write_atomic(path, _dumps(to_dict(config), indent=2) + "\n")
        return path

    def read_config(self) -> dict[str, Any]:
        return json.loads((self.dir / CONFIG_FILE).read_text(encoding="utf-8"))

    def log_metrics(self, step: int | None = None, /, **values: Any) -> dict[str, Any]:
        """Appends ``{"step": step, **values}`` (no ``step`` key when it is None) to ``metrics.jsonl`` as
        one line, flushed; returns the record. Before the first append a torn last line is removed."""
        record = ({} if step is None else {"step": step}) | values
        if self.writer:
            path = self.dir / METRICS_FILE
            with _METRICS_LOCK:  # whole lines from several threads (e.g. seeds run at once)
                if not self._metrics_checked:
                    self._end_on_newline(path)
                    self._metrics_checked = True
                with path.open("a", encoding="utf-8") as out:
                    out.write(_dumps(record) + "\n")
                    out.flush()
        return record

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` (``[]`` when there is none yet); see :func:`read_metrics`."""
        path = self.dir / METRICS_FILE
        return read_metrics(path) if path.exists() else []

    def truncate_metrics(self, after_step: int) -> None:
        """Drops the records logged after step ``after_step`` (and a torn last line), so a run resumed
        from its step-``after_step`` checkpoint reads as one clean run (``after_step=0``: a fresh start).
        Records without a ``step`` stay."""
        path = self.dir / METRICS_FILE
        if not self.writer or not path.exists():
            return
        records, torn = _read_records(path)
        if torn is not None:
            _LOG.warning("metrics: %s: truncated its torn last line %d (a write cut short by a crash)", path, torn)
        kept = [r for r in records if r.get("step", 0) <= after_step]
        _write_atomic(path, "".join(_dumps(r) + "\n" for r in kept))
        self._metrics_checked = True

    @staticmethod
    def _end_on_newline(path: pathlib.Path) -> None:
        """Ends ``metrics.jsonl`` on a newline before appending: an unterminated last line that parses
        gets its newline, one that does not (a torn write) is cut off."""
        if not path.exists():
            return
        data = path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        start = data.rfind(b"\n") + 1
        try:
            json.loads(data[start:])
        except (json.JSONDecodeError, UnicodeDecodeError):
            _LOG.warning("metrics: %s: truncated its torn last line (a write cut short by a crash)", path)
            with path.open("rb+") as handle:
                handle.truncate(start)
            return
        with path.open("ab") as handle:
            handle.write(b"\n")

    def write_summary(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Merges ``values`` into ``summary.json`` (its top-level keys replace those already there, the
        others stay), writes it atomically and returns the merged summary."""
        summary = self.read_summary() | dict(values)
        if self.writer:
            _write_atomic(self.dir / SUMMARY_FILE, _dumps(summary, indent=2) + "\n")
        return summary

    def read_summary(self) -> dict[str, Any]:
        """``summary.json`` as a dict (``{}`` when there is none yet)."""
        path = self.dir / SUMMARY_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def save_plot(self, fig, name: str, *, dpi: int = 120) -> pathlib.Path:
        """Saves matplotlib figure ``fig`` as ``dir/name`` (``.png`` added when ``name`` has no suffix),
        closes it, and returns the path."""
        plt = pyplot()
        path = self.dir / name
        if not path.suffix:
            path = path.with_suffix(".png")
        try:
            if self.writer:
                path.parent.mkdir(parents=True, exist_ok=True)
                fig.savefig(path, dpi=dpi)
        finally:
            plt.close(fig)
        return path

    def write_jsonl(self, name: str, rows: Iterable[Mapping[str, Any]]) -> pathlib.Path:
        """Writes ``rows`` as ``dir/name``, one JSON object per line, atomically (a table, not the
        metrics stream)."""
        path = self.path(name)
        if self.writer:
            _write_atomic(path, "".join(_dumps(dict(row), ensure_ascii=False) + "\n" for row in rows))
        return path


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (plots are files, never windows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


__all__ = ["CONFIG_FILE", "METRICS_FILE", "STAMP_FORMAT", "SUMMARY_FILE", "RunRecord", "as_json", "pyplot",
           "read_metrics"]

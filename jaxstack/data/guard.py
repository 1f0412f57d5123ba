"""Keep evaluation-only data out of training: ``assert_not_eval_data(path)``.

Global PIQA's licence allows evaluation only; training on it (or on data seeded by it) is not
allowed. The training-data loaders call ``assert_not_eval_data``: the file sources of
:mod:`jaxstack.data.sources` (JSONL, Parquet, ArrayRecord) on every file they resolve, the path
loaders of :mod:`jaxstack.data.mixture` (those sources, and a TFDS source's prepared dataset) and
the text-directory pipeline of :mod:`jaxstack.data.lm` (``jaxstack train --text-dir``).

Detection (any one rule refuses the path):

1. **Name**: a component of the resolved path matches ``global[-_ ]?piqa`` (case-insensitive); this
   catches the published repositories (``mrlbenchmarks/global-piqa-nonparallel``, ``...-parallel``),
   the Hugging Face cache layout (``datasets--mrlbenchmarks--global-piqa-parallel``) and our fixture.
2. **Content**: a data file (``.jsonl``, ``.json``, ``.parquet``, ``.array_record``) whose records
   carry the Global PIQA fields ``prompt``, ``solution0``, ``solution1`` and ``label``. For JSON(L)
   and ArrayRecord (records: JSON objects) the first record is read; for Parquet only the schema. A
   directory is searched recursively (at most ``max_files`` data files, so a huge corpus directory
   is not read in full; raise it to scan deeper).
3. **Marker**: a file named ``.eval_only`` in the directory or any parent (a way to fence off other
   evaluation sets by hand).

Renaming the directory *and* the fields defeats the guard; it protects against accidents, not intent.
"""

from __future__ import annotations

import json
import os
import pathlib
import re

GLOBAL_PIQA_FIELDS = frozenset({"prompt", "solution0", "solution1", "label"})
_NAME_PATTERN = re.compile(r"global[-_ ]?piqa", re.IGNORECASE)
_DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".array_record")
MARKER = ".eval_only"


class EvalDataError(ValueError):
    """A path given to training-data code holds evaluation-only data."""


def _array_record_fields(file: pathlib.Path) -> set[str]:
    """Field names of the first record of an ArrayRecord file of UTF-8 JSON objects (empty set if the
    reader is missing, the file is empty or its first record is not a JSON object)."""
    try:
        from array_record.python.array_record_module import ArrayRecordReader
    except ImportError:  # cannot look inside; rely on the name rule
        return set()
    try:
        reader = ArrayRecordReader(str(file))
        try:
            first = reader.read([0])[0] if reader.num_records() else None
        finally:
            reader.close()
        record = json.loads(first.decode("utf-8")) if first is not None else None
    except (OSError, RuntimeError, ValueError):  # the C++ reader raises RuntimeError on a damaged file (even on close)
        return set()
    return set(record) if isinstance(record, dict) else set()


def _record_fields(file: pathlib.Path) -> set[str]:
    """Field names of the first record of a JSON / JSONL / Parquet / ArrayRecord file (empty set if unreadable)."""
    try:
        if file.suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:  # cannot look inside; rely on the name rule
                return set()
            return set(pq.read_schema(file).names)
        if file.suffix == ".array_record":
            return _array_record_fields(file)
        with open(file, encoding="utf-8") as handle:
            if file.suffix == ".jsonl":
                for line in handle:
                    if line.strip():
                        record = json.loads(line)
                        return set(record) if isinstance(record, dict) else set()
                return set()
            head = handle.read(1 << 20)
        data = json.loads(head)
        if isinstance(data, list) and data and isinstance(data[0], dict):
            return set(data[0])
        if isinstance(data, dict):
            return set(data)
    except (OSError, ValueError, UnicodeDecodeError):
        return set()
    return set()


def eval_data_reason(path: str | os.PathLike, *, max_files: int = 1000) -> str | None:
    """Why ``path`` looks like evaluation-only data (a sentence), or None if it does not."""
    path = pathlib.Path(path).expanduser()
    resolved = path.resolve() if path.exists() else path.absolute()
    for part in resolved.parts:
        if _NAME_PATTERN.search(part):
            return f"its path component {part!r} names Global PIQA"
    for directory in [resolved, *resolved.parents]:
        if (directory / MARKER).is_file():
            return f"{directory / MARKER} marks it evaluation-only"
    if resolved.is_file():
        files = [resolved] if resolved.suffix in _DATA_SUFFIXES else []
    elif resolved.is_dir():
        files = []
        for root, dirs, names in os.walk(resolved):
            dirs.sort()
            for name in sorted(names):
                if name == MARKER:
                    return f"{pathlib.Path(root) / name} marks it evaluation-only"
                if name.endswith(_DATA_SUFFIXES):
                    files.append(pathlib.Path(root) / name)
            for name in dirs:
                if _NAME_PATTERN.search(name):
                    return f"it contains {pathlib.Path(root) / name}, which names Global PIQA"
            if len(files) >= max_files:
                break
    else:
        files = []
    for file in files[:max_files]:
        if GLOBAL_PIQA_FIELDS <= _record_fields(file):
            return f"{file} has the Global PIQA fields {sorted(GLOBAL_PIQA_FIELDS)}"
    return None


def assert_not_eval_data(path: str | os.PathLike, *, max_files: int = 1000) -> None:
    """Raises EvalDataError if ``path`` is, or contains, a Global PIQA dataset (see the module docstring).

    Pure apart from reading the file system; every training-data loader calls it on the paths it
    reads (see the module docstring), so new loaders must too.
    """
    reason = eval_data_reason(path, max_files=max_files)
    if reason is not None:
        raise EvalDataError(
            f"{path}: refused as training data because {reason}. Global PIQA is licensed for evaluation only "
            "(training on it, or on data derived from it, is not allowed)."
        )


__all__ = ["GLOBAL_PIQA_FIELDS", "MARKER", "EvalDataError", "assert_not_eval_data", "eval_data_reason"]

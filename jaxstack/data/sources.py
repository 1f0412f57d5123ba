"""Local document sources as Grain ``MapDataset``s: JSONL, Parquet, ArrayRecord (and TFDS, see
:mod:`jaxstack.data.tfds_builders`).

Every source is random access (``len`` + ``__getitem__``), so Grain can shuffle, shard
(``ds[shard_index::shard_count]``) and checkpoint it by index. An element is one document's text
(``str``). Errors are explicit and name the file and the record:

* a missing file or an empty glob -> ``FileNotFoundError`` naming the path;
* a source without records -> :class:`EmptySourceError` naming the path;
* a record that cannot be decoded (bad JSON, bad UTF-8, missing or non-string text field) ->
  :class:`CorruptRecordError` naming the file and the record index (raised when that record is read,
  or up front for every bad record at once by :func:`validate_records` / ``text_source(..., preflight=True)``);
* a file of evaluation-only data (Global PIQA) -> :class:`~jaxstack.data.guard.EvalDataError` naming
  the file: every resolved file goes through :func:`~jaxstack.data.guard.assert_not_eval_data`.

ArrayRecord records written by :func:`write_array_record` are UTF-8 JSON objects
(``{"text": ...}``), one per record, ``group_size:1`` for fast random access. Text is UTF-8; a
leading byte-order mark (UTF-8 BOM, as some Windows editors write) is accepted and dropped.
"""

from __future__ import annotations

import codecs
import glob
import json
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import grain
import numpy as np

from jaxstack.data.guard import assert_not_eval_data


class CorruptRecordError(ValueError):
    """A record that cannot be decoded; the message names the file and the record index."""


class EmptySourceError(ValueError):
    """A source with no records."""


def resolve_paths(paths: str | pathlib.Path | Sequence[str | pathlib.Path], *, suffixes: Sequence[str] = ()) -> list[str]:
    """Expands a path, a glob, a directory (files ending in ``suffixes``) or a list of those into a
    sorted list of existing files. Raises FileNotFoundError naming what matched nothing."""
    items = [paths] if isinstance(paths, (str, pathlib.Path)) else list(paths)
    if not items:
        raise FileNotFoundError("source: no paths given (expected a file, a glob or a directory)")
    files: list[str] = []
    for item in items:
        item = str(item)
        if any(ch in item for ch in "*?["):
            matched = sorted(glob.glob(item))
            if not matched:
                raise FileNotFoundError(f"source: the glob {item!r} matches no file")
            files.extend(matched)
        elif pathlib.Path(item).is_dir():
            matched = sorted(str(p) for p in pathlib.Path(item).iterdir()
                             if p.is_file() and (not suffixes or any(p.name.endswith(s) for s in suffixes)))
            if not matched:
                raise FileNotFoundError(f"source: the directory {item!r} holds no {'/'.join(suffixes) or ''} file")
            files.extend(matched)
        elif pathlib.Path(item).is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"source: {item!r} does not exist")
    return files


def _training_files(paths, *, suffixes: Sequence[str]) -> list[str]:
    """:func:`resolve_paths`, then the eval-data guard on every file, so that no source reads
    evaluation-only data (raises EvalDataError naming the file)."""
    files = resolve_paths(paths, suffixes=suffixes)
    for file in files:
        assert_not_eval_data(file)
    return files


def _json_text(raw: bytes, text_field: str, where: str) -> str:
    """The text field of one UTF-8 JSON record (JSONL line or ArrayRecord entry); errors name ``where``."""
    try:
        record = json.loads(raw.decode("utf-8-sig"))  # -sig: a BOM opening the file (or record) is dropped
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptRecordError(f"{where}: not valid UTF-8 JSON ({error})") from None
    return _text_of(record, text_field, where)


def _text_of(record: Any, text_field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise CorruptRecordError(f"{where}: expected a JSON object with a {text_field!r} field, got {type(record).__name__}")
    value = record.get(text_field)
    if not isinstance(value, str):
        raise CorruptRecordError(
            f"{where}: field {text_field!r} must be a string, got {type(value).__name__}"
            + (f" (fields: {sorted(record)})" if value is None else "")
        )
    return value


class JsonlSource:
    """Random-access JSONL documents (one JSON object per non-blank line; ``text_field`` is the text).

    Line offsets are indexed once at construction (one pass over the files); records are parsed on
    access, so a bad line raises :class:`CorruptRecordError` with its index and line number."""

    def __init__(self, paths, *, text_field: str = "text"):
        self.files = _training_files(paths, suffixes=(".jsonl", ".json"))
        self.text_field = text_field
        self._index: list[tuple[int, int, int]] = []  # (file, byte offset, line number)
        for f, path in enumerate(self.files):
            offset = 0
            with open(path, "rb") as handle:
                for line_number, line in enumerate(handle, start=1):
                    if line.removeprefix(codecs.BOM_UTF8).strip():
                        self._index.append((f, offset, line_number))
                    offset += len(line)
        if not self._index:
            raise EmptySourceError(f"source: {self.files} hold no JSONL records")

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> str:
        f, offset, line_number = self._index[index]
        path = self.files[f]
        where = f"{path}: record {index} (line {line_number})"
        with open(path, "rb") as handle:
            handle.seek(offset)
            raw = handle.readline()
        return _json_text(raw, self.text_field, where)

    def __repr__(self) -> str:
        return f"JsonlSource({len(self.files)} files, {len(self)} records)"


class ParquetSource:
    """Random-access Parquet documents: the ``text_field`` column of every file (pyarrow).

    The column is read into memory (Arrow strings) at construction; a null or non-string value raises
    :class:`CorruptRecordError` with its index when read."""

    def __init__(self, paths, *, text_field: str = "text"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.files = _training_files(paths, suffixes=(".parquet",))
        self.text_field = text_field
        columns, self._starts = [], [0]
        for path in self.files:
            try:
                table = pq.read_table(path, columns=[text_field])
            except (pa.ArrowInvalid, OSError) as error:
                raise CorruptRecordError(f"{path}: not a readable Parquet file with a {text_field!r} column ({error})") from None
            except KeyError:
                raise CorruptRecordError(f"{path}: no column {text_field!r}") from None
            columns.append(table.column(text_field))
            self._starts.append(self._starts[-1] + table.num_rows)
        self._columns = columns
        if self._starts[-1] == 0:
            raise EmptySourceError(f"source: {self.files} hold no Parquet rows")

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int) -> str:
        if not 0 <= index < len(self):
            raise IndexError(f"source: index {index} out of range [0, {len(self)})")
        f = int(np.searchsorted(self._starts, index, side="right")) - 1
        value = self._columns[f][index - self._starts[f]].as_py()
        if not isinstance(value, str):
            raise CorruptRecordError(
                f"{self.files[f]}: record {index} (row {index - self._starts[f]}): column {self.text_field!r} "
                f"must be a string, got {type(value).__name__}")
        return value

    def __repr__(self) -> str:
        return f"ParquetSource({len(self.files)} files, {len(self)} records)"


class ArrayRecordSource:
    """Random-access ArrayRecord documents (records: UTF-8 JSON objects with ``text_field``), read
    with ``grain.sources.ArrayRecordDataSource``."""

    def __init__(self, paths, *, text_field: str = "text"):
        self.files = _training_files(paths, suffixes=(".array_record",))
        self.text_field = text_field
        try:
            self._source = grain.sources.ArrayRecordDataSource(self.files)
        except Exception as error:  # the C++ reader raises RuntimeError / ValueError on a damaged file
            raise CorruptRecordError(f"{self.files}: not a readable ArrayRecord file ({error})") from None
        if len(self._source) == 0:
            raise EmptySourceError(f"source: {self.files} hold no ArrayRecord records")

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> str:
        where = f"{self.files if len(self.files) > 1 else self.files[0]}: record {index}"
        try:
            raw = self._source[index]
        except IndexError:
            raise
        except Exception as error:
            raise CorruptRecordError(f"{where}: unreadable ({error})") from None
        return _json_text(raw, self.text_field, where)

    def __repr__(self) -> str:
        return f"ArrayRecordSource({len(self.files)} files, {len(self)} records)"


_LISTED_PROBLEMS = 50  # a pre-flight report lists this many bad records, then counts the rest


def report_bad_records(problems: Sequence[str], what: str) -> None:
    """Raises one CorruptRecordError listing every problem (file + line or record) found in ``what``;
    nothing when ``problems`` is empty."""
    if not problems:
        return
    listed = "\n".join(f"  {p}" for p in problems[:_LISTED_PROBLEMS])
    more = f"\n  ... and {len(problems) - _LISTED_PROBLEMS} more" if len(problems) > _LISTED_PROBLEMS else ""
    raise CorruptRecordError(f"{what}: {len(problems)} bad record{'s' if len(problems) > 1 else ''} "
                             f"(pre-flight check of every record):\n{listed}{more}")


def validate_records(source: JsonlSource | ParquetSource | ArrayRecordSource) -> int:
    """Reads every record of ``source`` once, before training, so that a bad record fails the run at
    the start rather than at the batch that first reads it. Returns the number of records; raises
    CorruptRecordError listing every bad record (file, record index and line) at once."""
    problems = []
    for index in range(len(source)):
        try:
            source[index]
        except CorruptRecordError as error:
            problems.append(str(error))
    report_bad_records(problems, f"source {getattr(source, 'files', source)}")
    return len(source)


FORMATS = {"jsonl": JsonlSource, "parquet": ParquetSource, "array_record": ArrayRecordSource}


def _format_of(path: str) -> str:
    for name, ending in (("jsonl", ".jsonl"), ("jsonl", ".json"), ("parquet", ".parquet"),
                         ("array_record", ".array_record")):
        if path.endswith(ending) or f"{ending}-" in pathlib.Path(path).name:
            return name
    raise ValueError(f"source: cannot infer the format of {path!r}; pass format='jsonl', 'parquet' or 'array_record'")


def text_source(paths, *, format: str = "auto", text_field: str = "text", preflight: bool = False) -> grain.MapDataset:
    """A ``grain.MapDataset`` of document texts from local files.

    paths: a file, glob, directory or list of those. format: 'jsonl', 'parquet', 'array_record' or
    'auto' (from the first file's name). preflight: read every record now and report all bad ones
    at once (:func:`validate_records`) instead of each when it is first read."""
    if format == "auto":
        format = _format_of(resolve_paths(paths)[0])
    if format not in FORMATS:
        raise ValueError(f"source.format: expected one of {sorted(FORMATS)} or 'auto', got {format!r}")
    source = FORMATS[format](paths, text_field=text_field)
    if preflight:
        validate_records(source)
    return grain.MapDataset.source(source)


def write_array_record(path: str | pathlib.Path, texts: Iterable[str], *, text_field: str = "text") -> int:
    """Writes one ``{"text": ...}`` JSON record per text (group_size 1: fast random access).
    Returns the number of records. Writes to a temporary name and renames, so a crash leaves no
    half-written file under ``path``."""
    from array_record.python.array_record_module import ArrayRecordWriter

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    count = 0
    for text in texts:
        writer.write(json.dumps({text_field: text}, ensure_ascii=False).encode("utf-8"))
        count += 1
    writer.close()
    tmp.replace(path)
    return count


def write_jsonl(path: str | pathlib.Path, texts: Iterable[str], *, text_field: str = "text") -> int:
    """Writes one ``{"text": ...}`` JSON object per line. Returns the number of records."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for text in texts:
            handle.write(json.dumps({text_field: text}, ensure_ascii=False) + "\n")
            count += 1
    return count

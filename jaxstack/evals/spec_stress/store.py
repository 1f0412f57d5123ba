"""Append-only JSONL stores keyed by fields: what makes every stage of the pipeline resumable.

A stage writes one JSON object per finished unit of work (a scenario, an answer, a classification),
flushed line by line; a rerun reads the file, skips the keys already there and appends the rest. A
last line torn by a kill (no trailing newline, not JSON) is dropped with a warning naming the file and
cut off before appending, so the file stays one object per line. A torn line anywhere else, or a
duplicate key, is an error naming the file and line: it means something other than a kill.
"""

from __future__ import annotations

import json
import os
import pathlib
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


class StoreError(ValueError):
    """A store file that is not what this stage wrote (the message names the file and line)."""


class JsonlStore:
    """Rows of ``path`` keyed by the tuple of ``key_fields``."""

    def __init__(self, path: str | pathlib.Path, key_fields: Sequence[str]):
        self.path = pathlib.Path(path)
        self.key_fields = tuple(key_fields)
        if not self.key_fields:
            raise ValueError("key_fields: expected at least one field name")

    def key(self, row: Mapping[str, Any]) -> tuple:
        missing = [f for f in self.key_fields if f not in row]
        if missing:
            raise StoreError(f"{self.path}: row without key field {missing[0]!r}: {str(dict(row))[:200]}")
        return tuple(row[f] for f in self.key_fields)

    def rows(self) -> list[dict[str, Any]]:
        """Every complete row, in file order (a torn last line is dropped, with a warning)."""
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8")
        lines = text.split("\n")
        out, seen = [], set()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines) and not text.endswith("\n"):
                    warnings.warn(f"{self.path}:{number}: dropping a torn last line (an interrupted write)",
                                  stacklevel=2)
                    continue
                raise StoreError(f"{self.path}:{number}: not valid JSON") from None
            if not isinstance(row, dict):
                raise StoreError(f"{self.path}:{number}: expected a JSON object, got {type(row).__name__}")
            key = self.key(row)
            if key in seen:
                raise StoreError(f"{self.path}:{number}: duplicate key {dict(zip(self.key_fields, key))}")
            seen.add(key)
            out.append(row)
        return out

    def done(self) -> set[tuple]:
        return {self.key(row) for row in self.rows()}

    def _repair(self) -> None:
        """Cuts a torn last line off, so that appends start on a fresh line."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as handle:
                handle.truncate(cut)

    def append(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Appends rows (flushed and fsynced once per call); returns how many."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        count = 0
        with open(self.path, "a", encoding="utf-8") as handle:
            for row in rows:
                self.key(row)
                handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        return count


__all__ = ["JsonlStore", "StoreError"]

"""One reader for local JSON Lines files (one JSON object per line), with errors that name the file,
the line and, when given, the config field that named the file."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any


def jsonl_objects(path: str | pathlib.Path, field: str | None = None, *,
                  error: type[ValueError] = ValueError) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(line number, object)`` for each non-blank line of ``path`` (numbers from 1).

    Raises ``error`` (a ValueError subclass) for a missing file, a line that is not JSON or one that is
    not an object; the message starts with ``field: `` when a field is given, then ``path:line: ...``.
    """
    path = pathlib.Path(path)
    prefix = f"{field}: " if field else ""
    if not path.is_file():
        raise error(f"{prefix}{path}: no such file (expected a .jsonl file, one JSON object per line)")
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as bad:
                raise error(f"{prefix}{path}:{number}: not valid JSON ({bad.msg})") from None
            if not isinstance(record, dict):
                raise error(f"{prefix}{path}:{number}: expected a JSON object per line, got {type(record).__name__}")
            yield number, record

"""Streaming JSONL plumbing shared by converters, validation and exporters.

Every stage reads JSONL one line at a time and writes JSONL one line at a time, so files of any size
stream in constant memory. A row that cannot be processed is *not* written (the reference ADP
scripts print ``null`` instead; jaxstack drops the row so that every output line is a valid
record) and is reported on the error stream as::

    <source>:<line>: <stage>: <reason>

where ``line`` is the 1-based line number in the input and ``stage`` is one of ``invalid UTF-8``,
``invalid JSON``, ``raw schema``, ``conversion``, ``ADP schema``, ``API binding``, ``export``,
``SFT record`` or ``skipped`` (a row deliberately filtered out by a converter, e.g. an unsuccessful
SWE-smith trajectory). Processing continues with the next line. Blank lines are ignored. Outputs are
deterministic: the same input gives byte-identical output.

Lines may be ``bytes`` or ``str``. Open inputs with :func:`open_jsonl` (a file or ``-`` for stdin,
decoded with ``errors="surrogateescape"``) so that a line that is not UTF-8 reaches the stream and
is reported as ``invalid UTF-8`` with its line number, the same for a file and for stdin, instead
of a decoding error that stops the whole input.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar

from pydantic import BaseModel, ValidationError

from jaxstack.data.adp.api import ApiBindingError, ApiStubs, check_api_calls
from jaxstack.data.adp.schema import (
    Trajectory,
    format_validation_error,
    trajectory_model,
    upgrade,
)


class ConversionError(ValueError):
    """A raw row that does not have the shape a converter expects (the message says why)."""


class SkipRow(Exception):
    """Raised by a converter to drop a well-formed row on purpose (the message says why)."""


@dataclass(frozen=True)
class RowProblem:
    """One reported row: its 1-based input line, the stage that failed and the reason."""

    line: int
    stage: str
    reason: str

    def render(self, source: str) -> str:
        """The ``source:line: stage: reason`` form written to the error stream."""
        return f"{source}:{self.line}: {self.stage}: {self.reason}"


@dataclass
class StreamReport:
    """What a streaming stage did: rows read / written, and every problem with its line."""

    rows_read: int = 0
    rows_written: int = 0
    problems: list[RowProblem] = field(default_factory=list)

    @property
    def rows_failed(self) -> int:
        """Rows dropped because of an error (not counting deliberate skips)."""
        return sum(problem.stage != "skipped" for problem in self.problems)

    @property
    def rows_skipped(self) -> int:
        """Rows dropped on purpose by the converter."""
        return sum(problem.stage == "skipped" for problem in self.problems)

    def failure_histogram(self) -> dict[str, int]:
        """Problems counted by stage, sorted by stage name."""
        return dict(sorted(Counter(problem.stage for problem in self.problems).items()))

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary."""
        return {
            "rows_read": self.rows_read,
            "rows_written": self.rows_written,
            "rows_failed": self.rows_failed,
            "rows_skipped": self.rows_skipped,
            "success_rate": (self.rows_written / self.rows_read) if self.rows_read else None,
            "failures_by_stage": self.failure_histogram(),
        }


T = TypeVar("T")

# What errors="surrogateescape" makes of an undecodable byte b: the lone surrogate U+DC00 + b.
_UNDECODABLE = re.compile("[\udc80-\udcff]")


@contextlib.contextmanager
def open_jsonl(path: str) -> Iterator[TextIO]:
    """Text lines of the file ``path`` (or stdin for ``-``) with undecodable bytes kept as
    surrogate escapes, for the streams to report (``invalid UTF-8``) instead of failing."""
    if path != "-":
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            yield handle
        return
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # stdin replaced by a text stream (tests, notebooks): already decoded
        yield sys.stdin
        return
    wrapper = io.TextIOWrapper(buffer, encoding="utf-8", errors="surrogateescape")
    try:
        yield wrapper
    finally:
        wrapper.detach()  # leave sys.stdin's buffer open


def decode_line(line: str | bytes) -> tuple[str | None, str | None]:
    """(text, None), or (None, reason) when ``line`` is not UTF-8 (bytes, or text holding the
    surrogate escapes of :func:`open_jsonl`); the reason names the first bad byte."""
    if isinstance(line, bytes):
        try:
            return line.decode("utf-8"), None
        except UnicodeDecodeError as error:
            return None, f"byte 0x{line[error.start]:02x} at byte {error.start + 1} is not valid UTF-8"
    if not line.isascii() and (match := _UNDECODABLE.search(line)):
        byte = ord(match.group()) - 0xDC00
        return None, f"byte 0x{byte:02x} at column {match.start() + 1} is not valid UTF-8"
    return line, None


def iter_json_lines(lines: Iterable[str | bytes]) -> Iterator[tuple[int, Any, tuple[str, str] | None]]:
    """Yield ``(line_number, value, problem)`` for each non-blank line; ``problem`` is
    ``(stage, reason)`` (and ``value`` is ``None``) when the line is not UTF-8 (stage
    ``invalid UTF-8``) or not valid JSON (``invalid JSON``)."""
    for number, line in enumerate(lines, start=1):
        text, utf8_error = decode_line(line)
        if utf8_error is not None:
            yield number, None, ("invalid UTF-8", utf8_error)
            continue
        if not text.strip():
            continue
        try:
            yield number, json.loads(text), None
        except json.JSONDecodeError as error:
            yield number, None, ("invalid JSON", f"{error.msg} at column {error.colno}")


class _Reporter:
    def __init__(self, report: StreamReport, err: TextIO | None, source: str):
        self.report, self.err, self.source = report, err, source

    def __call__(self, line: int, stage: str, reason: str) -> None:
        problem = RowProblem(line, stage, " ".join(reason.split()))
        self.report.problems.append(problem)
        if self.err is not None:
            print(problem.render(self.source), file=self.err)


def _parsed_lines(lines: Iterable[str | bytes], report: StreamReport, problem: _Reporter) -> Iterator[tuple[int, Any]]:
    """``(line_number, value)`` of each line that decodes and parses; every non-blank line counts in
    ``report.rows_read`` and one that does not parse is reported at its stage and skipped."""
    for number, value, line_problem in iter_json_lines(lines):
        report.rows_read += 1
        if line_problem is not None:
            problem(number, *line_problem)
            continue
        yield number, value


def dump_line(record: BaseModel | dict[str, Any]) -> str:
    """One deterministic JSONL line (with the newline) for a model or a plain dict."""
    if isinstance(record, BaseModel):
        return record.model_dump_json() + "\n"
    return json.dumps(record, ensure_ascii=False) + "\n"


def convert_stream(
    lines: Iterable[str],
    *,
    raw_model: type[BaseModel],
    convert: Callable[[Any], Trajectory],
    stubs: ApiStubs | None,
    out: TextIO,
    err: TextIO | None = sys.stderr,
    source: str = "<stdin>",
    version: str = "1.0",
) -> StreamReport:
    """Raw JSONL -> ADP JSONL.

    Each line is parsed, validated against ``raw_model``, converted, re-validated as an ADP
    trajectory of ``version`` and its API calls are bound to ``stubs``; only then is it written.
    """
    report = StreamReport()
    problem = _Reporter(report, err, source)
    for number, value in _parsed_lines(lines, report, problem):
        try:
            raw = raw_model.model_validate(value)
        except ValidationError as error:
            problem(number, "raw schema", format_validation_error(error))
            continue
        try:
            trajectory = convert(raw)
        except SkipRow as reason:
            problem(number, "skipped", str(reason))
            continue
        except ValidationError as error:
            problem(number, "ADP schema", format_validation_error(error))
            continue
        except (ConversionError, ValueError, KeyError, IndexError) as error:
            problem(number, "conversion", f"{type(error).__name__}: {error}")
            continue
        try:
            check_api_calls(trajectory.content, stubs)
        except ApiBindingError as error:
            problem(number, "API binding", str(error))
            continue
        try:
            if trajectory_model(version) is Trajectory:
                checked = Trajectory.model_validate_json(trajectory.model_dump_json())
            else:
                checked = upgrade(trajectory, available_apis=stubs.names if stubs else None)
        except ValidationError as error:
            problem(number, "ADP schema", format_validation_error(error))
            continue
        out.write(dump_line(checked))
        report.rows_written += 1
    return report


def validate_stream(
    lines: Iterable[str],
    *,
    version: str = "1.0",
    stubs: ApiStubs | None = None,
    check_apis: bool = False,
    err: TextIO | None = sys.stderr,
    source: str = "<stdin>",
    out: TextIO | None = None,
) -> StreamReport:
    """Validate ADP JSONL as ``version``; with ``check_apis`` bind API calls to ``stubs``.

    Valid rows are echoed to ``out`` when it is given (so ``validate`` can act as a filter).
    """
    report = StreamReport()
    problem = _Reporter(report, err, source)
    model = trajectory_model(version)
    for number, value in _parsed_lines(lines, report, problem):
        try:
            trajectory = model.model_validate(value)
        except ValidationError as error:
            problem(number, "ADP schema", format_validation_error(error))
            continue
        if check_apis:
            try:
                check_api_calls(trajectory.content, stubs)
                if stubs is not None and getattr(trajectory, "available_apis", None):
                    unknown = sorted(set(trajectory.available_apis) - set(stubs.names))
                    if unknown:
                        raise ApiBindingError(
                            f"available_apis {unknown} are not stubs of dataset {stubs.dataset!r}"
                        )
            except ApiBindingError as error:
                problem(number, "API binding", str(error))
                continue
        if out is not None:
            out.write(dump_line(trajectory))
        report.rows_written += 1
    return report


def map_stream(
    lines: Iterable[str],
    *,
    function: Callable[[Trajectory], dict[str, Any]],
    out: TextIO,
    err: TextIO | None = sys.stderr,
    source: str = "<stdin>",
    version: str = "1.0",
) -> StreamReport:
    """ADP JSONL -> any JSONL: validate each row as ``version`` and write ``function(trajectory)``.

    Used by the exporters; a ``ValueError`` from ``function`` is reported at stage ``export``.
    """
    report = StreamReport()
    problem = _Reporter(report, err, source)
    model = trajectory_model(version)
    for number, value in _parsed_lines(lines, report, problem):
        try:
            trajectory = model.model_validate(value)
        except ValidationError as error:
            problem(number, "ADP schema", format_validation_error(error))
            continue
        try:
            record = function(trajectory)
        except ValueError as error:
            problem(number, "export", str(error))
            continue
        out.write(dump_line(record))
        report.rows_written += 1
    return report


def iter_records(
    lines: Iterable[str | bytes],
    *,
    parse: Callable[[Any], T],
    stage: str,
    report: StreamReport,
    err: TextIO | None = sys.stderr,
    source: str = "<stdin>",
) -> Iterator[T]:
    """Yield ``parse(value)`` for each JSON line, counting rows in ``report``.

    A line that is not UTF-8, not JSON, or that ``parse`` rejects with a ``ValueError`` (pydantic
    errors included) is reported at its stage (``stage`` for ``parse``) and skipped, so readers
    such as ``qc`` and ``stats`` go on past a bad line.
    """
    problem = _Reporter(report, err, source)
    for number, value in _parsed_lines(lines, report, problem):
        try:
            record = parse(value)
        except ValidationError as error:
            problem(number, stage, format_validation_error(error))
            continue
        except ValueError as error:
            problem(number, stage, str(error))
            continue
        report.rows_written += 1
        yield record

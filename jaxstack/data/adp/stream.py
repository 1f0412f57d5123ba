"""Streaming JSONL plumbing shared by converters, validation and exporters.

Every stage reads JSONL one line at a time and writes JSONL one line at a time, so files of any size
stream in constant memory. A row that cannot be processed is *not* written (the reference ADP
scripts print ``null`` instead; jaxstack drops the row so that every output line is a valid
record) and is reported on the error stream as::

    <source>:<line>: <stage>: <reason>

where ``line`` is the 1-based line number in the input and ``stage`` is one of ``invalid JSON``,
``raw schema``, ``conversion``, ``ADP schema``, ``API binding``, ``export`` or ``skipped`` (a row
deliberately filtered out by a converter, e.g. an unsuccessful SWE-smith trajectory). Processing
continues with the next line. Blank lines are ignored. Outputs are deterministic: the same input
gives byte-identical output.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

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


def iter_json_lines(lines: Iterable[str]) -> Iterator[tuple[int, Any, str | None]]:
    """Yield ``(line_number, value, error)`` for each non-blank line; ``error`` is set (and
    ``value`` is ``None``) when the line is not valid JSON."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line), None
        except json.JSONDecodeError as error:
            yield number, None, f"{error.msg} at column {error.colno}"


class _Reporter:
    def __init__(self, report: StreamReport, err: TextIO | None, source: str):
        self.report, self.err, self.source = report, err, source

    def __call__(self, line: int, stage: str, reason: str) -> None:
        problem = RowProblem(line, stage, " ".join(reason.split()))
        self.report.problems.append(problem)
        if self.err is not None:
            print(problem.render(self.source), file=self.err)


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
    for number, value, json_error in iter_json_lines(lines):
        report.rows_read += 1
        if json_error is not None:
            problem(number, "invalid JSON", json_error)
            continue
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
    for number, value, json_error in iter_json_lines(lines):
        report.rows_read += 1
        if json_error is not None:
            problem(number, "invalid JSON", json_error)
            continue
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
    for number, value, json_error in iter_json_lines(lines):
        report.rows_read += 1
        if json_error is not None:
            problem(number, "invalid JSON", json_error)
            continue
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

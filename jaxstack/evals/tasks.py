"""Multiple-choice task definitions: a prompt template, choice fields and a label field.

A new two- or four-way task is a few lines::

    MY_TASK = MultipleChoiceTask("my_task", "Question: {question}\\nAnswer:", ("option_a", "option_b"))
    items = MY_TASK.load("data/my_task/test.jsonl")
    metrics = evaluate_multiple_choice(model, tokenizer, items, target_delimiter=MY_TASK.target_delimiter)

Templates are Python ``str.format`` strings over the record's fields (lm-eval writes the same in
Jinja: ``"Question: {{goal}}\\nAnswer:"``). Records come from JSONL, JSON (a list of objects) or
Parquet files (Parquet needs ``pyarrow``).
"""

from __future__ import annotations

import json
import pathlib
import string
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from jaxstack.data.jsonl import jsonl_objects
from jaxstack.evals.multiple_choice import MultipleChoiceItem

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


class TaskDataError(ValueError):
    """Task data is missing or malformed (the message names the file, record and field)."""


def read_records(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """Records of one ``.jsonl`` / ``.json`` / ``.parquet`` file, as dicts, in file order."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise TaskDataError(f"{path}: no such file (expected a .jsonl, .json or .parquet file)")
    if path.suffix == ".jsonl":
        return [record for _, record in jsonl_objects(path, error=TaskDataError)]
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise TaskDataError(f"{path}: not valid JSON ({error.msg})") from error
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise TaskDataError(f"{path}: expected a JSON list of objects")
        return data
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as error:
            raise TaskDataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from error
        return pq.read_table(path).to_pylist()
    raise TaskDataError(f"{path}: unsupported file type {path.suffix!r}; expected one of {list(DATA_SUFFIXES)}")


def _template_fields(template: str) -> tuple[str, ...]:
    return tuple(name for _, name, _, _ in string.Formatter().parse(template) if name)


@dataclass(frozen=True)
class MultipleChoiceTask:
    """A log-likelihood multiple-choice task.

    name: task name. prompt_template: ``str.format`` template over record fields (the context).
    choice_fields: record fields holding the choices, in label order. label_field: the integer index
    of the correct choice. target_delimiter: put between context and each choice (lm-eval: " ").
    """

    name: str
    prompt_template: str
    choice_fields: tuple[str, ...]
    label_field: str = "label"
    target_delimiter: str = " "

    def __post_init__(self):
        if len(self.choice_fields) < 2:
            raise ValueError(f"{self.name}.choice_fields: expected at least 2 fields, got {self.choice_fields!r}")
        object.__setattr__(self, "choice_fields", tuple(self.choice_fields))

    @property
    def required_fields(self) -> tuple[str, ...]:
        return (*_template_fields(self.prompt_template), *self.choice_fields, self.label_field)

    def to_item(self, record: dict[str, Any], *, where: str = "record", meta: dict | None = None) -> MultipleChoiceItem:
        """One record -> MultipleChoiceItem. ``where`` names the record in error messages."""
        missing = [f for f in self.required_fields if f not in record]
        if missing:
            raise TaskDataError(f"{where}: missing field(s) {missing}; {self.name} needs {list(self.required_fields)}")
        for name in self.choice_fields:
            if not isinstance(record[name], str) or not record[name]:
                raise TaskDataError(f"{where}: field {name!r} must be a non-empty string, got {record[name]!r}")
        label = record[self.label_field]
        if isinstance(label, str) and label.strip().lstrip("-").isdigit():
            label = int(label)
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(self.choice_fields):
            raise TaskDataError(
                f"{where}: field {self.label_field!r} must be an integer in [0, {len(self.choice_fields)}), got {label!r}"
            )
        context = self.prompt_template.format(**record)
        return MultipleChoiceItem(context, tuple(record[f] for f in self.choice_fields), label, dict(meta or {}))

    def items(self, records: Iterable[dict[str, Any]], *, source: str = "records",
              meta: dict | None = None) -> list[MultipleChoiceItem]:
        return [
            self.to_item(record, where=f"{source}[{index}]", meta={**(meta or {}), "index": index})
            for index, record in enumerate(records)
        ]

    def load(self, path: str | pathlib.Path, *, meta: dict | None = None) -> list[MultipleChoiceItem]:
        """Items from a data file, or from every data file (sorted) in a directory."""
        path = pathlib.Path(path)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in DATA_SUFFIXES)
            if not files:
                raise TaskDataError(f"{path}: no {'/'.join(DATA_SUFFIXES)} files in this directory")
        elif path.exists():
            files = [path]
        else:
            raise TaskDataError(f"{path}: does not exist")
        items: list[MultipleChoiceItem] = []
        for file in files:
            items += self.items(read_records(file), source=str(file), meta=meta)
        return items


# lm-eval's lm_eval/tasks/piqa/piqa.yaml
PIQA = MultipleChoiceTask("piqa", "Question: {goal}\nAnswer:", ("sol1", "sol2"))
# lm-eval's lm_eval/tasks/global_piqa/{nonparallel,parallel}_cloze/_template
GLOBAL_PIQA_NONPARALLEL_CLOZE = MultipleChoiceTask("global_piqa_nonparallel_cloze", "{prompt}",
                                                   ("solution0", "solution1"))
GLOBAL_PIQA_PARALLEL_CLOZE = MultipleChoiceTask("global_piqa_parallel_cloze", "{prompt}",
                                                ("solution0", "solution1", "solution2", "solution3"))

TASKS: dict[str, MultipleChoiceTask] = {
    task.name: task for task in (PIQA, GLOBAL_PIQA_NONPARALLEL_CLOZE, GLOBAL_PIQA_PARALLEL_CLOZE)
}


def get_task(name: str) -> MultipleChoiceTask:
    if name not in TASKS:
        raise ValueError(f"task: unknown {name!r}; known tasks are {sorted(TASKS)}")
    return TASKS[name]


__all__ = [
    "GLOBAL_PIQA_NONPARALLEL_CLOZE",
    "GLOBAL_PIQA_PARALLEL_CLOZE",
    "PIQA",
    "TASKS",
    "MultipleChoiceTask",
    "TaskDataError",
    "get_task",
    "read_records",
]

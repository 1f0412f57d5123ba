"""The one JSON Lines reader: objects with their line numbers, blank lines skipped, and errors that name
the field, the file and the line."""

import pytest

from jaxstack.data.jsonl import jsonl_objects
from jaxstack.evals.tasks import TaskDataError


def test_objects_come_with_their_line_numbers_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"q": 1}\n\n  \n{"q": 2}\n', encoding="utf-8")
    assert list(jsonl_objects(path)) == [(1, {"q": 1}), (4, {"q": 2})]


@pytest.mark.parametrize("text, message", [
    ('{"q": 1}\n{oops\n', r"seed_file: .*a.jsonl:2: not valid JSON"),
    ('[1, 2]\n', r"seed_file: .*a.jsonl:1: expected a JSON object per line, got list"),
])
def test_bad_lines_are_named(tmp_path, text, message):
    path = tmp_path / "a.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        list(jsonl_objects(path, "seed_file"))


def test_a_missing_file_and_the_error_type(tmp_path):
    with pytest.raises(TaskDataError, match=r"^.*missing.jsonl: no such file"):
        list(jsonl_objects(tmp_path / "missing.jsonl", error=TaskDataError))

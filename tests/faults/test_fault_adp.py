"""ADP streams meet a line that is not UTF-8: every reading command (convert, validate, qc, stats,
mix) reports it as ``<source>:<line>: invalid UTF-8: ...``, skips it, processes the other rows,
counts it in the summary on stderr and exits 1; a file and stdin give the same result."""

from __future__ import annotations

import io
import json
import pathlib
import sys

import pytest

from jaxstack.data.adp import DATASETS
from jaxstack.data.adp.cli import main

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "adp"
BAD_LINE = b'{"id": "caf\xe9 in latin-1", "x": "\xff"}\n'  # 0xe9 at byte 12: Latin-1, not UTF-8
BAD_REASON = "invalid UTF-8: byte 0xe9 at column 12 is not valid UTF-8"


def _with_bad_second_line(text: str) -> bytes:
    first, *rest = text.encode("utf-8").splitlines(keepends=True)
    return first + BAD_LINE + b"".join(rest)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, bytes]:
    """Clean raw, ADP and SFT JSONL of the synatra fixture."""
    work = tmp_path_factory.mktemp("adp")
    raw = (FIXTURES / "synatra.raw.jsonl").read_text(encoding="utf-8")
    std = io.StringIO()
    DATASETS["synatra"].convert_lines(raw.splitlines(keepends=True), std, None, source="raw")
    (work / "std.jsonl").write_text(std.getvalue(), encoding="utf-8")
    assert main(["export", "--format", "openhands", "--dataset", "synatra", str(work / "std.jsonl"),
                 "-o", str(work / "sft.jsonl")]) == 0
    return {"raw": raw.encode("utf-8"), "std": std.getvalue().encode("utf-8"),
            "sft": (work / "sft.jsonl").read_bytes()}


def _run(argv: list[str], data: bytes, via: str, tmp_path, monkeypatch, capsys) -> tuple[int, str, str, str]:
    """Runs ``jaxstack adp`` with ``{input}`` in argv replaced by a file holding ``data`` or by ``-``
    (``data`` on stdin). Returns (exit status, stdout, stderr with the source name as SRC, source)."""
    if via == "file":
        source = str(tmp_path / "input.jsonl")
        pathlib.Path(source).write_bytes(data)
        argv = [a.replace("{input}", source) for a in argv]
    else:
        source = "<stdin>"
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
        argv = [a.replace("{input}", "-") for a in argv]
    capsys.readouterr()
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err.replace(source, "SRC"), source


def _summaries(err: str) -> list[dict]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


COMMANDS = {
    # command -> (argv with {input}, the clean input it reads)
    "convert": (["convert", "--dataset", "synatra", "{input}"], "raw"),
    "validate": (["validate", "--dataset", "synatra", "{input}", "-o", "-"], "std"),
    "qc": (["qc", "--harness", "openhands", "synatra={input}"], "sft"),
    "stats": (["stats", "synatra={input}"], "std"),
    "mix": (["mix", "synatra={input}", "--seed", "0", "--no-shuffle"], "sft"),
}


@pytest.mark.parametrize("via", ["file", "stdin"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_non_utf8_line_is_reported_and_skipped(inputs, tmp_path, monkeypatch, capsys, command, via):
    argv, which = COMMANDS[command]
    clean = _run(argv, inputs[which], via, tmp_path, monkeypatch, capsys)
    status, out, err, _ = _run(argv, _with_bad_second_line(inputs[which].decode()), via, tmp_path,
                               monkeypatch, capsys)

    assert f"SRC:2: {BAD_REASON}" in err.splitlines()
    assert status == 1  # a row failed
    assert out == clean[1]  # every other row processed exactly as without the bad line
    summaries = _summaries(err)
    assert summaries and summaries[-1]["command"] == command and summaries[-1]["rows_failed"] == 1
    if command != "mix":
        assert summaries[-1]["rows_read"] == _summaries(clean[2])[-1]["rows_read"] + 1


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_file_and_stdin_agree(inputs, tmp_path, monkeypatch, capsys, command):
    argv, which = COMMANDS[command]
    data = _with_bad_second_line(inputs[which].decode())
    by_file = _run(argv, data, "file", tmp_path, monkeypatch, capsys)[:3]
    by_stdin = _run(argv, data, "stdin", tmp_path, monkeypatch, capsys)[:3]
    assert by_file == by_stdin
    assert by_file[0] == 1 and f"SRC:2: {BAD_REASON}" in by_file[2]


@pytest.mark.parametrize("command", ["qc", "stats"])
def test_qc_and_stats_go_on_past_bad_json(inputs, tmp_path, monkeypatch, capsys, command):
    """qc and stats used to stop at the first bad line; now a bad row of any kind is skipped."""
    argv, which = COMMANDS[command]
    clean = _run(argv, inputs[which], "file", tmp_path, monkeypatch, capsys)
    first, *rest = inputs[which].splitlines(keepends=True)
    data = first + b"{oops\n" + b"[1, 2]\n" + b"".join(rest)
    status, out, err, _ = _run(argv, data, "file", tmp_path, monkeypatch, capsys)
    assert status == 1 and out == clean[1]
    assert "SRC:2: invalid JSON: " in err
    assert f"SRC:3: {'SFT record' if command == 'qc' else 'ADP schema'}: " in err
    assert _summaries(err)[-1]["rows_failed"] == 2

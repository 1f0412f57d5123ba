"""Loader faults: a UTF-8 BOM opens a JSONL or text file (accepted); a file that is not UTF-8 is named
with its line; the pre-flight pass (``text_source(..., preflight=True)``, on by default in ``jaxstack
train``) reports every bad record at once, before the first step; ``jaxstack bench`` runs only the
project's own benchmarks."""

from __future__ import annotations

import codecs
import os
import pathlib

import pytest

from jaxstack.cli import BENCHMARKS, main
from jaxstack.data import lm, sources


def test_bom_jsonl_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(codecs.BOM_UTF8 + b'{"text": "first"}\n{"text": "second"}\n')
    assert list(sources.text_source(path)) == ["first", "second"]
    only_bom = tmp_path / "only.jsonl"
    only_bom.write_bytes(codecs.BOM_UTF8 + b"\n" + b'{"text": "x"}\n')
    assert list(sources.text_source(only_bom)) == ["x"]


def test_bom_and_undecodable_text_files(tmp_path):
    (tmp_path / "a.txt").write_bytes(codecs.BOM_UTF8 + b"hello")
    assert lm.text_documents(tmp_path)[0] == ["hello"]
    (tmp_path / "b.txt").write_bytes(b"line one\nline \xff two\n")
    with pytest.raises(sources.CorruptRecordError, match=r"b\.txt: line 2: not valid UTF-8"):
        lm.text_documents(tmp_path)


def test_preflight_reports_every_bad_record_with_file_and_line(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\n{"text": 3}\n\n{"text": "ok"}\n')
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n{"body": "x"}\n')
    dataset = sources.text_source(tmp_path, format="jsonl")  # lazy: built, fails only when read
    with pytest.raises(sources.CorruptRecordError) as error:
        sources.text_source(tmp_path, format="jsonl", preflight=True)
    message = str(error.value)
    assert "3 bad records" in message
    for where in ("a.jsonl: record 1 (line 2)", "b.jsonl: record 4 (line 2)", "b.jsonl: record 5 (line 3)"):
        assert where in message
    assert len(dataset) == 6


def test_jaxstack_train_preflight_names_every_undecodable_file_before_step_1(tmp_path, capsys):
    text_dir = tmp_path / "text"
    text_dir.mkdir()
    for name in ("good.txt", "bad1.txt", "bad2.txt"):
        (text_dir / name).write_text("some words here\n" * 50)
    (text_dir / "bad1.txt").write_bytes(b"ok\n\xc3(\n")
    (text_dir / "bad2.txt").write_bytes(b"\n\n\xff")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "llama-test", "--out", str(out), "--text-dir", str(text_dir), "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "2 bad records" in err
    assert f"{text_dir / 'bad1.txt'}: line 2: not valid UTF-8" in err
    assert f"{text_dir / 'bad2.txt'}: line 3: not valid UTF-8" in err
    assert not (out / "metrics.jsonl").exists()


def test_bench_runs_only_the_projects_benchmarks(tmp_path, capsys):
    root = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"
    assert sorted(BENCHMARKS) == sorted(p.stem for p in root.glob("*.py"))
    script = tmp_path / "not_a_benchmark.py"
    marker = tmp_path / "ran"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    for name in (os.path.relpath(tmp_path / "not_a_benchmark", root), "nope"):
        with pytest.raises(SystemExit) as exit_info:
            main(["bench", name])
        assert exit_info.value.code == 2
        assert f"bench: unknown benchmark {name!r}; expected one of {list(BENCHMARKS)}" in capsys.readouterr().err
    assert not marker.exists()

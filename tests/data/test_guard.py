"""The eval-data guard in every training-data loader: a Global PIQA file fed to each source type
(JSONL, Parquet, ArrayRecord) and to each path loader of the mixture (those three and TFDS), and the
text-directory pipeline, is refused with an EvalDataError that names the file and the reason.

(No test name here says "piqa": pytest puts the test name into ``tmp_path``, which the name rule
would then refuse for every file.)
"""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest

from jaxstack.data import lm, sources
from jaxstack.data.guard import EvalDataError
from jaxstack.data.mixture import SourceSpec, load_documents

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "global_piqa"
FILE = FIXTURE / "eng_latn" / "test.jsonl"
FORMATS = ("jsonl", "parquet", "array_record")
REFUSED = r"refused as training data because .*evaluation only"


def _records() -> list[dict]:
    return [json.loads(line) for line in FILE.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write(path: pathlib.Path, fmt: str, records: list[dict]) -> pathlib.Path:
    """The records in ``fmt``, fields unchanged (only ``prompt`` is text a loader could read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    elif fmt == "parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        from array_record.python.array_record_module import ArrayRecordWriter

        writer = ArrayRecordWriter(str(path), "group_size:1")
        for record in records:
            writer.write(json.dumps(record, ensure_ascii=False).encode("utf-8"))
        writer.close()
    return path


def _copies(tmp_path: pathlib.Path, fmt: str) -> dict[str, pathlib.Path]:
    """The fixture under a Global PIQA name (name rule) and under a neutral name (content rule)."""
    return {"name": _write(tmp_path / "global_piqa" / f"test.{fmt}", fmt, _records()),
            "content": _write(tmp_path / "corpus" / f"part-0.{fmt}", fmt, _records())}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_source_type_refuses_eval_files(tmp_path, fmt):
    for rule, path in _copies(tmp_path, fmt).items():
        reason = "names Global PIQA" if rule == "name" else "has the Global PIQA fields"
        # text_field="prompt": without the guard these files would load as documents
        for paths in (path, path.parent, str(path.parent / f"*.{fmt}"), [path]):
            with pytest.raises(EvalDataError, match=f"{REFUSED}") as error:
                sources.text_source(paths, format=fmt, text_field="prompt")
            assert str(path) in str(error.value) and reason in str(error.value), (rule, paths)
        with pytest.raises(EvalDataError, match=reason):
            sources.FORMATS[fmt](path, text_field="prompt")


def test_the_fixture_itself_is_refused():
    with pytest.raises(EvalDataError, match="names Global PIQA"):
        sources.text_source(FILE, text_field="prompt")
    with pytest.raises(EvalDataError, match="names Global PIQA"):
        sources.JsonlSource(str(FIXTURE / "*" / "test.jsonl"), text_field="prompt")


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_mixture_path_loader_refuses_eval_files(tmp_path, fmt):
    clean = _write(tmp_path / "clean" / f"docs.{fmt}", fmt, [{"prompt": "ordinary text"}])
    for path in _copies(tmp_path, fmt).values():
        spec = SourceSpec("web", format=fmt, path=str(path), validation_path=str(clean), text_field="prompt")
        with pytest.raises(EvalDataError, match=REFUSED):
            load_documents(spec, "train")
        assert list(load_documents(spec, "validation")) == ["ordinary text"]
        held_out = SourceSpec("web", format=fmt, path=str(clean), validation_path=str(path), text_field="prompt")
        with pytest.raises(EvalDataError, match=REFUSED):
            load_documents(held_out, "validation")


def test_the_tfds_path_loader_refuses_eval_data(tmp_path):
    # a prepared dataset named after Global PIQA, and a data_dir inside the fixture: refused before TFDS is opened
    with pytest.raises(EvalDataError, match="names Global PIQA"):
        load_documents(SourceSpec("web", format="tfds", path=str(tmp_path), tfds_name="global_piqa"))
    with pytest.raises(EvalDataError, match="names Global PIQA"):
        load_documents(SourceSpec("web", format="tfds", path=str(FIXTURE)))
    # a prepared dataset fenced off by hand
    root = tmp_path / "local_text_corpus" / "web"
    root.mkdir(parents=True)
    (root / ".eval_only").touch()
    with pytest.raises(EvalDataError, match="marks it evaluation-only"):
        load_documents(SourceSpec("web", format="tfds", path=str(tmp_path)))


def test_the_text_directory_pipeline_refuses_eval_data(tmp_path):
    with pytest.raises(EvalDataError, match=REFUSED):
        lm.text_documents(FIXTURE)
    copy = tmp_path / "texts"
    shutil.copytree(FIXTURE, copy)  # renamed: the .jsonl files' fields give it away
    (copy / "a.txt").write_text("some text")
    with pytest.raises(EvalDataError, match="has the Global PIQA fields"):
        lm.text_data(copy, vocab_size=300, seq_len=8, batch_size=1, seed=0)

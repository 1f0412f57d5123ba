"""Local sources (JSONL, Parquet, ArrayRecord, TFDS) and every error path: missing file, corrupt
record (named with its index), empty source."""

import json
import subprocess
import sys

import grain
import pytest

from jaxstack.data import sources
from jaxstack.data.sources import CorruptRecordError, EmptySourceError

TEXTS = ["first document", "zweites Dokument ü", "третий", "fourth\nwith a newline", "5"]


def _write_parquet(path, values):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": values}), path)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "array_record"])
def test_sources_read_every_document_in_order(tmp_path, fmt):
    path = tmp_path / f"docs.{fmt}"
    if fmt == "jsonl":
        sources.write_jsonl(path, TEXTS)
    elif fmt == "parquet":
        _write_parquet(path, TEXTS)
    else:
        sources.write_array_record(path, TEXTS)
    dataset = sources.text_source(path)  # format inferred from the name
    assert isinstance(dataset, grain.MapDataset)
    assert len(dataset) == len(TEXTS)
    assert [dataset[i] for i in range(len(dataset))] == TEXTS
    # shardable before anything else: disjoint halves
    assert list(dataset[0::2]) + list(dataset[1::2]) == TEXTS[0::2] + TEXTS[1::2]


def test_glob_and_directory_concatenate_files_in_sorted_order(tmp_path):
    sources.write_jsonl(tmp_path / "b.jsonl", TEXTS[2:])
    sources.write_jsonl(tmp_path / "a.jsonl", TEXTS[:2])
    assert list(sources.text_source(str(tmp_path / "*.jsonl"))) == TEXTS
    assert list(sources.text_source(tmp_path, format="jsonl")) == TEXTS


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "array_record"])
def test_missing_file_names_the_path(tmp_path, fmt):
    missing = tmp_path / f"nope.{fmt}"
    with pytest.raises(FileNotFoundError, match="nope"):
        sources.text_source(missing, format=fmt)
    with pytest.raises(FileNotFoundError, match="matches no file"):
        sources.text_source(str(tmp_path / "*.jsonl"), format=fmt)


def test_empty_sources_are_rejected(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(EmptySourceError, match="e.jsonl"):
        sources.text_source(tmp_path / "e.jsonl")
    sources.write_array_record(tmp_path / "e.array_record", [])
    with pytest.raises(EmptySourceError, match="e.array_record"):
        sources.text_source(tmp_path / "e.array_record")
    _write_parquet(tmp_path / "e.parquet", [])
    with pytest.raises(EmptySourceError, match="e.parquet"):
        sources.text_source(tmp_path / "e.parquet")


def test_corrupt_jsonl_record_is_named_with_its_index(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n\n" + '{"text": "broken\n' + json.dumps({"body": "x"}) + "\n")
    dataset = sources.text_source(path)
    assert dataset[0] == "ok"
    with pytest.raises(CorruptRecordError, match=r"record 1 \(line 3\).*not valid UTF-8 JSON"):
        dataset[1]
    with pytest.raises(CorruptRecordError, match=r"record 2 \(line 4\).*'text'.*fields: \['body'\]"):
        dataset[2]


def test_corrupt_array_record_record_is_named_with_its_index(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter

    path = tmp_path / "c.array_record"
    writer = ArrayRecordWriter(str(path), "group_size:1")
    writer.write(json.dumps({"text": "ok"}).encode())
    writer.write(b"\xff\xfe not utf-8")
    writer.write(json.dumps({"text": 3}).encode())
    writer.close()
    dataset = sources.text_source(path)
    assert dataset[0] == "ok"
    with pytest.raises(CorruptRecordError, match="record 1: not valid UTF-8 JSON"):
        dataset[1]
    with pytest.raises(CorruptRecordError, match="record 2: field 'text' must be a string, got int"):
        dataset[2]


def test_damaged_array_record_and_parquet_files_are_reported(tmp_path):
    sources.write_array_record(tmp_path / "d.array_record", TEXTS)
    data = (tmp_path / "d.array_record").read_bytes()
    (tmp_path / "d.array_record").write_bytes(data[: len(data) // 2])  # truncated: footer gone
    with pytest.raises(CorruptRecordError, match="d.array_record"):
        sources.text_source(tmp_path / "d.array_record")
    (tmp_path / "d.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(CorruptRecordError, match="d.parquet"):
        sources.text_source(tmp_path / "d.parquet")


def test_parquet_null_record_is_named_with_its_index(tmp_path):
    _write_parquet(tmp_path / "n.parquet", ["a", None, "c"])
    dataset = sources.text_source(tmp_path / "n.parquet")
    assert dataset[2] == "c"
    with pytest.raises(CorruptRecordError, match=r"record 1 \(row 1\).*got NoneType"):
        dataset[1]


def test_unknown_format_is_rejected(tmp_path):
    (tmp_path / "x.csv").write_text("a\n")
    with pytest.raises(ValueError, match="cannot infer the format"):
        sources.text_source(tmp_path / "x.csv")
    with pytest.raises(ValueError, match="source.format"):
        sources.text_source(tmp_path / "x.csv", format="csv")


_TFDS_SCRIPT = r"""
import json, sys
from jaxstack.data import sources, tfds_builders
root = sys.argv[1]
sources.write_jsonl(root + "/train.jsonl", [f"doc {i}" for i in range(7)])
sources.write_jsonl(root + "/valid.jsonl", ["held out"])
tfds_builders.prepare_local_corpus("toy", {"train": root + "/train.jsonl", "validation": root + "/valid.jsonl"},
                                   data_dir=root + "/tfds")
train = tfds_builders.tfds_text_source("toy", "train", data_dir=root + "/tfds")
valid = tfds_builders.tfds_text_source("toy", "validation", data_dir=root + "/tfds")
print(json.dumps({"train": sorted(train), "valid": list(valid), "tensorflow": "tensorflow" in sys.modules}))
"""


def test_tfds_builder_prepares_array_record_and_reads_without_tensorflow(tmp_path):
    # a fresh process, so "tensorflow not imported" is a property of this code path alone
    out = subprocess.run([sys.executable, "-c", _TFDS_SCRIPT, str(tmp_path)], check=False, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"train": sorted(f"doc {i}" for i in range(7)), "valid": ["held out"], "tensorflow": False}
    shards = list((tmp_path / "tfds" / "local_text_corpus" / "toy" / "1.0.0").glob("*.array_record-*"))
    assert len(shards) == 2


def test_tfds_errors(tmp_path):
    from jaxstack.data import tfds_builders

    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        tfds_builders.prepare_local_corpus("bad", {"train": str(tmp_path / "missing.jsonl")}, data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="prepare it"):
        tfds_builders.tfds_text_source("never_prepared", "train", data_dir=tmp_path)

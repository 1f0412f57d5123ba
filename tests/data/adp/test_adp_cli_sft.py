"""The ``adp`` command line end to end on files, and the model-free SFT example builder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from adp_helpers import raw_path

from jaxstack.data.adp import to_chat
from jaxstack.data.adp.cli import main
from jaxstack.data.adp.sft import pack_examples, tokenize_example
from jaxstack.data.chat import CHATML, render_segments


def test_cli_pipeline(tmp_path, capsys):
    std = tmp_path / "std.jsonl"
    assert main(["convert", "--dataset", "swe_gym", str(raw_path("swe_gym")), "-o", str(std)]) == 0
    err = capsys.readouterr().err
    assert "swe_gym.raw.jsonl:2: skipped: resolved is false" in err
    again = tmp_path / "again.jsonl"
    assert main(["adp", "convert", "--dataset", "swe_gym", str(raw_path("swe_gym")), "-o", str(again)]) == 0
    assert std.read_bytes() == again.read_bytes()

    assert main(["validate", "--dataset", "swe_gym", "--schema-version", "1.2", str(std)]) == 0
    sft = tmp_path / "sft.jsonl"
    assert main(["export", "--format", "openhands", "--dataset", "swe_gym", str(std), "-o", str(sft)]) == 0
    capsys.readouterr()
    assert main(["qc", "--harness", "openhands", f"swe_gym={sft}"]) == 0
    assert json.loads(capsys.readouterr().out)["swe_gym"]["passed"] is True

    assert main(["stats", f"swe_gym={std}"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["swe_gym"]["avg_rounds"] == 4.0 and stats["overall"]["datasets"] == 1

    mixed = tmp_path / "mixed.jsonl"
    assert main(["mix", f"swe_gym={sft}", "--seed", "1", "-o", str(mixed)]) == 0
    assert len(mixed.read_text().splitlines()) == 3  # ceil(3 * 1)

    schema = tmp_path / "schema.json"
    assert main(["schema", "--schema-version", "1.2", "-o", str(schema)]) == 0
    assert json.loads(schema.read_text())["title"] == "ADP Trajectory v1.2"


def test_cli_reports_bad_rows_and_exit_status(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    lines = raw_path("synatra").read_text().splitlines()
    bad.write_text(lines[0] + "\n{oops\n" + lines[1] + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["convert", "--dataset", "synatra", str(bad), "-o", str(out)]) == 1
    assert f"{bad}:2: invalid JSON: " in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 2


def test_cli_unknown_dataset_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "--dataset", "nope", "-"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def test_segments_and_loss_mask(converted):
    record = to_chat(converted["codeactinstruct"][0])
    segments = render_segments(record["messages"])
    trainable = "".join(s.text for s in segments if s.trainable)
    assistant = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
    assert trainable == "".join(text + CHATML.end for text in assistant)
    example = tokenize_example(record, _bytes)
    text = bytes(example.input_ids.tolist()).decode("utf-8")
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_end|>\n")
    masked = bytes(example.input_ids[example.loss_mask].tolist()).decode("utf-8")
    assert masked == trainable
    assert example.input_ids.dtype == np.int32 and example.loss_mask.dtype == bool


def test_render_segments_rejects_unknown_roles():
    with pytest.raises(ValueError, match=r"messages\[0\] must be"):
        render_segments([{"role": "robot", "content": "x"}])


def test_pack_examples(converted):
    examples = [tokenize_example(to_chat(t), _bytes) for t in converted["synatra"]]
    lengths = [len(e) for e in examples]
    seq_len = max(lengths) + 10
    packed = pack_examples(examples, seq_len)
    rows = packed["tokens"].shape[0]
    assert packed["tokens"].shape == (rows, seq_len) and rows <= len(examples)
    assert int((packed["segment_ids"] > 0).sum()) == sum(lengths)
    assert int(packed["loss_mask"].sum()) == sum(int(e.loss_mask.sum()) for e in examples)
    first = packed["segment_ids"][0] == 1
    assert packed["positions"][0][first].tolist() == list(range(lengths[0]))
    truncated = pack_examples(examples, 16)
    assert truncated["tokens"].shape[1] == 16


def test_experiment_data_preset(tmp_path):
    import dataclasses

    from experiments.adp import PRESETS, Config, run

    assert isinstance(PRESETS["tiny"], Config) and PRESETS["tiny"].train
    run_dir = run(dataclasses.replace(PRESETS["data"], out_dir=str(tmp_path)))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert json.loads((run_dir / "config.json").read_text())["train"] is False
    assert summary["chat_action_parse_rate"] == 1.0
    assert summary["conversion"]["swe_gym"]["rows_skipped"] == 1
    assert summary["quality"]["openhands"]["swe_gym"]["passed"] is True
    assert summary["mixture"]["swe_gym"] == {"n": 1, "weight": 3.0, "sampled": 3}
    assert (run_dir / "std" / "synatra.jsonl").exists() and (run_dir / "stats.md").exists()
    again = run(dataclasses.replace(PRESETS["data"], out_dir=str(tmp_path)))
    assert again != run_dir and len(list((tmp_path / "adp").iterdir())) == 2  # same-second runs: distinct directories

"""Resume faults: a torn last line of ``metrics.jsonl`` is truncated with a warning naming the file;
a resume whose run-defining config differs from the run's ``config.json`` (here ``--train.steps``)
is refused with the changed fields listed, or, with ``--allow-config-change``, accepted and recorded
in ``config_changes.jsonl``. (Exact resume after a torn metrics line: test_fault_checkpoint.py.)"""

from __future__ import annotations

import json
import logging

import pytest

from jaxstack.cli import main
from jaxstack.runs import RunRecord


def test_torn_metrics_line_is_truncated_with_a_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    record = RunRecord.open(tmp_path)
    with caplog.at_level(logging.WARNING, logger="jaxstack.runs"):
        record.truncate_metrics(2)
    assert f"{path}: truncated its torn last line 3" in caplog.text
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
    caplog.clear()
    path.write_text(path.read_text() + '{"step": 3, "lo')
    with caplog.at_level(logging.WARNING, logger="jaxstack.runs"):
        assert [r["step"] for r in record.read_metrics()] == [1, 2]
    assert f"{path}: skipped its torn last line 3" in caplog.text


ARGS = ["train", "--model", "llama-test", "--model.vocab_size=512", "--train.batch_size=8", "--train.seq_len=16",
        "--train.log_every=1", "--train.eval_every=1000", "--train.checkpoint_every=2", "--no-progress"]


def test_changed_run_defining_config_on_resume_is_refused_or_recorded(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*ARGS, "--out", str(run), "--train.steps=4", "--train.stop_after=2"]) == 0
    config = (run / "config.json").read_text()

    with pytest.raises(SystemExit) as exit_info:
        main([*ARGS, "--out", str(run), "--train.steps=6", "--optimizer.learning_rate=1e-2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "run-defining fields: optimizer.learning_rate: 0.003 -> 0.01; train.steps: 4 -> 6" in err
    assert "--allow-config-change" in err
    assert (run / "config.json").read_text() == config  # not overwritten
    assert not (run / "config_changes.jsonl").exists()

    # a field that only observes the run (log_every) or ends the process (stop_after) may change freely
    assert main([*ARGS, "--out", str(run), "--train.steps=4", "--train.stop_after=3", "--train.log_every=3"]) == 0
    assert not (run / "config_changes.jsonl").exists()

    assert main([*ARGS, "--out", str(run), "--train.steps=6", "--allow-config-change"]) == 0
    changes = [json.loads(line) for line in (run / "config_changes.jsonl").read_text().splitlines()]
    assert [c["changes"] for c in changes] == [{"train.steps": {"old": 4, "new": 6}}]
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 6
    assert json.loads((run / "summary.json").read_text())["steps_done"] == 6

"""The spec-stress experiment: the pre-registered verdict, and a shortened tiny run's record."""

import dataclasses
import json

import pytest

import experiments.spec_stress as spec_stress


def test_verdict_applies_the_preregistered_thresholds():
    assert spec_stress.verdict({"precision": 0.8, "recall": 0.9})["result"] == "supported"
    assert spec_stress.verdict({"precision": 0.8, "recall": 0.2})["result"] == "partially"
    assert spec_stress.verdict({"precision": float("nan"), "recall": 0.0})["result"] == "not supported"
    assert spec_stress.verdict({"precision": 0.7, "recall": 0.7})["criterion"] == spec_stress.CRITERION
    assert set(spec_stress.PRESETS) == {"tiny", "paper"}


@pytest.mark.slow
def test_shortened_tiny_run_leaves_a_complete_record(tmp_path):
    config = dataclasses.replace(
        spec_stress.PRESETS["tiny"], panel_seeds=(0, 1, 2), steered=((0, "safety", 1.0),), examples_per_model=400,
        panel_train=spec_stress.TrainSettings(steps=10), judge_train=spec_stress.TrainSettings(steps=10),
        out_dir=str(tmp_path), run_name="smoke")
    run_dir = spec_stress.run(config)
    for name in ("config.json", "metrics.jsonl", "summary.json", "panel.jsonl", "scenarios.jsonl", "d_histogram.png",
                 "flag_rate_by_bin.png", "outliers_per_model.png", "d_by_label.png"):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["members"] == ["panel-0", "panel-1", "panel-2", "panel-0+safety"]
    assert summary["scenarios"] == 9 * 2 * 2 * 3
    assert set(summary["detection"]) >= {"full_panel_judge", "trained_only_judge"}
    assert summary["verdict"]["criterion"] == spec_stress.CRITERION
    assert summary["paper_figure2_flag_rate_by_bin"]["[2.5,3]"] == 0.097
    assert summary["outliers"]["min_others"] == 3  # ceil(9 * 3 / 11)
    panel = [json.loads(line) for line in (run_dir / "panel.jsonl").read_text().splitlines()]
    assert len(panel) == 4 * summary["scenarios"]
    assert "steering" in next(r for r in panel if r["model"] == "panel-0+safety")["settings"]

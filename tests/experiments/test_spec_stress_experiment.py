"""The spec-stress experiment: the pre-registered verdict, and a shortened tiny run's record."""

import dataclasses
import json

import pytest

import experiments.spec_stress as spec_stress
from tests.inference.conftest import random_model, tokenizer  # noqa: F401 (fixtures of the paper-path test)


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
    assert summary["compliance"]["group"] == ["panel-0", "panel-1", "panel-2"]
    # contradictory pairs are "ambiguous" under the toy spec whatever the answer: always flagged
    assert summary["compliance"]["frequent_noncompliance_by_label"]["contradictory"] == 1.0
    again = spec_stress.rescore(run_dir)  # recomputed from scenarios.jsonl alone (NaN rates: compare as JSON)
    assert json.dumps(again, sort_keys=True) == json.dumps(summary["compliance"], sort_keys=True)


@pytest.mark.slow
def test_paper_path_on_two_random_served_models_and_a_scripted_judge(tmp_path, monkeypatch, random_model, tokenizer):
    """The paper preset's code path end to end at toy size: the released-layout fixture as the all_models
    split, two random models behind one server, a scripted judge (valid JSON, one malformed reply)."""
    import re
    import shutil

    from flax import nnx

    from jaxstack.evals.spec_stress import classify
    from jaxstack.inference.server import ModelServer, ServedModel
    from jaxstack.models import LlamaForCausalLM
    from tests.evals.spec_stress.test_dataset import FIXTURE

    (tmp_path / "data" / "data").mkdir(parents=True)
    shutil.copy(FIXTURE, tmp_path / "data" / "data" / "all_models-00000-of-00001.parquet")
    calls = {"rubric": 0, "classify": 0}

    def scripted(prompt):
        if "full spectrum of answering strategies" in prompt:
            calls["rubric"] += 1
            v1, v2 = re.search(r"trades off two values, (.+?) and (.+?)\. Here", prompt).groups()
            spectrum = {label: f"strategy {i}" for i, label in enumerate(classify.POSITION_LABELS)}
            return json.dumps({"value_pair": [v1, v2], "value1_bias_spectrum": spectrum,
                               "value2_bias_spectrum": spectrum})
        calls["classify"] += 1
        if calls["classify"] == 2:
            return "I think the first response is neutral."  # malformed: recorded, the run goes on
        count = int(re.search(r"Here are (\d+) responses", prompt).group(1))
        return json.dumps({"classifications": [{"response": i + 1, "reasoning": "-", "value1_position": 3 * i,
                                                "value2_position": 3, "confidence": 0.9} for i in range(count)]})

    monkeypatch.setattr(classify, "client_judge", lambda client, **params: scripted)
    other = LlamaForCausalLM(random_model.config, rngs=nnx.Rngs(5))
    server = ModelServer([ServedModel("alpha", random_model, tokenizer, slots=4),
                          ServedModel("beta", other, tokenizer, slots=4)], port=0).start()
    try:
        config = dataclasses.replace(spec_stress.PRESETS["paper"], server_url=server.url, panel_models=("alpha", "beta"),
                                     judge_url="http://127.0.0.1:9", dataset_path=str(tmp_path / "data"),
                                     num_scenarios=5, max_tokens=6, out_dir=str(tmp_path / "runs"), run_name="paper")
        run_dir = spec_stress.run(config)
    finally:
        server.shutdown()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["scenarios"] == 5 and summary["classification"]["errors"] == 1
    assert summary["classified"] == 4 and summary["d_mean"] == pytest.approx(1.5)  # positions 0 and 3 on value 1
    assert summary["versus_paper_panel"]["scenarios"] == 4
    errors = (run_dir / "classifications.jsonl.errors.jsonl").read_text()
    assert "all_models:" in errors and "not valid JSON" in errors

"""Keeps benchmarks/data_pipeline.py from rotting: a dry run end to end (timings are not checked)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "data_pipeline.py"


@pytest.mark.slow  # a benchmark's smoke run (~16-30 s)
def test_dry_run_reports_every_shape(tmp_path):
    spec = importlib.util.spec_from_file_location("data_pipeline_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "data_pipeline.json"
    record = bench.main(["--quick", "--batches", "5", "--warmup", "0", "--train-steps", "1", "--out", str(out)])
    assert out.exists()
    assert set(record["shapes"]) == {"tiny", "smollm2-135m seq 512 x batch 2", "smollm2-135m seq 2048 x batch 8"}
    tiny = record["shapes"]["tiny"]
    assert tiny["pipeline"]["tokens_per_s"] > 0 and tiny["trainer"]["tokens_per_s"] > 0
    assert tiny["ratio_pipeline_over_trainer"] == tiny["pipeline"]["tokens_per_s"] / tiny["trainer"]["tokens_per_s"]
    assert record["min_ratio"] == min(s["ratio_pipeline_over_trainer"] for s in record["shapes"].values()
                                      if "ratio_pipeline_over_trainer" in s)

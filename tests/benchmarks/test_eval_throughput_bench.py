"""Keeps benchmarks/eval_throughput.py from rotting: a one-pass run end to end (jaxstack half in the
default suite, both halves as an oracle test). Timings are not checked, only the record's shape."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "eval_throughput.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("eval_throughput_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_jaxstack_half(tmp_path):
    out = tmp_path / "eval.json"
    record = _load_script().main(["--only", "jax", "--copies", "1", "--passes", "1", "--out", str(out)])
    assert out.exists() and record["workload"]["items"] == 19 and record["workload"]["requests"] == 38
    assert record["jaxstack"]["items_per_s"] > 0 and len(record["jaxstack"]["passes_s"]) == 1
    assert "lm_eval_hf" not in record


@pytest.mark.oracle
@pytest.mark.slow
def test_both_halves_agree(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    record = _load_script().main(["--copies", "1", "--passes", "1", "--no-write"])
    assert record["max_abs_loglikelihood_diff"] < 1e-4  # float32 on both sides, see tests/evals/test_oracle.py
    for metric in ("acc", "acc_norm", "acc_bytes"):
        assert record["jaxstack"][metric] == record["lm_eval_hf"][metric]
    assert record["ratio_jaxstack_over_lm_eval"] > 0

"""Keeps benchmarks/train_step.py from rotting: its quick mode runs end to end (jaxstack half in the
default suite, the torch half as an oracle test). Timings are not checked, only the record's shape."""

import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_step.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("train_step_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_half(half: dict, tokens_per_step: int, steps: int) -> None:
    assert len(half["steps"]) == steps
    assert all(sample["wall_s"] > 0 for sample in half["steps"])
    assert half["tokens_per_s"] == pytest.approx(tokens_per_step / half["median_step_s"])
    assert math.isfinite(half["final_loss"]) and half["final_loss"] > 0


@pytest.mark.slow  # a benchmark's smoke run (~12-28 s)
def test_quick_jaxstack_half(tmp_path):
    bench = _load_script()
    out = tmp_path / "train_step.json"
    record = bench.main(["--quick", "--only", "jax", "--seq", "32", "--warmup", "0", "--steps", "2", "--out", str(out)])
    assert out.exists()
    assert record["model"].startswith("smollm2-135m") and record["shape"]["num_layers"] == 4
    assert record["shape"]["vocab_size"] == 49152 and record["tokens_per_step"] == 32
    _check_half(record["jaxstack"], 32, 2)
    assert record["jaxstack"]["num_params"] == 49152 * 576 + 4 * (576 * 64 * 24 + 3 * 576 * 1536 + 2 * 576) + 576
    assert "torch" not in record and "ratio_jaxstack_over_torch" not in record


@pytest.mark.oracle
@pytest.mark.slow
def test_quick_both_halves(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    bench = _load_script()
    record = bench.main(["--quick", "--seq", "32", "--steps", "1", "--warmup", "0", "--out", str(tmp_path / "r.json")])
    _check_half(record["jaxstack"], 32, 1)
    _check_half(record["torch"], 32, 1)
    # Same model on both sides.
    assert record["torch"]["num_params"] == record["jaxstack"]["num_params"]
    assert record["ratio_jaxstack_over_torch"] > 0

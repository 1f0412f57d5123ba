"""Keeps benchmarks/decode.py from rotting: its helpers, the quick mode's jaxstack half (default
suite), the quick Kimi Linear part (slow) and both halves of the quick Llama part (oracle). Timings are
not checked, only the record's shape."""

import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "decode.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("decode_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_half(half: dict, batch: int, new_tokens: int, calls: int) -> None:
    assert len(half["calls"]) == calls and all(c["wall_s"] > 0 for c in half["calls"])
    assert half["generated_per_row"] == [new_tokens] * batch
    assert half["tokens_per_s"] == pytest.approx(batch * new_tokens / half["median_call_s"])
    assert half["ms_per_step"] == pytest.approx(1000 * half["median_call_s"] / new_tokens)
    assert len(half["tokens_row0_first_16"]) == min(16, new_tokens)
    if Path("/proc/stat").exists():  # the driver's record of other processes' CPU use per call
        assert all(0.0 <= c["other_cpu_share"] for c in half["calls"]) and "max_other_cpu_share" in half


def test_fit_and_agreement_helpers():
    bench = _load_script()
    contexts = [1024, 2048, 4096, 8192]
    linear = bench._fit(contexts, [2.0 + 0.5 * c / 1024 for c in contexts])
    assert linear["slope_ms_per_1k_tokens"] == pytest.approx(0.5)
    assert linear["intercept_ms"] == pytest.approx(2.0) and linear["r2"] == pytest.approx(1.0)
    assert [s["ms_per_1k"] for s in linear["segment_slopes"]] == pytest.approx([0.5, 0.5, 0.5])
    flat = bench._fit(contexts, [3.0] * 4)
    assert flat["slope_ms_per_1k_tokens"] == pytest.approx(0.0) and flat["ratio_last_over_first"] == 1.0
    quadratic = bench._fit(contexts, [(c / 1024) ** 2 for c in contexts])
    slopes = [s["ms_per_1k"] for s in quadratic["segment_slopes"]]
    assert slopes == sorted(slopes) and slopes[-1] > 2 * slopes[0]  # super-linear: rising segment slopes

    agreement = bench._agreement([[1, 2, 3, 4], [5, 6, 7, 8]], [[1, 2, 9, 4], [5, 6, 7, 8]])
    assert agreement["token_match_fraction"] == pytest.approx(7 / 8)
    assert agreement["common_prefix_per_row"] == [2, 4]
    assert agreement["mean_common_prefix_fraction"] == pytest.approx(3 / 4)
    assert agreement["rows_first_8_agree"] == pytest.approx(1 / 2)


@pytest.mark.slow  # one jaxstack worker at a tiny shape, ~12 s on 2 cores (the fast suite has no margin left)
def test_quick_jaxstack_half(tmp_path):
    bench = _load_script()
    out = tmp_path / "decode.json"
    record = bench.main(["--quick", "--part", "llama", "--only", "jax", "--batches", "2", "--out", str(out)])
    assert out.exists() and record["checkpoint_source"] == "jaxstack"
    assert record["llama_workload"]["shape"]["num_layers"] == 2 and record["llama_workload"]["new_tokens"] == 8
    entry = record["llama"]["2"]
    _check_half(entry["jaxstack"], 2, 8, 1)
    assert "torch" not in entry and "ratio_jaxstack_over_torch" not in entry and "kimi" not in record


@pytest.mark.slow  # tiny Kimi Linear: one prefill + six small compiles (~40-60 s)
def test_quick_kimi_part():
    record = _load_script().main(["--quick", "--part", "kimi", "--no-write"])
    kimi = record["kimi"]
    assert kimi["contexts"] == [32, 64] and kimi["num_mla_layers"] == 1 and kimi["num_kda_layers"] == 3
    for kind in ("model", "kda", "mla"):
        series = kimi["series"][kind]
        assert set(series["ms_per_step"]) == {"32", "64"}
        assert all(v > 0 for v in series["ms_per_step"].values())
        assert math.isfinite(series["fit"]["slope_ms_per_1k_tokens"])
    assert "llama" not in record


@pytest.mark.oracle
@pytest.mark.slow
def test_quick_both_halves_agree(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    record = _load_script().main(["--quick", "--part", "llama", "--batches", "2", "--out", str(tmp_path / "r.json")])
    assert record["checkpoint_source"] == "transformers"
    entry = record["llama"]["2"]
    _check_half(entry["jaxstack"], 2, 8, 1)
    _check_half(entry["torch"], 2, 8, 1)
    assert entry["jaxstack"]["num_params"] == entry["torch"]["num_params"]  # the same checkpoint
    # float32 on both sides from one checkpoint: greedy tokens agree on the tiny model
    assert entry["agreement"]["token_match_fraction"] == 1.0
    assert entry["ratio_jaxstack_over_torch"] > 0

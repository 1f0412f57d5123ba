"""The mixture experiment runs end to end (shortened) and leaves its record."""

import dataclasses
import json

import pytest

import experiments.smollm2_mixture as exp
from jaxstack.data import embedded


def test_mixture_experiment_leaves_a_complete_record(tmp_path):
    pytest.importorskip("jaxstack.evals")
    preset = exp.PRESETS["tiny"]
    config = dataclasses.replace(
        preset,
        model=preset.model.replace(num_layers=1, vocab_size=512, hidden_size=32, intermediate_size=64),
        train=dataclasses.replace(preset.train, batch_size=8, seq_len=32, log_every=2, eval_every=6, eval_batches=1),
        optimizer=dataclasses.replace(preset.optimizer, warmup_steps=2),
        corpus=embedded.CorpusConfig(code_chars=60_000, literature_chars=10_000, math_documents=400,
                                     math_validation_documents=60),
        total_tokens=12 * 8 * 32, tokenizer_chars_per_source=20_000, task_items=8, show_progress=False,
        out_dir=str(tmp_path), run_name="smoke",
    )
    run_dir = exp.run(config)
    for name in ("summary.json", "config.json", "per_source_loss.png", "token_shares.png", "lr.png", "tokenizer.json",
                 "A/metrics.jsonl", "B/metrics.jsonl", "C/metrics.jsonl", "C/hf/model.safetensors"):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["task"]) == {"A", "B/C stable (before decay)", "B", "C"}
    assert all(0.0 <= t["acc"] <= 1.0 and t["n"] == 8 for t in summary["task"].values())
    assert set(summary["task_last_digit"]) == set(summary["task"])
    assert summary["shared_stable_phase_identical"] is True
    assert summary["stage_steps"]["B"] == {"stable": [0, 8], "decay": [8, 12]}
    # the decay phase of B draws math_hi, C's draws math_lo, at the target shares (whole rows of 33 tokens)
    assert set(summary["shares"]["B"]["decay"]["realised"]) == {"web", "code", "math_hi"}
    assert set(summary["shares"]["C"]["decay"]["realised"]) == {"web", "code", "math_lo"}
    assert summary["shares"]["B"]["stable"]["max_abs_error"] < 0.07  # 64 rows: 1/64 granularity
    metrics = [json.loads(line) for line in (run_dir / "C" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics][-1] == 12 and "eval_loss/math_lo" in metrics[-1]

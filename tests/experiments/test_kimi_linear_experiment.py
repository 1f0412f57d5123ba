"""The Kimi Linear experiment: MQAR data is right, schedules and parameter matching are right, and a
shrunken run leaves a complete record (the full tiny preset is marked slow)."""

import dataclasses
import json
import time

import numpy as np
import pytest

import experiments.kimi_linear as kl
from jaxstack.models.configs import get_kimi_config


def test_mqar_answers_are_the_values_paired_with_the_queried_keys():
    config = kl.MQARConfig(num_pairs=6, num_queries=4, num_keys=10, num_values=7)
    ex = kl.mqar_examples(config, 200, seed=3)
    n, m = config.num_pairs, config.num_queries
    tokens, mask = ex["tokens"], ex["loss_mask"]
    assert tokens.shape == mask.shape == (200, config.seq_len + 1) == (200, 2 * (n + m) + 1)
    assert (tokens[:, 0] == 0).all()
    assert tokens.max() < config.vocab_size
    keys, values = tokens[:, 1:2 * n + 1:2], tokens[:, 2:2 * n + 2:2]
    assert ((keys >= 1) & (keys <= config.num_keys)).all()
    assert ((values > config.num_keys) & (values < config.vocab_size)).all()
    for row in range(len(tokens)):
        assert len(set(keys[row])) == n  # distinct keys: every query has one answer
        pairs = dict(zip(keys[row].tolist(), values[row].tolist()))
        queries = tokens[row, 2 * n + 1::2]
        answers = tokens[row, 2 * n + 2::2]
        assert len(queries) == len(answers) == m and len(set(queries)) == m
        assert [pairs[q] for q in queries.tolist()] == answers.tolist()
        # the loss mask selects exactly the answers (aligned with tokens, as make_batch expects)
        assert np.flatnonzero(mask[row]).tolist() == list(range(2 * n + 2, 2 * (n + m) + 1, 2))
    np.testing.assert_array_equal(ex["keys"], keys)
    np.testing.assert_array_equal(ex["answers"], tokens[:, 2 * n + 2::2])
    # deterministic from the seed, different across seeds
    np.testing.assert_array_equal(kl.mqar_examples(config, 200, seed=3)["tokens"], tokens)
    assert not np.array_equal(kl.mqar_examples(config, 200, seed=4)["tokens"], tokens)


def test_mqar_config_rejects_impossible_tasks():
    with pytest.raises(ValueError, match="num_keys"):
        kl.MQARConfig(num_pairs=8, num_keys=4)
    with pytest.raises(ValueError, match="num_queries"):
        kl.MQARConfig(num_pairs=4, num_queries=5)


def test_schedules():
    mla, kda = "full_attention", "linear_attention"
    assert kl.schedule_types("3:1", 8) == (kda, kda, kda, mla) * 2
    assert kl.schedule_types("1:1", 4) == (kda, mla) * 2
    assert kl.schedule_types("7:1", 8) == (kda,) * 7 + (mla,)
    assert kl.schedule_types("0:1", 3) == (mla,) * 3
    assert kl.schedule_types("1:0", 3) == (kda,) * 3
    with pytest.raises(ValueError, match="at least 8 layers"):
        kl.schedule_types("7:1", 4)
    with pytest.raises(ValueError, match="KDA:MLA ratio"):
        kl.schedule_types("three", 4)
    assert kl.schedule_name("3:1") == "kda3-mla1"


def test_matched_parameters():
    base = get_kimi_config("kimi-linear-tiny")
    matched = kl.match_mla_params(base)
    counts = kl.mixer_params(matched)
    assert abs(counts["mla"] - counts["kda"]) < 0.01 * counts["kda"], counts
    totals = [matched.with_schedule(list(kl.schedule_types(r, 4))).num_params()["total"] for r in ("3:1", "0:1", "1:0")]
    assert max(totals) - min(totals) < 0.002 * max(totals), totals


def test_cache_table_has_both_presets():
    report = kl.cache_report(("kimi-linear-48b-a3b", "kimi-linear-tiny"), (4096, 1048576))
    table = kl.cache_table(report)
    assert "| kimi-linear-48b-a3b | 20 + 7 |" in table and "| kimi-linear-tiny | 3 + 1 |" in table
    r48 = report["kimi-linear-48b-a3b"]["hybrid_vs_all_mla"]
    assert r48["per_token"]["all_mla"] == 27 * 576 * 2 and r48["per_token"]["hybrid"] == 7 * 576 * 2
    assert 0.70 < r48["contexts"][1048576]["reduction"] < 0.75
    assert report["kimi-linear-tiny"]["all_kda"]["per_token"]["hybrid"] == 0


def _check_record(run_dir, config):
    for name in ("config.json", "summary.json", "cache_bytes.md", "loss_curves.png", "mqar_accuracy.png",
                 "cache_bytes.png", "decode_tokens_per_s.png"):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("label", "device", "matched_params", "schedules", "mqar_task", "cache_bytes", "cache_table_markdown",
                "paper", "wall_time_s"):
        assert key in summary, key
    assert summary["paper"]["ablation_validation_ppl"]["3:1"] == 5.65 and "arXiv 2510.26692" in summary["paper"]["source"]
    assert set(summary["schedules"]) == set(config.schedules)
    for ratio, arm in summary["schedules"].items():
        name = kl.schedule_name(ratio)
        for part in ("lm", "mqar"):
            for file in ("config.json", "metrics.jsonl", "summary.json", "loss.png"):
                assert (run_dir / part / name / file).exists(), (part, name, file)
        assert 0.0 <= arm["mqar"]["accuracy"] <= 1.0 and arm["mqar"]["answers"] > 0
        assert np.isfinite(arm["lm"]["held_out_loss"]) and np.isfinite(arm["lm"]["final_train_loss"])
        assert arm["kda_layers"] + arm["mla_layers"] == config.model.num_layers
        assert arm["params"]["total"] > 0
        assert sorted(int(n) for n in arm["decode_cpu_toy"]) == sorted(config.decode_contexts)
        assert all(r["tokens_per_s"] > 0 for r in arm["decode_cpu_toy"].values())
    assert "kimi-linear-48b-a3b" in (run_dir / "cache_bytes.md").read_text()
    return summary


@pytest.mark.slow  # ~50 s on 2 loaded cores; keeps `make test` inside its budget
def test_shrunken_run_leaves_a_complete_record(tmp_path):
    # 8 simulated devices under pytest: batch sizes divisible by 8.
    preset = kl.PRESETS["tiny"]
    config = dataclasses.replace(
        preset,
        model=preset.model.replace(num_layers=2, kda_layers=(1, 2), full_attn_layers=(), hidden_size=32,
                                   intermediate_size=64, first_k_dense_replace=1, moe_intermediate_size=16),
        schedules=("1:1",),  # one KDA and one MLA layer: both mixers in one arm
        train=dataclasses.replace(preset.train, steps=2, batch_size=8, seq_len=32, log_every=1, eval_every=2,
                                  eval_batches=1),
        mqar=kl.MQARConfig(num_pairs=2, num_queries=2, num_keys=4, num_values=4, train_examples=64,
                           eval_examples=16, steps=2, batch_size=8, warmup_steps=1),
        decode_contexts=(16,),
        decode_steps=2,
        decode_repeats=1,
        show_progress=False,
        out_dir=str(tmp_path),
        run_name="smoke",
    )
    run_dir = kl.run(config)
    summary = _check_record(run_dir, config)
    arm = summary["schedules"]["1:1"]
    assert arm["layer_types"] == ["linear_attention", "full_attention"]
    assert arm["lm"]["tokens_seen"] == 2 * 8 * 32
    assert summary["mqar_task"]["chance"] == 0.25


@pytest.mark.slow
def test_tiny_preset_runs_in_twenty_minutes(tmp_path):
    config = dataclasses.replace(kl.PRESETS["tiny"], out_dir=str(tmp_path), run_name="tiny", show_progress=False)
    start = time.perf_counter()
    run_dir = kl.run(config)
    assert time.perf_counter() - start < 20 * 60
    summary = _check_record(run_dir, config)
    assert set(summary["schedules"]) == {"3:1", "0:1", "1:0"}

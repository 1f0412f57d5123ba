"""Oracle trajectories, the three renderings, SFT export, and the two experiments."""

import dataclasses
import importlib.util
import json
import math
import pathlib
import sys

import pytest

from jaxstack.agents import oracle
from jaxstack.agents.fold import parse_response
from jaxstack.agents.simweb import SimWeb, WorldConfig
from jaxstack.agents.tokens import simweb_bpe_counter

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"experiments.{name}", ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def setup():
    world = SimWeb(WorldConfig(seed=1))
    bpe = simweb_bpe_counter(world, vocab_size=2000)
    trajs = [oracle.oracle_trajectory(world, q, seed=0, target_steps=60) for q in world.questions(6, seed=1)]
    runs = [oracle.run_oracle_agentfold(t, world.tool_specs(), count=bpe.count, keep_contexts=True) for t in trajs]
    return world, bpe, trajs, runs


def test_oracle_runs_answer_with_full_retention_and_round_trip(setup):
    world, bpe, trajs, runs = setup
    for traj, run in zip(trajs, runs):
        assert run.status == "answered" and run.answer == traj.question.answer
        assert len(traj.actions) >= 60 and len(run.turns) == traj.n_turns
        assert all(oracle.needed_fact_presence(traj, run))
        assert any(a.closes == "reject" for a in traj.actions)
        for t, rec in enumerate(run.turns):
            assert parse_response(rec.response, t) == run.responses[t]
        drops = sum(b.prompt_tokens < a.prompt_tokens for a, b in zip(run.turns, run.turns[1:]))
        assert drops >= 1
        assert not run.violations
    assert {t.question.kind for t in trajs} == {"bridge", "comparison", "constraint"}


def test_renderings_share_actions_and_segments_are_exact(setup):
    world, bpe, trajs, runs = setup
    traj, run = trajs[0], runs[0]
    tools = world.tool_specs()
    react = oracle.react_accounting(traj, tools, bpe.count)
    for t in (0, 5, 30):
        segs = oracle.react_segments(traj, tools, t)
        assert react[t]["prompt_tokens"] == sum(bpe.count(s) for s in segs) == bpe.count("".join(segs))
        assert run.turns[t].prompt_tokens == bpe.count(run.contexts[t].render())
    assert react[40]["prompt_tokens"] > 5 * run.turns[40].prompt_tokens
    rows, ret = oracle.summary_accounting(traj, tools, bpe.count, p=0.0)
    assert all(r["present"] for r in ret)
    rows, ret = oracle.summary_accounting(traj, tools, bpe.count, p=1.0)
    assert not any(r["present"] for r in ret if r["horizon"] > 0)
    with pytest.raises(ValueError, match="p must be"):
        oracle.summary_accounting(traj, tools, bpe.count, p=1.5)


def test_summary_retention_follows_one_minus_p_to_the_h(setup):
    world, bpe, trajs, _ = setup
    p, ret = 0.05, []
    for seed in range(15):
        for traj in trajs:
            ret += oracle.summary_accounting(traj, world.tool_specs(), len, p, seed=seed)[1]
    measured = sum(r["present"] for r in ret) / len(ret)
    probs = [(1 - p) ** r["horizon"] for r in ret]
    expected = sum(probs) / len(probs)
    se = math.sqrt(sum(q * (1 - q) for q in probs)) / len(probs)
    assert abs(measured - expected) <= 1.96 * se + 1e-9, (measured, expected, se)


def test_sft_examples_one_per_step_with_response_only_mask(setup, tmp_path):
    world, bpe, trajs, runs = setup
    exs = oracle.sft_examples(trajs[0], runs[0])
    assert len(exs) == trajs[0].n_turns
    path = oracle.write_sharegpt_jsonl(exs, tmp_path / "sft.jsonl")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[3]["conversations"][0]["from"] == "human" and lines[3]["conversations"][1]["value"] == exs[3].response
    ids, mask = oracle.sft_token_mask(exs[3], bpe)
    n_resp = bpe.count(exs[3].response) + 1  # + <|im_end|>
    assert sum(mask) == n_resp and mask[-n_resp:] == [1] * n_resp and len(ids) == len(mask)
    bad = dataclasses.replace(runs[0], answer="wrong")
    with pytest.raises(ValueError, match="answer"):
        oracle.sft_examples(trajs[0], bad)


def test_gap_experiment_small(tmp_path):
    gexp = _load("gap")
    cfg = dataclasses.replace(gexp.PRESETS["tiny"], n_questions=10, fractions=(0.0, 0.5, 1.0), real_questions=1,
                              out_dir=str(tmp_path))
    out = gexp.run(cfg)
    s = json.loads((out / "summary.json").read_text())
    assert all(v for v in s["acceptance"].values())
    red = [r["turn_reduction_gap_vs_react"] for r in s["sweep"]]
    assert red[0] == 0.0 and red[0] < red[1] < red[2]
    assert (out / "gap_sweep.png").stat().st_size > 0 and (out / "config.json").exists()
    assert "not the paper's numbers" in s["label"]
    with pytest.raises(ValueError, match="fractions"):
        gexp.Config(fractions=(2.0,))


def test_agentfold_experiment_small(tmp_path):
    aexp = _load("agentfold")
    cfg = dataclasses.replace(aexp.PRESETS["tiny"], n_trajectories=12, long_fraction=0.34, turns_long=(110, 140),
                              sft_trajectories=1, out_dir=str(tmp_path))
    out = aexp.run(cfg)
    s = json.loads((out / "summary.json").read_text())
    assert s["ratio_fold_react_100"] <= 0.2
    assert s["growth_50_100"]["agentfold"] <= 1.3 and s["growth_50_100"]["react"] >= 1.8
    assert s["retention"]["agentfold"] == 1.0 and s["fold_invariant_violations"] == 0
    for png in ("context_vs_turn.png", "blocks_vs_turn.png", "retention_vs_horizon.png", "prefill_tokens.png"):
        assert (out / png).stat().st_size > 0
    assert (out / "metrics.jsonl").read_text().count("\n") == s["max_turns"]
    with pytest.raises(ValueError, match="n_trajectories"):
        aexp.Config(n_trajectories=1)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["agentfold", "gap"])
def test_tiny_presets_meet_acceptance(name, tmp_path):
    mod = _load(name)
    out = mod.run(dataclasses.replace(mod.PRESETS["tiny"], out_dir=str(tmp_path)))
    s = json.loads((out / "summary.json").read_text())
    assert all(s["acceptance"].values()), s["acceptance"]

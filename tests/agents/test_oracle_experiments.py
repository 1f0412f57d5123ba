"""Oracle trajectories, the three renderings, SFT export, and the two experiments."""

import dataclasses
import importlib.util
import json
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
        probes = oracle.probe_retention(traj, lambda u, r=run: r.contexts[u].render(), oracle.ContextReader())
        assert probes and all(p["correct"] for p in probes)
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
    reader = oracle.ContextReader()
    rows, ctx = oracle.summary_accounting(traj, tools, bpe.count, p=0.0)
    assert len(rows) == traj.n_turns
    assert all(p["correct"] for p in oracle.probe_retention(traj, ctx.__getitem__, reader))
    window = oracle.react_window(traj, tools, 40, bpe.count, 10**9)
    assert window == "".join(oracle.react_segments(traj, tools, 40))
    small = oracle.react_window(traj, tools, 40, bpe.count, 2000)
    assert bpe.count(small) <= 2000 and small.startswith(oracle.react_segments(traj, tools, 40)[0])
    with pytest.raises(ValueError, match="p must be"):
        oracle.summary_accounting(traj, tools, bpe.count, p=1.5)


def _retention(probes, min_age=2):
    kept = [p["correct"] for p in probes if p["age"] >= min_age]
    assert len(kept) >= 10
    return sum(kept) / len(kept)


def test_reader_reads_only_the_context():
    text = "Ana Bel was born in the year 1950. Ana Bel was born in Lotown. Ana Bel was born in Kaport."
    assert oracle.read_fact(text, "Ana Bel", "born_in") == "Kaport"  # the last statement wins
    assert oracle.read_fact(text, "Ana Bel", "birth_year") == "1950"
    assert oracle.read_fact(text, "Na Bel", "born_in") is None
    probe = [{"role": "user", "content": "nothing here\n\n### Probe\nWhere was Ana Bel born?"}]
    assert oracle.ContextReader().complete(probe).text == "<answer>unknown</answer>"


def test_lossy_policies_fail_the_probes(setup):
    """Can fail: folds that drop (or corrupt) every fact, or a summary that drops everything, leave
    retention near zero; the oracle's folds keep it at 1; noisy folds beat a summary with the same loss."""
    world, bpe, trajs, runs = setup
    tools, reader = world.tool_specs(), oracle.ContextReader()
    measured = {}
    for name, make in [("oracle", lambda t: None),
                       ("drop_all", lambda t: oracle.NoisyOracleFoldPolicy(t, oracle.FactNoise(1.0, key=t.question.qid))),
                       ("corrupt_all", lambda t: oracle.NoisyOracleFoldPolicy(
                           t, oracle.FactNoise(0.0, 1.0, world=world, key=t.question.qid))),
                       ("noisy", lambda t: oracle.NoisyOracleFoldPolicy(t, oracle.FactNoise(0.2, key=t.question.qid)))]:
        probes = []
        for traj in trajs:
            run = oracle.run_oracle_agentfold(traj, tools, count=len, keep_contexts=True, policy=make(traj))
            assert run.status == "answered" and not run.violations
            probes += oracle.probe_retention(traj, lambda u, r=run: r.contexts[u].render(), reader)
        measured[name] = _retention(probes)
    summary = {}
    for p in (1.0, 0.2):
        probes = []
        for traj in trajs:
            probes += oracle.probe_retention(traj, oracle.summary_accounting(traj, tools, len, p)[1].__getitem__, reader)
        summary[p] = _retention(probes)
    assert measured["oracle"] == 1.0
    assert measured["drop_all"] < 0.2 and measured["corrupt_all"] < 0.2 and summary[1.0] < 0.2
    assert summary[0.2] < measured["noisy"] < 1.0, (summary, measured)


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
    cfg = dataclasses.replace(gexp.PRESETS["tiny"], n_questions=8, fractions=(0.0, 0.5, 1.0), error_scales=(0.0, 1.0),
                              real_questions=1, out_dir=str(tmp_path))
    out = gexp.run(cfg)
    s = json.loads((out / "summary.json").read_text())
    red = [r["turn_reduction"]["gap"]["mean"] for r in s["sweep"]]
    assert red[0] < red[1] < red[2] and all(r["turn_reduction"]["gap"]["n"] == 3 for r in s["sweep"])
    assert s["verdict"]["result"] in ("reproduced", "partially", "not reproduced")
    assert s["verdict"]["criterion"] == gexp.CRITERION and s["model_time"]["simulated"]
    assert s["error_scales"][0]["regimes"]["gap"]["em"]["mean"] == 1.0  # no errors, no wrong answers
    for png in ("gap_sweep.png", "gap_errors.png"):
        assert (out / png).stat().st_size > 0
    assert "not the paper's numbers" in s["label"] and (out / "config.json").exists()
    with pytest.raises(ValueError, match="fractions"):
        gexp.Config(fractions=(2.0,))
    with pytest.raises(ValueError, match="verdict_fraction"):
        gexp.Config(fractions=(0.0, 1.0))


def test_gap_verdict_fails_on_sequential_plans(tmp_path):
    """Can fail: pure chains and an error-free planner give exactly zero turn reduction -> not reproduced."""
    gexp = _load("gap")
    from jaxstack.agents.gap import PolicyErrors

    cfg = dataclasses.replace(gexp.PRESETS["tiny"], n_questions=6, fractions=(0.0,), verdict_fraction=0.0,
                              errors=PolicyErrors(), error_scales=(1.0,), real_questions=0, out_dir=str(tmp_path))
    s = json.loads((gexp.run(cfg) / "summary.json").read_text())
    assert s["verdict"]["turn_reduction"]["mean"] == 0.0
    assert s["verdict"]["result"] == "not reproduced" and not s["verdict"]["checks"]["turns_reduced"]


def test_agentfold_experiment_small(tmp_path):
    aexp = _load("agentfold")
    cfg = dataclasses.replace(aexp.PRESETS["tiny"], n_trajectories=6, long_fraction=0.5, turns_short=(20, 60),
                              turns_long=(110, 140), sft_trajectories=1, out_dir=str(tmp_path))
    out = aexp.run(cfg)
    s = json.loads((out / "summary.json").read_text())
    assert s["ratio_fold_react_100"]["mean"] <= 0.2 and s["ratio_fold_react_100"]["n"] == 3
    assert s["growth_50_100"]["agentfold"]["mean"] <= 1.3 and s["growth_50_100"]["react"]["mean"] >= 1.8
    assert all(s["acceptance"].values()), s["acceptance"]
    ret = s["retention"]["per_arm"]
    assert ret["agentfold"]["mean"] == 1.0 and ret["summary"]["mean"] < 1.0
    assert s["verdict"]["result"] in ("reproduced", "partially", "not reproduced")
    for png in ("context_vs_turn.png", "blocks_vs_turn.png", "retention_vs_horizon.png", "prefill_tokens.png"):
        assert (out / png).stat().st_size > 0
    assert (out / "metrics.jsonl").read_text().count("\n") == s["max_turns"]
    with pytest.raises(ValueError, match="n_trajectories"):
        aexp.Config(n_trajectories=1)
    with pytest.raises(ValueError, match="p_drop"):
        aexp.Config(p_drop=0.7, p_corrupt=0.5)


def test_agentfold_verdict_fails_when_the_folds_lose_everything():
    """Can fail: folds as lossy as the summary (or worse) do not retain more -> at most partially."""
    aexp = _load("agentfold")
    seeds = [dict(ratio_100=0.03, growth={"agentfold": 1.05, "react": 1.99},
                  retention={"agentfold_noisy": 0.05 + 0.01 * i, "summary": 0.5}) for i in range(3)]
    v = aexp.verdict(seeds)
    assert v["result"] == "partially" and not v["checks"]["noisy_fold_retains_more_than_summary"]
    seeds = [dict(ratio_100=0.9, growth={"agentfold": 2.0, "react": 2.0},
                  retention={"agentfold_noisy": 0.05, "summary": 0.5}) for _ in range(3)]
    assert aexp.verdict(seeds)["result"] == "not reproduced"
    assert aexp.verdict(seeds[:1])["result"] == "not assessed"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["agentfold", "gap"])
def test_tiny_presets_run_and_give_a_verdict(name, tmp_path):
    mod = _load(name)
    out = mod.run(dataclasses.replace(mod.PRESETS["tiny"], out_dir=str(tmp_path)))
    s = json.loads((out / "summary.json").read_text())
    assert s["verdict"]["result"] in ("reproduced", "partially", "not reproduced")
    assert all(s.get("acceptance", {}).values()), s.get("acceptance")

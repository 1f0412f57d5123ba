"""GAP planning study on SimWeb (a toy, simulated web; not the paper's benchmark).

Question mixes with a controlled fraction of parallelisable (comparison: fan-out then join) versus
sequential (k-hop bridge) questions are answered by a planning policy that can be wrong
(:class:`~jaxstack.agents.gap.NoisyPlanner`: the question's gold decomposition, written with a
stated error model - missed dependencies, wrong tool arguments, premature answers) in four regimes,
all through the same agent loop (:func:`~jaxstack.agents.gap.run_episode`), the same executor and
the same error draws:

* ``react``: one tool call per LLM call;
* ``gap``: GAP's runtime, a ``<plan>`` first, then one LLM call per batch of tasks whose (believed)
  dependencies are resolved, the batch run in parallel;
* ``graph_level`` / ``graph_eager``: the whole plan in one LLM call, executed level by level (the
  paper's Algorithm 1) or eagerly (LLMCompiler), re-planning what failed.

Measured per question: the LLM calls the loop makes, tool calls (retries included), tool makespan
(SimWeb's seeded latency model on a virtual clock; a subset also in real asyncio time), response
tokens, and EM of the answer the policy gives. Model time is *simulated* (stated per-call and
per-token costs, :class:`~jaxstack.agents.gap.ModelTime`) and labelled so. Every headline number is
a mean over seeds with its standard error; the verdict's criterion (:data:`CRITERION`) is fixed in
this file before any number is computed. Model accuracies are not reproduced.

Entry point: ``run(config) -> pathlib.Path`` writing ``runs/gap/<timestamp>/``.
"""

from __future__ import annotations

import pathlib
import random
import time
from dataclasses import dataclass, field

import numpy as np

from jaxstack.agents import gap
from jaxstack.agents.simweb import SimWeb, WorldConfig
from jaxstack.agents.tokens import ProxyTokenCounter
from jaxstack.runs import RunRecord, pyplot

PAPER = {
    "source": "GAP, arXiv 2510.25320 (numbers via two secondary summaries; see shared/refs/agents.md section 2.4)",
    "llm_turn_reduction": {"HotpotQA": 0.216, "2Wiki": 0.334},
    "wall_time_reduction": {"HotpotQA": 0.323, "2Wiki": 0.214},
    "response_length_reduction": {"HotpotQA": 0.249},
    "hotpotqa_em": {"GAP-3B": 42.5, "Search-R1": 37.6, "note": "model accuracy on HotpotQA: not reproduced"},
    "accuracy_gain_multi_hop_avg": "+0.9% (GAP-3B over AFM-RL-3B): not reproduced (no model)",
}
LABEL = ("toy simulation on SimWeb (synthetic offline web; a scripted planner with a stated error model; "
         "simulated model time); not the paper's numbers")
REGIMES = ("react", "gap", "graph_level", "graph_eager")
METRICS = ("turns", "tool_calls", "tool_time", "model_time", "time", "response_tokens", "em", "answered")

# Pre-registered before any number is computed; :func:`verdict` applies it at Config.verdict_fraction.
CRITERION = (
    "GAP (plan, then one LLM call per batch of independent tasks) vs ReAct, same policy errors, at the "
    "verdict fraction of parallelisable questions, means over seeds with standard errors (SE): "
    "'reproduced' if the LLM-turn reduction and the wall-time reduction are both > 2 SE above 0 and EM "
    "is not lower than ReAct's by more than 2 SE; 'partially' if only the turn reduction is > 2 SE above 0; "
    "'not reproduced' otherwise. The size of the reduction depends on the question mix, so it is reported "
    "beside the paper's -21.6% / -33.4% turns, not tested against it."
)


def verdict(row: dict) -> dict:
    """The pre-registered verdict (:data:`CRITERION`) on one fraction's aggregated row."""
    turns, wall, em = row["turn_reduction"]["gap"], row["time_reduction"]["gap"], row["em_delta"]["gap"]
    turns_ok = turns["mean"] - 2 * turns["se"] > 0
    time_ok = wall["mean"] - 2 * wall["se"] > 0
    em_ok = em["mean"] + 2 * em["se"] >= 0
    result = "reproduced" if turns_ok and time_ok and em_ok else "partially" if turns_ok else "not reproduced"
    return {"result": result, "criterion": CRITERION, "fraction": row["fraction"],
            "turn_reduction": turns, "time_reduction": wall, "em_delta_gap_minus_react": em,
            "checks": {"turns_reduced": turns_ok, "time_reduced": time_ok, "em_not_lower": em_ok}}


@dataclass(frozen=True)
class Config:
    """GAP experiment configuration.

    Attributes:
        seeds: one world, question set and error draw per seed (headline numbers: mean and SE over them).
        fractions: parallelisable (comparison) fractions to sweep.
        n_questions: questions per fraction and seed.
        hops: (min, max) hops of bridge questions.
        fan_out: (min, max) branches of comparison questions.
        errors: the planner's error rates (see :class:`~jaxstack.agents.gap.PolicyErrors`).
        error_scales: multipliers of ``errors`` swept at ``verdict_fraction`` (ReAct and GAP only).
        model_time: the simulated model latency per LLM call (an assumption, labelled in every output).
        verdict_fraction: the parallelisable fraction the verdict is taken at (must be in ``fractions``).
        max_turns: LLM-call budget per question (no answer by then: EM 0).
        max_concurrency: executor cap (``None`` = unbounded).
        real_questions: questions per fraction (first seed) also run with real asyncio sleeps.
        real_time_scale: real seconds per latency second in real mode.
        out_dir, run_name: the record goes to ``out_dir/gap/<run_name or a timestamp>``.
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    n_questions: int = 40
    hops: tuple[int, int] = (2, 4)
    fan_out: tuple[int, int] = (2, 3)
    errors: gap.PolicyErrors = field(default_factory=lambda: gap.PolicyErrors(
        missed_dependency=0.15, wrong_argument=0.05, premature_answer=0.02, notice=0.5))
    error_scales: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
    model_time: gap.ModelTime = gap.ModelTime()
    verdict_fraction: float = 0.5
    max_turns: int = 30
    max_concurrency: int | None = None
    real_questions: int = 3
    real_time_scale: float = 0.01
    out_dir: str = "runs"
    run_name: str | None = None

    def __post_init__(self):
        if not self.fractions or any(not 0 <= f <= 1 for f in self.fractions):
            raise ValueError(f"Config.fractions must be non-empty values in [0, 1], got {self.fractions}")
        if self.verdict_fraction not in self.fractions:
            raise ValueError(f"Config.verdict_fraction must be one of fractions {self.fractions}, "
                             f"got {self.verdict_fraction}")
        if not self.seeds:
            raise ValueError("Config.seeds must name at least one seed")
        if self.n_questions < 1:
            raise ValueError(f"Config.n_questions must be >= 1, got {self.n_questions}")
        if self.real_time_scale <= 0:
            raise ValueError(f"Config.real_time_scale must be > 0, got {self.real_time_scale}")
        if any(s < 0 for s in self.error_scales):
            raise ValueError(f"Config.error_scales must be >= 0, got {self.error_scales}")


PRESETS = {
    "tiny": Config(),
    "paper": Config(seeds=(0, 1, 2, 3, 4), n_questions=300, fractions=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0),
                    real_questions=10),
}


def _questions(world: SimWeb, config: Config, frac: float, rng: random.Random):
    n_par = round(frac * config.n_questions)
    kinds = ["comparison"] * n_par + ["bridge"] * (config.n_questions - n_par)
    rng.shuffle(kinds)
    out = []
    for i, k in enumerate(kinds):
        if k == "bridge":
            out.append(world.bridge_question(rng.randint(*config.hops), rng, qid=f"f{frac}-q{i}"))
        else:
            out.append(world.comparison_question(rng.randint(*config.fan_out), rng, qid=f"f{frac}-q{i}"))
    return out


def _guesser(world: SimWeb, question, gold: dict[str, str]):
    """The planner's hallucinations: a wrong name of the right kind for a node's placeholder (or, for the
    sink, for the answer), drawn from the world's entities."""
    by_kind: dict[str, list[str]] = {}
    for e in world.entities.values():
        by_kind.setdefault(e.kind, []).append(e.name)

    def guess(nid: str, rng: random.Random) -> str:
        refs = gap.placeholders(question.graph.node(nid).args)
        true = gold[refs[0]] if refs and question.graph.node(nid).tool not in gap.LOCAL_TOOLS else question.answer
        pool = sorted(n for n in by_kind[world.entity_by_name(true).kind] if n != true)
        return rng.choice(pool)

    return guess


def episode(world: SimWeb, question, regime: str, errors: gap.PolicyErrors, seed, config: Config, count,
            *, time_mode: str = "virtual") -> tuple[gap.Episode, dict]:
    """One question under one regime: the noisy planner through the agent loop. Returns the episode and
    its error counts."""
    tools = world.local_tools()
    gold = gap.execute(question.graph, tools).outputs
    policy = gap.NoisyPlanner(question.graph, regime, errors, seed=[seed, question.qid], reason=tools,
                              guess=_guesser(world, question, gold))
    ep = gap.run_episode(policy, question.text, tools, regime=regime, latency=world.latency.latency,
                         model_time=config.model_time, count=count, max_turns=config.max_turns,
                         time_mode=time_mode, time_scale=config.real_time_scale)
    return ep, policy.counts


def _metrics(ep: gap.Episode, answer: str) -> dict:
    em = gap.em_reward(f"<answer>{ep.answer}</answer>", answer) if ep.answer is not None else 0.0
    return dict(turns=ep.n_turns, tool_calls=ep.tool_calls, tool_time=ep.tool_time, model_time=ep.model_time,
                time=ep.time, response_tokens=ep.response_tokens, em=em, answered=float(ep.answer is not None),
                peak_concurrency=ep.peak_concurrency)


def _mean_se(values) -> dict:
    a = np.asarray(values, dtype=float)
    se = float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan")
    return {"mean": float(a.mean()), "se": se, "n": int(len(a))}


def _aggregate(per_seed: dict, fraction: float) -> dict:
    """``per_seed[seed][regime]`` = list of per-question metric dicts -> means and SEs over seeds."""
    seeds = sorted(per_seed)
    means = {s: {r: {k: float(np.mean([m[k] for m in per_seed[s][r]])) for k in METRICS} for r in per_seed[s]}
             for s in seeds}
    regimes = list(per_seed[seeds[0]])
    row = {"fraction": fraction, "regimes": {r: {k: _mean_se([means[s][r][k] for s in seeds]) for k in METRICS}
                                             for r in regimes}}
    others = [r for r in regimes if r != "react"]
    row["turn_reduction"] = {r: _mean_se([1 - means[s][r]["turns"] / means[s]["react"]["turns"] for s in seeds])
                             for r in others}
    row["time_reduction"] = {r: _mean_se([1 - means[s][r]["time"] / means[s]["react"]["time"] for s in seeds])
                             for r in others}
    row["response_token_reduction"] = {
        r: _mean_se([1 - means[s][r]["response_tokens"] / means[s]["react"]["response_tokens"] for s in seeds])
        for r in others}
    row["em_delta"] = {r: _mean_se([means[s][r]["em"] - means[s]["react"]["em"] for s in seeds]) for r in others}
    return row


def run(config: Config) -> pathlib.Path:
    """Runs the sweep and returns the run directory."""
    t_start = time.perf_counter()
    record = RunRecord.create(config.out_dir, "gap", config, stamp=config.run_name)
    count = ProxyTokenCounter().count
    worlds = {s: SimWeb(WorldConfig(seed=s)) for s in config.seeds}
    questions = {}
    for s in config.seeds:
        rng = random.Random(f"gap-exp-{s}")
        questions[s] = {f: _questions(worlds[s], config, f, rng) for f in config.fractions}

    rows, real_check = [], []
    for frac in config.fractions:
        per_seed = {}
        for s in config.seeds:
            per_seed[s] = {r: [] for r in REGIMES}
            for q in questions[s][frac]:
                for r in REGIMES:
                    ep, counts = episode(worlds[s], q, r, config.errors, s, config, count)
                    m = _metrics(ep, q.answer)
                    per_seed[s][r].append(m)
                    record.log_metrics(seed=s, fraction=frac, qid=q.qid, kind=q.kind, regime=r, **m, **counts)
        rows.append(_aggregate(per_seed, frac))
        s0 = config.seeds[0]
        for q in questions[s0][frac][:config.real_questions]:
            for r in REGIMES:
                virtual, _ = episode(worlds[s0], q, r, config.errors, s0, config, count)
                real, _ = episode(worlds[s0], q, r, config.errors, s0, config, count, time_mode="real")
                real_check.append(dict(fraction=frac, qid=q.qid, regime=r, virtual_tool_time=virtual.tool_time,
                                       real_tool_time=real.tool_time, same_turns=virtual.n_turns == real.n_turns))

    scales = []
    vq = {s: questions[s][config.verdict_fraction] for s in config.seeds}
    for scale in config.error_scales:
        errors = config.errors.scaled(scale)
        per_seed = {s: {r: [_metrics(episode(worlds[s], q, r, errors, s, config, count)[0], q.answer) for q in vq[s]]
                        for r in ("react", "gap")} for s in config.seeds}
        scales.append({"scale": scale, **_aggregate(per_seed, config.verdict_fraction)})

    headline = verdict(next(r for r in rows if r["fraction"] == config.verdict_fraction))
    rt = np.array([c["real_tool_time"] for c in real_check])
    vt = np.array([c["virtual_tool_time"] for c in real_check])
    summary = {
        "label": LABEL,
        "model_time": {"simulated": True, "per_call_s": config.model_time.per_call_s,
                       "per_prompt_token_s": config.model_time.per_prompt_token_s,
                       "per_output_token_s": config.model_time.per_output_token_s,
                       "note": "assumed model latency; tool time is the executor's makespan (virtual clock)"},
        "errors": {"missed_dependency": config.errors.missed_dependency,
                   "wrong_argument": config.errors.wrong_argument,
                   "premature_answer": config.errors.premature_answer, "notice": config.errors.notice},
        "seeds": list(config.seeds),
        "verdict": headline,
        "sweep": rows,
        "error_scales": scales,
        "real_time_check": {"n": len(real_check),
                            "mean_real_over_virtual_tool_time": float(np.mean(rt / np.maximum(vt, 1e-9))) if len(rt) else None,
                            "same_turns": all(c["same_turns"] for c in real_check)},
        "paper": PAPER,
        "wall_s": time.perf_counter() - t_start,
    }
    record.write_summary(summary)
    record.write_jsonl("real_time_check.jsonl", real_check)
    _plots(record, rows, scales, config)
    print(f"[gap] {LABEL}")
    for r in rows:
        tr, em = r["turn_reduction"]["gap"], r["regimes"]
        print(f"[gap] parallel fraction {r['fraction']:.2f}: turns react {em['react']['turns']['mean']:.2f} "
              f"gap {em['gap']['turns']['mean']:.2f} (reduction {100 * tr['mean']:.1f} +- {100 * tr['se']:.1f}%), "
              f"EM react {em['react']['em']['mean']:.3f} gap {em['gap']['em']['mean']:.3f} "
              f"eager {em['graph_eager']['em']['mean']:.3f}")
    print(f"[gap] verdict at fraction {config.verdict_fraction}: {headline['result']} "
          f"(paper -21.6% turns HotpotQA, -33.4% 2Wiki) -> {record.dir}")
    return record.dir


def _errorbar(ax, x, stats, **kw):
    ax.errorbar(x, [s["mean"] for s in stats], yerr=[s["se"] for s in stats], capsize=3, **kw)


def _percent(stat: dict) -> dict:
    return {"mean": 100 * stat["mean"], "se": 100 * stat["se"]}


def _plots(record, rows, scales, config: Config):
    plt = pyplot()
    fr = [r["fraction"] for r in rows]
    n_seeds = len(config.seeds)
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    (a_turns, a_red), (a_time, a_em) = axes
    for reg in REGIMES:
        _errorbar(a_turns, fr, [r["regimes"][reg]["turns"] for r in rows], marker="o", label=reg)
        _errorbar(a_time, fr, [r["regimes"][reg]["time"] for r in rows], marker="o", label=f"{reg}: total")
        a_time.plot(fr, [r["regimes"][reg]["tool_time"]["mean"] for r in rows], ":", color=a_time.lines[-1].get_color(),
                    label=f"{reg}: tool makespan only")
        _errorbar(a_em, fr, [r["regimes"][reg]["em"] for r in rows], marker="o", label=reg)
    a_turns.set_ylabel("LLM calls per question (counted)")
    a_time.set_ylabel("seconds per question\n(tool makespan + simulated model time)")
    a_em.set_ylabel("EM of the answers given")
    a_em.set_ylim(top=1.02)
    a_em.text(0.02, 0.04, "paper, HotpotQA EM (a 3B model; not comparable): GAP-3B 0.425, Search-R1 0.376",
              transform=a_em.transAxes, fontsize=7, color="0.3")
    for key, ls, name in (("turn_reduction", "-", "LLM turns"), ("time_reduction", "--", "time")):
        _errorbar(a_red, fr, [_percent(r[key]["gap"]) for r in rows], marker="o", ls=ls, color="C1",
                  label=f"{name}: GAP vs ReAct")
        _errorbar(a_red, fr, [_percent(r[key]["graph_eager"]) for r in rows], marker="s", ls=ls, color="C3",
                  label=f"{name}: eager graph vs ReAct")
    for y, ls, text in ((21.6, ":", "paper: -21.6% turns (HotpotQA)"), (33.4, "--", "paper: -33.4% turns (2Wiki)"),
                        (32.3, "-.", "paper: -32.3% time (HotpotQA)")):
        a_red.axhline(y, ls=ls, color="0.5", lw=1, label=text)
    a_red.axhline(0, color="k", lw=0.5)
    a_red.set_ylabel("reduction vs ReAct (%)")
    for ax in axes.flat:
        ax.set_xlabel("fraction of parallelisable questions")
        ax.legend(fontsize=6.5)
    fig.suptitle(f"GAP on SimWeb: noisy planner (missed dep {config.errors.missed_dependency}, wrong arg "
                 f"{config.errors.wrong_argument}, premature {config.errors.premature_answer}); mean +- SE over "
                 f"{n_seeds} seeds. Toy simulation, model time simulated", fontsize=10)
    fig.tight_layout()
    record.save_plot(fig, "gap_sweep.png", dpi=110)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = [s["scale"] for s in scales]
    _errorbar(axes[0], x, [_percent(s["turn_reduction"]["gap"]) for s in scales], marker="o", label="LLM turns")
    _errorbar(axes[0], x, [_percent(s["time_reduction"]["gap"]) for s in scales], marker="s", label="time")
    axes[0].axhline(0, color="k", lw=0.5)
    axes[0].set_ylabel("GAP reduction vs ReAct (%)")
    for reg in ("react", "gap"):
        _errorbar(axes[1], x, [s["regimes"][reg]["em"] for s in scales], marker="o", label=reg)
    axes[1].set_ylabel("EM")
    axes[1].set_ylim(0, 1.05)
    for ax in axes:
        ax.set_xlabel("error-rate multiplier (1 = the configured rates)")
        ax.legend(fontsize=8)
    fig.suptitle(f"Policy errors at parallel fraction {config.verdict_fraction} (mean +- SE over {n_seeds} seeds; toy)",
                 fontsize=10)
    fig.tight_layout()
    record.save_plot(fig, "gap_errors.png", dpi=110)


if __name__ == "__main__":  # pragma: no cover
    run(PRESETS["tiny"])

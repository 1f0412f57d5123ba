"""AgentFold context-growth study on SimWeb (a toy, simulated web; not the paper's benchmark).

The same oracle action sequences (gold-path searches/visits plus rejected exploration branches,
see :mod:`jaxstack.agents.oracle`) are rendered three ways - ReAct (append-only), AgentFold
(rule-based folding in the public prompt format) and a running summary with per-fact loss
probability ``p`` - and measured per turn:

* ``A_t``: mean prompt tokens over trajectories alive at turn t, with survival counts
  (the paper's Fig. 3a analogue), up to 500 turns;
* block count vs turn (Fig. 3b analogue);
* needed-fact retention vs horizon (the running summary should follow ``(1-p)^h``);
* cumulative prompt tokens and uncached (re-prefilled) tokens per trajectory.

Token counts come from a BPE trained offline on the SimWeb corpus (and a regex proxy counter
for a cross-check). All numbers are a *simulation* of context growth on synthetic pages; the
paper's numbers are quoted beside them with their source and are not reproduced here.

With ``sft_train=True`` (preset ``sft``, CPU minutes) the AgentFold SFT examples of the first
``sft_trajectories`` trajectories also fine-tune a tiny jaxstack model from scratch
(:func:`jaxstack.data.adp.sft_run.train_chat_sft`: loss on the response only, packed rows, Grain,
the foundation trainer), holding out whole trajectories; the record (``sft_train/``: loss curve,
held-out loss, samples) reports the share of sampled responses that parse with the AgentFold
parser and that pick the reference's action (``search`` / ``visit`` / ``answer``). A toy: a model of
about a million parameters trained for a minute on a few dozen synthetic examples.

Entry point: ``run(config) -> pathlib.Path`` writing ``runs/<name>/<timestamp>/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import random
import time
from dataclasses import dataclass

import numpy as np

# the tiny SFT model and schedule are those of the ADP experiment's tiny preset
from experiments.adp import TINY_MODEL, TINY_OPTIMIZER, TINY_TRAIN
from jaxstack.agents import oracle
from jaxstack.agents.fold import SYSTEM_PROMPT, parse_response
from jaxstack.agents.simweb import SimWeb, WorldConfig
from jaxstack.agents.tokens import ProxyTokenCounter, simweb_bpe_counter
from jaxstack.models.configs import LlamaConfig
from jaxstack.train.optimizers import OptimizerConfig
from jaxstack.train.trainer import TrainConfig

PAPER = {
    "source": "AgentFold, arXiv 2510.24699 (numbers via secondary summaries of the paper; "
              "see shared/refs/agents.md section 1.5)",
    "context_tokens_turn_100_agentfold": 7000,
    "context_tokens_turn_100_react": 91000,
    "reduction_at_turn_100": 0.92,
    "max_context_500_turns": "mostly < 20k",
    "BrowseComp": 36.2,
    "BrowseComp-ZH": 47.3,
    "note": "model accuracies: not reproduced (no model, no BrowseComp data offline)",
}
LABEL = "toy simulation on SimWeb (synthetic offline web, scripted oracle policy); not the paper's numbers"


@dataclass(frozen=True)
class Config:
    """AgentFold experiment configuration.

    Attributes:
        name: run directory name under ``out_dir``.
        seed: world, question and trajectory seed.
        n_trajectories: oracle trajectories (questions cycle bridge / comparison / constraint).
        long_fraction: share of trajectories with a long target length.
        turns_short, turns_long: (min, max) target steps of short and long trajectories.
        summary_p: per-rewrite fact loss probability of the running-summary baseline.
        bpe_vocab: vocabulary size of the BPE trained on SimWeb text.
        max_context: context window used to report how often ReAct would overflow.
        sft_trajectories: trajectories exported as ShareGPT SFT examples.
        out_dir: root folder of run records.
        sft_train: also fine-tune a tiny model on the SFT examples (see the module docstring).
        sft_heldout: trajectories (of the ``sft_trajectories``) whose examples are held out.
        sft_model, sft_trainer, sft_optimizer: model and foundation-trainer settings;
            ``sft_trainer.seq_len`` is the packed row length (longer examples are dropped).
        sft_max_new_tokens, sft_max_prompts: sampling budget and replies sampled per split.
    """

    name: str = "agentfold"
    seed: int = 0
    n_trajectories: int = 40
    long_fraction: float = 0.2
    turns_short: tuple[int, int] = (20, 100)
    turns_long: tuple[int, int] = (100, 500)
    summary_p: float = 0.02
    bpe_vocab: int = 4096
    max_context: int = 131072
    sft_trajectories: int = 3
    out_dir: str = "runs"
    sft_train: bool = False
    sft_heldout: int = 1
    sft_model: LlamaConfig = TINY_MODEL
    sft_trainer: TrainConfig = TINY_TRAIN
    sft_optimizer: OptimizerConfig = TINY_OPTIMIZER
    sft_max_new_tokens: int = 96
    sft_max_prompts: int = 12

    def __post_init__(self):
        if self.n_trajectories < 3:
            raise ValueError(f"Config.n_trajectories must be >= 3, got {self.n_trajectories}")
        if not 0 <= self.long_fraction <= 1:
            raise ValueError(f"Config.long_fraction must be in [0, 1], got {self.long_fraction}")
        for f in ("turns_short", "turns_long"):
            lo, hi = getattr(self, f)
            if not 2 <= lo <= hi:
                raise ValueError(f"Config.{f} must satisfy 2 <= min <= max, got {(lo, hi)}")
        if not 0 <= self.summary_p <= 1:
            raise ValueError(f"Config.summary_p must be in [0, 1], got {self.summary_p}")
        if self.sft_train and not 1 <= self.sft_heldout < self.sft_trajectories:
            raise ValueError(f"Config.sft_heldout must be in [1, sft_trajectories={self.sft_trajectories}), "
                             f"got {self.sft_heldout}")


PRESETS = {
    "tiny": Config(n_trajectories=40, sft_trajectories=3),
    "paper": Config(n_trajectories=200, long_fraction=0.2, sft_trajectories=50),
    # the tiny-model SFT run (CPU minutes): 4 short trajectories, 3 trained on, 1 held out
    "sft": Config(n_trajectories=4, long_fraction=0.0, turns_short=(8, 16), sft_trajectories=4, sft_train=True),
}


def classify_response(text: str, record: dict, turn: int | None = None) -> str:
    """The action of an AgentFold response: ``answer`` or the tool name of its ``<tool_call>``.
    Raises ResponseParseError (a ValueError) as :func:`~jaxstack.agents.fold.parse_response` does
    (the record's ``turn`` decides whether a ``<compress>`` directive is required)."""
    del turn
    response = parse_response(text, int(record["turn"]))
    return "answer" if response.answer is not None else str(response.tool_call["name"])


def _train_sft(config: Config, out: pathlib.Path, examples: list) -> dict:
    from jaxstack.data.adp.sft import split_records
    from jaxstack.data.adp.sft_run import train_chat_sft

    records = [{"id": ex.id, "trajectory": ex.id.rsplit("-t", 1)[0], "turn": ex.turn,
                "messages": [{"role": "system", "content": ex.system}, {"role": "user", "content": ex.user},
                             {"role": "assistant", "content": ex.response}]} for ex in examples]
    n_traj = len({r["trajectory"] for r in records})
    train_records, eval_records = split_records(records, config.sft_heldout / n_traj, seed=config.seed,
                                                key="trajectory")
    summary = train_chat_sft(
        train_records, eval_records, model_config=config.sft_model, train_config=config.sft_trainer,
        optimizer_config=config.sft_optimizer, run_dir=out / "sft_train", classify=classify_response,
        tokenizer_name="agentfold-sft", overlong="drop", max_new_tokens=config.sft_max_new_tokens,
        max_prompts=config.sft_max_prompts, show_progress=False,
        extra_config={"experiment": "agentfold", "heldout_trajectories": sorted({r["trajectory"] for r in eval_records})},
    )
    summary["label"] = ("toy: ~0.7M-parameter model trained from scratch on oracle AgentFold examples from a "
                        "synthetic web; shows the format being learned, not search ability")
    return summary


def _curve(rows_per_traj: list[list[dict]], key: str, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    total = np.zeros(horizon)
    alive = np.zeros(horizon, dtype=int)
    for rows in rows_per_traj:
        for r in rows[:horizon]:
            total[r["turn"]] += r[key]
            alive[r["turn"]] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(alive > 0, total / np.maximum(alive, 1), np.nan)
    return mean, alive


def _at(curve: np.ndarray, t: int) -> float:
    return float(curve[t]) if t < len(curve) and not math.isnan(curve[t]) else float("nan")


def run(config: Config) -> pathlib.Path:
    """Runs the study and returns the run directory."""
    t_start = time.perf_counter()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = pathlib.Path(config.out_dir) / config.name / stamp
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))

    world = SimWeb(WorldConfig(seed=config.seed))
    tools = world.tool_specs()
    bpe = simweb_bpe_counter(world, vocab_size=config.bpe_vocab,
                             extra_texts=[SYSTEM_PROMPT, oracle.REACT_SYSTEM_PROMPT, json.dumps(tools)])
    proxy = ProxyTokenCounter()
    rng = random.Random(f"agentfold-exp-{config.seed}")
    questions = world.questions(config.n_trajectories, seed=config.seed)

    fold_rows, react_rows, summ_rows, retention, fold_presence = [], [], [], [], []
    proxy_ratio_100 = []
    traj_stats, sft = [], []
    violations = 0
    for i, q in enumerate(questions):
        lo, hi = config.turns_long if rng.random() < config.long_fraction else config.turns_short
        traj = oracle.oracle_trajectory(world, q, seed=config.seed, target_steps=rng.randint(lo, hi))
        run_ = oracle.run_oracle_agentfold(traj, tools, count=bpe.count, keep_contexts=True)
        if run_.status != "answered" or run_.answer != q.answer:
            raise RuntimeError(f"oracle AgentFold run failed on {q.qid}: {run_.status}")
        violations += sum(run_.violations.values())
        fr = [dict(turn=r.turn, prompt_tokens=r.prompt_tokens, blocks=r.blocks, cached_tokens=r.cached_tokens,
                   reprefill_tokens=r.reprefill_tokens, fold=r.fold.kind if r.fold else None,
                   merged=r.fold.merged if r.fold else 0) for r in run_.turns]
        rr = oracle.react_accounting(traj, tools, bpe.count)
        sr, ret = oracle.summary_accounting(traj, tools, bpe.count, config.summary_p, seed=config.seed)
        fold_rows.append(fr)
        react_rows.append(rr)
        summ_rows.append(sr)
        retention += ret
        fold_presence += oracle.needed_fact_presence(traj, run_)
        if traj.n_turns > 100:  # proxy-token cross-check of the turn-100 ratio
            pf = sum(proxy.count(s) for s in run_.contexts[100].prompt_segments())
            pr = sum(proxy.count(s) for s in oracle.react_segments(traj, tools, 100))
            proxy_ratio_100.append(pf / pr)
        drops = sum(1 for a, b in zip(fr, fr[1:]) if b["prompt_tokens"] < a["prompt_tokens"])
        has_reject = any(a.closes == "reject" for a in traj.actions)
        traj_stats.append(dict(qid=q.qid, kind=q.kind, turns=traj.n_turns, drops=drops, has_reject=has_reject,
                               deep_folds=sum(1 for r in fr if r["fold"] == "deep"),
                               granular_folds=sum(1 for r in fr if r["fold"] == "granular"),
                               mean_deep_span=float(np.mean([r["merged"] for r in fr if r["fold"] == "deep"] or [0])),
                               cum_prompt={"react": sum(r["prompt_tokens"] for r in rr),
                                           "agentfold": sum(r["prompt_tokens"] for r in fr),
                                           "summary": sum(r["prompt_tokens"] for r in sr)},
                               cum_uncached={"react": sum(r["reprefill_tokens"] for r in rr),
                                             "agentfold": sum(r["reprefill_tokens"] for r in fr),
                                             "summary": sum(r["reprefill_tokens"] for r in sr)},
                               react_over_window=sum(r["prompt_tokens"] > config.max_context for r in rr)))
        if i < config.sft_trajectories:
            sft += oracle.sft_examples(traj, run_)

    horizon = max(len(r) for r in react_rows)
    a_fold, alive = _curve(fold_rows, "prompt_tokens", horizon)
    a_react, _ = _curve(react_rows, "prompt_tokens", horizon)
    a_summ, _ = _curve(summ_rows, "prompt_tokens", horizon)
    b_fold, _ = _curve(fold_rows, "blocks", horizon)
    b_react, _ = _curve(react_rows, "blocks", horizon)
    with (out / "metrics.jsonl").open("w") as fh:
        for t in range(horizon):
            fh.write(json.dumps(dict(turn=t, alive=int(alive[t]), A_react=_at(a_react, t), A_agentfold=_at(a_fold, t),
                                     A_summary=_at(a_summ, t), blocks_agentfold=_at(b_fold, t),
                                     blocks_react=_at(b_react, t))) + "\n")

    # retention vs horizon for the summary baseline
    hs = np.array([r["horizon"] for r in retention])
    present = np.array([r["present"] for r in retention], dtype=float)
    bins = [0, 1, 5, 10, 20, 40, 80, 160, 320, 1000]
    ret_bins = []
    for lo, hi in zip(bins, bins[1:]):
        m = (hs >= lo) & (hs < hi)
        if m.sum():
            ret_bins.append(dict(lo=lo, hi=hi, n=int(m.sum()), measured=float(present[m].mean()),
                                 expected=float(np.mean((1 - config.summary_p) ** hs[m]))))
    expected_all = float(np.mean((1 - config.summary_p) ** hs))
    measured_all = float(present.mean())
    se = math.sqrt(max(1e-12, float(np.sum((1 - config.summary_p) ** hs * (1 - (1 - config.summary_p) ** hs)))) / len(hs))

    def slope(curve, lo=10, hi=100):
        ts = np.arange(lo, min(hi, len(curve)))
        ys = curve[lo:min(hi, len(curve))]
        ok = ~np.isnan(ys)
        return float(np.polyfit(np.log(ts[ok]), np.log(ys[ok]), 1)[0]) if ok.sum() > 2 else float("nan")

    with_reject = [s for s in traj_stats if s["has_reject"]]
    summary = {
        "label": LABEL,
        "token_counter": f"BPE trained on SimWeb text (vocab {bpe.tokenizer.get_vocab_size()})",
        "n_trajectories": len(traj_stats),
        "max_turns": int(horizon),
        "A_100": {"react": _at(a_react, 100), "agentfold": _at(a_fold, 100), "summary": _at(a_summ, 100)},
        "A_50": {"react": _at(a_react, 50), "agentfold": _at(a_fold, 50), "summary": _at(a_summ, 50)},
        "alive_at_100": int(alive[100]) if horizon > 100 else 0,
        "alive_at_500": int(alive[500]) if horizon > 500 else 0,
        "ratio_fold_react_100": _at(a_fold, 100) / _at(a_react, 100),
        "ratio_fold_react_100_proxy_tokens": float(np.mean(proxy_ratio_100)) if proxy_ratio_100 else float("nan"),
        "growth_50_100": {"react": _at(a_react, 100) / _at(a_react, 50), "agentfold": _at(a_fold, 100) / _at(a_fold, 50)},
        "loglog_slope_10_100": {"react": slope(a_react), "agentfold": slope(a_fold)},
        "max_A_t": {"react": float(np.nanmax(a_react)), "agentfold": float(np.nanmax(a_fold))},
        "blocks_at_100": {"react": _at(b_react, 100), "agentfold": _at(b_fold, 100)},
        "agentfold_nonmonotonic_drops_mean": float(np.mean([s["drops"] for s in traj_stats])),
        "share_with_drop_given_rejected_branch": float(np.mean([s["drops"] > 0 for s in with_reject])) if with_reject else float("nan"),
        "fold_mix": {"granular": int(sum(s["granular_folds"] for s in traj_stats)),
                     "deep": int(sum(s["deep_folds"] for s in traj_stats))},
        "fold_invariant_violations": violations,
        "retention": {"agentfold": float(np.mean(fold_presence)), "react": 1.0,
                      "summary_measured": measured_all, "summary_expected_(1-p)^h": expected_all,
                      "summary_within_95ci": abs(measured_all - expected_all) <= 1.96 * se, "p": config.summary_p,
                      "bins": ret_bins},
        "cumulative_prompt_tokens_mean": {k: float(np.mean([s["cum_prompt"][k] for s in traj_stats])) for k in ("react", "agentfold", "summary")},
        "cumulative_uncached_tokens_mean": {k: float(np.mean([s["cum_uncached"][k] for s in traj_stats])) for k in ("react", "agentfold", "summary")},
        "react_turns_over_window": int(sum(s["react_over_window"] for s in traj_stats)),
        "sft_examples": len(sft),
        "paper": PAPER,
    }
    summary["acceptance"] = {
        "A100_fold_le_0.2x_react": summary["ratio_fold_react_100"] <= 0.2,
        "fold_growth_50_100_le_1.3": summary["growth_50_100"]["agentfold"] <= 1.3,
        "react_growth_50_100_ge_1.8": summary["growth_50_100"]["react"] >= 1.8,
        "oracle_fold_retention_100pct": summary["retention"]["agentfold"] == 1.0,
    }
    if sft:
        oracle.write_sharegpt_jsonl(sft, out / "sft_agentfold.sharegpt.jsonl")
        masks = [oracle.sft_token_mask(ex, bpe)[1] for ex in sft]
        summary["sft_loss_token_share"] = float(np.mean([sum(m) / len(m) for m in masks]))
    if config.sft_train:
        result = _train_sft(config, out, sft)
        summary["sft_train"] = {k: result[k] for k in ("label", "model", "data", "steps", "train_loss_first",
                                                        "train_loss_last", "heldout_loss_initial",
                                                        "heldout_loss_final", "parse_before", "parse_after",
                                                        "durations_s", "files")}
        a, b = result["parse_after"]["heldout"], result["parse_before"]["heldout"]
        print(f"[agentfold] SFT ({summary['sft_train']['label']}): train loss {result['train_loss_first']:.3f} -> "
              f"{result['train_loss_last']:.3f}, held-out loss {result['heldout_loss_initial']:.3f} -> "
              f"{result['heldout_loss_final']:.3f}; held-out responses parsed {b['parsed']:.2f} -> {a['parsed']:.2f}, "
              f"right action {b['kind_match']:.2f} -> {a['kind_match']:.2f} (n={a['n']})")
    summary["wall_s"] = time.perf_counter() - t_start
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "trajectories.jsonl").write_text("".join(json.dumps(s) + "\n" for s in traj_stats))
    _plots(out, config, a_react, a_fold, a_summ, alive, b_fold, b_react, ret_bins, traj_stats)
    print(f"[agentfold] {LABEL}")
    print(f"[agentfold] A_100: ReAct {summary['A_100']['react']:.0f}  AgentFold {summary['A_100']['agentfold']:.0f}  "
          f"summary {summary['A_100']['summary']:.0f} tokens  (ratio {summary['ratio_fold_react_100']:.3f}; paper ~7k vs ~91k, not reproduced)")
    print(f"[agentfold] growth 50->100: ReAct {summary['growth_50_100']['react']:.2f}x  AgentFold {summary['growth_50_100']['agentfold']:.2f}x")
    print(f"[agentfold] acceptance: {summary['acceptance']}  -> {out}")
    return out


def _plots(out, config, a_react, a_fold, a_summ, alive, b_fold, b_react, ret_bins, traj_stats):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(len(a_react))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax2 = ax.twinx()
    ax2.bar(t, alive, color="0.85", width=1.0, label="trajectories alive")
    ax2.set_ylabel("trajectories alive at t")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.plot(t, a_react, label="ReAct (append-only)")
    ax.plot(t, a_fold, label="AgentFold (oracle folds)")
    ax.plot(t, a_summ, label=f"running summary (p={config.summary_p})")
    ax.set_yscale("log")
    ax.set_xlabel("turn t")
    ax.set_ylabel("mean prompt tokens A_t (SimWeb BPE)")
    ax.set_title("Context tokens vs turn - toy SimWeb simulation, not the paper's numbers")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "context_vs_turn.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(t, b_react, label="ReAct (one message pair per step)")
    ax.plot(t, b_fold, label="AgentFold blocks")
    ax.set_xlabel("turn t")
    ax.set_ylabel("mean block count")
    ax.set_title("Block count vs turn (toy SimWeb simulation)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "blocks_vs_turn.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    mids = [(b["lo"] + b["hi"]) / 2 for b in ret_bins]
    ax.plot(mids, [b["measured"] for b in ret_bins], "o-", label="running summary, measured")
    ax.plot(mids, [b["expected"] for b in ret_bins], "k--", label="(1-p)^h expected")
    ax.axhline(1.0, color="C1", label="AgentFold oracle folds / ReAct")
    ax.set_xscale("symlog")
    ax.set_xlabel("horizon h (summary rewrites survived)")
    ax.set_ylabel("needed facts present")
    ax.set_title("Fact retention vs horizon (simulation of the paper's argument)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "retention_vs_horizon.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    methods = ("react", "agentfold", "summary")
    cum = [np.mean([s["cum_prompt"][m] for s in traj_stats]) for m in methods]
    unc = [np.mean([s["cum_uncached"][m] for s in traj_stats]) for m in methods]
    x = np.arange(3)
    ax.bar(x - 0.2, cum, 0.4, label="cumulative prompt tokens")
    ax.bar(x + 0.2, unc, 0.4, label="uncached (re-prefilled) tokens")
    ax.set_xticks(x, methods)
    ax.set_yscale("log")
    ax.set_ylabel("tokens per trajectory (mean)")
    ax.set_title("Prefill cost per trajectory (toy SimWeb simulation)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "prefill_tokens.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":  # pragma: no cover
    run(PRESETS["tiny"])

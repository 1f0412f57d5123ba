"""Multi-Agent Evolve at toy scale: proposer, solver and judge from one tiny policy, co-trained without labels.

Paper: Chen et al., "Multi-Agent Evolve: LLM Self-Improve through Co-evolution" (arXiv 2510.23595; code
ulab-uiuc/Multi-agent-evolve); shared/refs/rl.md section 2 has the roles, rewards and numbers. The
mechanism is :mod:`jaxstack.rl.mae`; this module runs the study.

Domain: fixed-width addition (``07+35`` -> ``240``, least significant digit first; :mod:`jaxstack.rl.mae.domain`).
Ground truth exists for every question but the MAE learner never sees it: it is used to *measure*
(and by the GRPO upper bound). A tiny policy is first taught the three roles by SFT on noisy role
demonstrations (wrong answers, malformed questions, judges whose arithmetic is wrong), then each arm
runs the same number of RL steps from that base:

* ``base``: the SFT policy, no RL;
* ``mae_no_reference`` / ``mae_half_reference`` / ``mae_with_reference``: MAE with
  ``include_references`` 0 / 0.5 / 1 (the paper's three MAE settings);
* ``frozen_proposer``: MAE (half reference) whose proposer is the frozen base and is not trained;
* ``grpo_true_checker``: solver-only GRPO with the true checker's reward (labels: the upper bound);
* ``judge_noise_sweep`` arms (``mae_judge_noise_<p>``): MAE (half reference) whose judge scores are
  replaced by uniform draws with probability p (p = 1: a judge that scores at random), for the gain
  as a function of the judge's error.

Measured against ground truth: solver accuracy in distribution (held-out 1-2 digit operands) and out
of distribution (3-digit operands), one T = 1 sample per question; beyond the paper, the judge's
agreement with ground truth over training (balanced probes and the live answers), the share of
proposed questions passing the 0.7 gate, question difficulty over time (true solve rate, width,
carries) and the gain against the judge's initial error. Every number is a mean over seeds with its
standard error (SE). The verdict's criterion (:data:`CRITERION`) is fixed here before any run.

Everything is written under ``runs/mae/<stamp>/`` (config.json, metrics.jsonl with every step of
every run, sft.jsonl, summary.json, summary.md, accuracy.png, dynamics.png). The paper's numbers
(:data:`PAPER`) are quoted beside ours, never presented as ours.

The ``paper`` preset (``--init_from`` a local Qwen2.5-3B-Instruct directory, ``--seed_file``, and
``--eval_files`` local JSONL benchmarks of ``{"question", "answer"}``) runs the same loop with the
natural-language templates in the model's chat template and exact-match evaluation; see
``scripts/mae_paper.sh``.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxstack.config import to_dict
from jaxstack.data.jsonl import jsonl_objects
from jaxstack.models.configs import LlamaConfig
from jaxstack.rl.loop import init_masters
from jaxstack.rl.mae import (
    INSTRUCT_TEMPLATES,
    TOY_TEMPLATES,
    TOY_VOCAB,
    ArithmeticDomain,
    DemoNoise,
    MAEConfig,
    RoleSetup,
    TagTokenizer,
    Templates,
    TextTokenizer,
    default_seed_file,
    init_state,
    judge_agreement,
    judge_probes,
    load_seed_questions,
    sft_roles,
    solver_accuracy,
    step,
)
from jaxstack.rl.mae.domain import answer_of
from jaxstack.rl.mae.selfplay import generate
from jaxstack.runs import RunRecord, pyplot

PAPER = {
    "source": "README of github.com/ulab-uiuc/Multi-agent-evolve (Qwen2.5-3B-Instruct; 12 ID and 8 OOD "
              "benchmarks, graded by a 70B LLM judge), as quoted in shared/refs/rl.md section 2.7",
    "table": [
        {"setting": "Qwen2.5-3B-Instruct (base)", "id": 63.34, "ood": 41.32, "total": 55.33},
        {"setting": "AZR", "id": 67.09, "ood": 41.33, "total": 57.72},
        {"setting": "MAE (zero)", "id": 68.37, "ood": 42.48, "total": 58.51},
        {"setting": "SFT (w/ reference questions)", "id": 67.08, "ood": 41.89, "total": 57.92},
        {"setting": "MAE (with reference)", "id": 65.07, "ood": 43.18, "total": 57.11},
        {"setting": "MAE (no reference)", "id": 69.45, "ood": 43.99, "total": 60.19},
        {"setting": "MAE (half reference)", "id": 68.95, "ood": 43.96, "total": 59.87},
    ],
    "headline": "+4.54 points total average: MAE (half reference) 59.87 - base 55.33",
}

ARMS: dict[str, dict[str, Any] | None] = {
    "base": None,
    "mae_no_reference": {"include_references": 0.0},
    "mae_half_reference": {"include_references": 0.5},
    "mae_with_reference": {"include_references": 1.0},
    "frozen_proposer": {"include_references": 0.5, "freeze_proposer": True},
    "grpo_true_checker": {"mode": "grpo"},
}
HEADLINE = "mae_half_reference"
MAE_ARMS = ("mae_no_reference", "mae_half_reference", "mae_with_reference")
#: the smallest gain that counts, in accuracy (one point): with few seeds an SE can come out ~0
MIN_GAIN = 0.01

# Pre-registered before any number is computed; :func:`verdict` applies it to the aggregated rows.
CRITERION = (
    "Headline (the paper's +4.54 is MAE half reference over base): the in-distribution (ID) accuracy of "
    "mae_half_reference minus base, paired over seeds (mean and SE = sd / sqrt(n)), against ground truth. "
    "'reproduced' if that gain exceeds both 2 SE and 0.01 and the OOD gain is not below -2 SE; 'partially' "
    "if any MAE arm (no / half / with reference) has an ID or OOD gain exceeding both 2 SE and 0.01; "
    "'not reproduced' otherwise. The paper's secondary ordering (no reference >= half reference > with "
    "reference on ID) is reported, not tested."
)


def _exceeds(stat: dict[str, float]) -> bool:
    return stat["mean"] > max(2 * stat["se"], MIN_GAIN)


def verdict(gains: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """The pre-registered verdict (:data:`CRITERION`). gains: {arm: {"id": {mean, se}, "ood": {mean, se}}}
    of arm minus base, paired over seeds."""
    if HEADLINE not in gains:
        return {"result": "not evaluated", "criterion": CRITERION, "reason": f"arm {HEADLINE} was not run"}
    head = gains[HEADLINE]
    id_ok = _exceeds(head["id"])
    ood_ok = head["ood"]["mean"] >= -2 * head["ood"]["se"]
    any_arm = {arm: _exceeds(gains[arm]["id"]) or _exceeds(gains[arm]["ood"]) for arm in MAE_ARMS if arm in gains}
    result = "reproduced" if id_ok and ood_ok else "partially" if any(any_arm.values()) else "not reproduced"
    return {"result": result, "criterion": CRITERION, "headline_arm": HEADLINE, "id_gain": head["id"],
            "ood_gain": head["ood"], "checks": {"id_gain_above_2se": id_ok, "ood_not_below_2se": ood_ok,
                                                "any_mae_arm_gains": any_arm},
            "mae_beats_base": bool(id_ok)}


#: The tiny policy: 2 layers, d = 64, GQA 4:2, MLP 256, the toy's tag vocabulary (~125k parameters).
TINY_MODEL = LlamaConfig(vocab_size=len(TOY_VOCAB), hidden_size=64, intermediate_size=256, num_layers=2,
                         num_heads=4, num_kv_heads=2, max_position_embeddings=64)

TINY_MAE = MAEConfig(steps=40, proposer_prompts=16, solver_prompts=48, quality_samples=2, difficulty_samples=2,
                     learning_rate=5e-4, rollout_rows=32, micro_rows=32, prompt_width=20, max_new_tokens=16,
                     entropy_coef=(0.001, 0.001, 0.001))


@dataclasses.dataclass(frozen=True)
class Config:
    """The study. ``mae``: the RL settings every arm shares (arms override a few fields, :data:`ARMS`).

    seeds: RL seeds (sampling, dataset draws, evaluation keys); sft_per_seed: one SFT base per seed
    (else one base from ``sft_seed`` for all seeds: the seeds then vary the RL only, and the base's
    own seed-to-seed spread is not in the error bars). sft_target: stop SFT at the first evaluation
    whose ID accuracy lies in this band (None: run ``sft_steps``). judge_noise_sweep: extra MAE
    (half reference) arms with that judge noise. eval_every: RL steps between ground-truth
    evaluations. seed_file: local seed questions (None: the file shipped with ``jaxstack.rl.mae``).
    show_progress: a tqdm bar over each run's RL steps. init_from / eval_files / eval_limit: the paper
    preset (a local HF model directory; local JSONL benchmarks of {"question", "answer"}, exact match;
    at most eval_limit items per file).
    """

    model: LlamaConfig = TINY_MODEL
    mae: MAEConfig = TINY_MAE
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = tuple(ARMS)
    judge_noise_sweep: tuple[float, ...] = (0.5, 1.0)
    seed_file: str | None = None
    noise: DemoNoise = dataclasses.field(default_factory=lambda: DemoNoise(solver_wrong=0.1, judge_arithmetic=0.1))
    sft_steps: int = 1600
    sft_batch: int = 64
    sft_learning_rate: float = 3e-3
    sft_eval_every: int = 200
    sft_target: tuple[float, float] | None = None
    sft_per_seed: bool = False
    sft_seed: int = 0
    eval_every: int = 20
    eval_questions: int = 256
    judge_probe_count: int = 128
    show_progress: bool = True
    init_from: str | None = None
    eval_files: tuple[str, ...] = ()
    eval_limit: int = 500
    out_dir: str = "runs"
    run_name: str | None = None

    def __post_init__(self):
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ValueError(f"Config.arms: unknown arms {unknown}; expected a subset of {list(ARMS)}")
        if not self.seeds:
            raise ValueError("Config.seeds: expected at least one seed")
        if any(not 0.0 <= p <= 1.0 for p in self.judge_noise_sweep):
            raise ValueError(f"Config.judge_noise_sweep: expected probabilities in [0, 1], got {self.judge_noise_sweep}")
        for name in ("sft_batch", "eval_every", "eval_questions", "judge_probe_count", "eval_limit"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Config.{name}: expected a positive integer, got {getattr(self, name)}")
        if self.sft_steps < 0:
            raise ValueError(f"Config.sft_steps: expected >= 0, got {self.sft_steps}")
        if self.sft_target is not None and not 0.0 <= self.sft_target[0] <= self.sft_target[1] <= 1.0:
            raise ValueError(f"Config.sft_target: expected 0 <= low <= high <= 1, got {self.sft_target}")
        if self.init_from is None:
            if self.model.vocab_size != len(TOY_VOCAB):
                raise ValueError(f"Config.model.vocab_size: expected the toy vocabulary's {len(TOY_VOCAB)} tokens, "
                                 f"got {self.model.vocab_size}")
        else:
            if "grpo_true_checker" in self.arms:
                raise ValueError("Config.arms: grpo_true_checker needs the toy's true checker; drop it with "
                                 "--init_from (the paper preset)")
            if not self.eval_files:
                raise ValueError("Config.eval_files: the paper preset evaluates on local benchmark files "
                                 "(JSONL of {\"question\", \"answer\"}); pass --eval_files=a.jsonl,b.jsonl")


PRESETS = {
    # < 10 minutes on 2 idle CPU cores: one SFT base; 5 RL arms + 2 judge-noise arms (p = 0.5, 1) x 3 seeds x 40
    # steps.
    "tiny": Config(),
    # One accelerator, the paper's settings (shared/refs/rl.md 2.5): a local Qwen2.5-3B-Instruct, lr 1e-6,
    # batch 128 rows per role batch of rollout 1 (one sample per prompt), T = 1.0, no KL, entropy 0.001.
    # Prompt / response budgets are cut from 8192 to 1024 / 1024 to fit one H200.
    "paper": Config(
        init_from="REQUIRED: --init_from=<local Qwen2.5-3B-Instruct directory>",
        eval_files=("REQUIRED: --eval_files=<local JSONL benchmarks>",),
        seeds=(0,), arms=("base", "mae_no_reference", "mae_half_reference", "mae_with_reference"),
        judge_noise_sweep=(), sft_steps=0, sft_target=None, eval_every=50,
        mae=MAEConfig(steps=200, proposer_prompts=64, solver_prompts=64, quality_samples=3, difficulty_samples=3,
                      learning_rate=1e-6, grad_clip=1.0, entropy_coef=(0.001, 0.001, 0.001), train_policy="bf16-mixed",
                      knobs="kv_cache", rollout_rows=64, micro_rows=4, prompt_width=1024, max_new_tokens=1024,
                      max_question_tokens=512, max_answer_tokens=384, max_evolved=4096),
    ),
}


# ----------------------------------------------------------------------------------------------------
# Statistics


def mean_se(values) -> dict[str, float]:
    """Mean and standard error (sd with ddof 1 / sqrt(n); 0 for one value) of ``values``."""
    values = np.asarray([v for v in values if v is not None], np.float64)
    if values.size == 0:
        return {"mean": float("nan"), "se": float("nan"), "n": 0}
    se = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0
    return {"mean": float(values.mean()), "se": se, "n": int(values.size)}


# ----------------------------------------------------------------------------------------------------
# The toy


def _toy_setup(config: Config) -> RoleSetup:
    return RoleSetup(config.model, TagTokenizer(TOY_VOCAB), TOY_TEMPLATES, ArithmeticDomain())


def _arm_configs(config: Config) -> dict[str, MAEConfig | None]:
    arms = {name: (None if ARMS[name] is None else dataclasses.replace(config.mae, **ARMS[name]))
            for name in config.arms}
    for p in config.judge_noise_sweep:
        arms[f"mae_judge_noise_{p:g}"] = dataclasses.replace(config.mae, include_references=0.5, judge_noise=p)
    return arms


def _evaluate(masters, setup, mae_cfg: MAEConfig, sets, key, rng_seed: int) -> dict[str, float]:
    """ID / OOD solver accuracy and judge agreement on the probes (the run's judge noise applied)."""
    k1, k2, k3 = jax.random.split(key, 3)
    return {"id_accuracy": solver_accuracy(masters, setup, mae_cfg, sets["id"], k1)["accuracy"],
            "ood_accuracy": solver_accuracy(masters, setup, mae_cfg, sets["ood"], k2)["accuracy"],
            **{f"judge_{k}": v for k, v in judge_agreement(masters, setup, mae_cfg, sets["probes"], k3,
                                                           rng=np.random.default_rng(rng_seed)).items()}}


def _sft_base(config: Config, setup: RoleSetup, seed: int, eval_questions, record: RunRecord):
    start = time.perf_counter()
    masters = init_masters(config.model, seed)
    if config.sft_steps == 0:
        return masters, []
    masters, log = sft_roles(masters, setup, config.mae, steps=config.sft_steps, batch_size=config.sft_batch,
                             learning_rate=config.sft_learning_rate, noise=config.noise, seed=seed,
                             eval_every=config.sft_eval_every, eval_questions=eval_questions,
                             target=config.sft_target,
                             progress=lambda r: print(f"  SFT seed {seed} step {r['step']}: loss {r['loss']:.3f}, "
                                                      f"ID accuracy {r.get('accuracy', float('nan')):.3f}",
                                                      flush=True))
    for row in log:
        row.update(seed=seed, wall_s=time.perf_counter() - start)
    return masters, log


def _run_arm(base, setup, arm: str, mae_cfg: MAEConfig, seeds_questions, sets, seed: int, config: Config,
             record: RunRecord, initial: dict) -> dict[str, Any]:
    """One RL run of ``mae_cfg.steps`` steps from ``base``: metrics per step, evaluations every
    ``eval_every`` steps (and at 0 and the end). initial: the step-0 evaluations already made, by
    judge noise (the same base, keys and draws give the same numbers)."""
    cfg = dataclasses.replace(mae_cfg, seed=seed)
    state = init_state(base, seeds_questions, cfg)
    eval_key = jax.random.key(10_000 + seed)  # the same evaluation draws for every arm of a seed
    if cfg.judge_noise not in initial:
        initial[cfg.judge_noise] = {"step": 0, **_evaluate(base, setup, cfg, sets, eval_key, seed)}
    evals = [dict(initial[cfg.judge_noise])]
    history = []
    for index in tqdm(range(1, cfg.steps + 1), desc=f"{arm} seed {seed}", leave=False,
                      disable=not config.show_progress):
        metrics = step(state, setup, cfg)
        history.append(metrics)
        record.log_metrics(index, arm=arm, seed=seed, kind="train", **metrics)
        if index % config.eval_every == 0 or index == cfg.steps:
            evals.append({"step": index, **_evaluate(state.masters, setup, cfg, sets, eval_key, seed)})
            record.log_metrics(index, arm=arm, seed=seed, kind="eval", **evals[-1])
    return {"history": history, "evals": evals, "final": evals[-1], "buffer_evolved": len(state.buffer.evolved)}


def run(config: Config) -> pathlib.Path:
    """Runs the study and writes its record; returns the run directory."""
    if config.init_from is not None:
        return run_paper(config)
    start = time.perf_counter()
    record = RunRecord.create(config.out_dir, "mae", {"config": to_dict(config), "paper": PAPER,
                                                      "criterion": CRITERION, "jax": jax.__version__,
                                                      "backend": jax.default_backend()}, stamp=config.run_name)
    setup = _toy_setup(config)
    domain = setup.domain
    seeds_questions = load_seed_questions(config.seed_file or default_seed_file())
    rng = np.random.default_rng(1234)  # the evaluation sets: fixed across seeds and arms
    sets = {"id": domain.questions(rng, config.eval_questions, held_out=True),
            "ood": domain.questions(rng, config.eval_questions, (domain.ood_width,), held_out=None),
            "probes": judge_probes(domain, rng, config.judge_probe_count)}
    sft_questions = domain.questions(np.random.default_rng(4321), 128, held_out=True)
    arms = _arm_configs(config)
    print(f"mae: {config.model.num_params():,}-parameter policy, arms {list(arms)}, seeds {list(config.seeds)}, "
          f"{config.mae.steps} steps -> {record.dir}", flush=True)

    bases, sft_log = {}, []
    for seed in (config.seeds if config.sft_per_seed else (config.sft_seed,)):
        bases[seed], log = _sft_base(config, setup, seed, sft_questions, record)
        sft_log += log
    record.write_jsonl("sft.jsonl", sft_log)
    sft_wall = time.perf_counter() - start

    runs: dict[str, dict[int, dict]] = {arm: {} for arm in arms}
    for seed in config.seeds:
        base = bases[seed if config.sft_per_seed else config.sft_seed]
        initial: dict[float, dict] = {}
        for arm, mae_cfg in arms.items():
            t0 = time.perf_counter()
            if mae_cfg is None:
                cfg = dataclasses.replace(config.mae, seed=seed)
                if cfg.judge_noise not in initial:
                    initial[cfg.judge_noise] = {"step": 0, **_evaluate(base, setup, cfg, sets,
                                                                       jax.random.key(10_000 + seed), seed)}
                evaluation = dict(initial[cfg.judge_noise])
                runs[arm][seed] = {"history": [], "evals": [evaluation], "final": evaluation}
                record.log_metrics(0, arm=arm, seed=seed, kind="eval", **evaluation)
            else:
                runs[arm][seed] = _run_arm(base, setup, arm, mae_cfg, seeds_questions, sets, seed, config, record,
                                           initial)
            final = runs[arm][seed]["final"]
            print(f"  {arm} seed {seed}: ID {final['id_accuracy']:.3f}, OOD {final['ood_accuracy']:.3f}, judge "
                  f"agreement {final['judge_agreement']:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    summary = _summarise(config, runs, arms, sft_log, sets)
    summary["wall_s"] = time.perf_counter() - start
    summary["sft_wall_s"] = sft_wall
    record.write_summary(summary)
    replot(record.dir)  # the figures from summary.json itself: every plotted number is in it
    (record.dir / "summary.md").write_text(_markdown(summary, record.dir))
    v = summary["verdict"]
    print(f"mae: verdict {v['result']} (ID gain of {HEADLINE} {v.get('id_gain', {}).get('mean', float('nan')):+.3f} "
          f"+- {v.get('id_gain', {}).get('se', float('nan')):.3f}); {summary['wall_s']:.0f} s; {record.dir}", flush=True)
    return record.dir


# ----------------------------------------------------------------------------------------------------
# Summary


def _curve(runs_by_seed: dict[int, dict], key: str, source: str = "history") -> dict[str, list]:
    """Mean and SE over seeds, per step, of ``key`` in each run's history (or evals)."""
    per_seed = [{row["step"]: row.get(key) for row in run[source]} for run in runs_by_seed.values()]
    steps = sorted(set().union(*[set(s) for s in per_seed])) if per_seed else []
    stats = [mean_se([s.get(t) for s in per_seed]) for t in steps]
    return {"step": steps, "mean": [x["mean"] for x in stats], "se": [x["se"] for x in stats]}


def _summarise(config: Config, runs, arms, sft_log, sets) -> dict[str, Any]:
    seeds = list(config.seeds)
    accuracy, gains = {}, {}
    for arm in arms:
        finals = runs[arm]
        accuracy[arm] = {metric: mean_se([finals[s]["final"][f"{metric}_accuracy"] for s in seeds])
                         for metric in ("id", "ood")}
        accuracy[arm]["judge_agreement"] = mean_se([finals[s]["final"]["judge_agreement"] for s in seeds])
        if "base" in runs and arm != "base":
            gains[arm] = {metric: mean_se([finals[s]["final"][f"{metric}_accuracy"]
                                           - runs["base"][s]["final"][f"{metric}_accuracy"] for s in seeds])
                          for metric in ("id", "ood")}
    dynamics = {}
    for arm, cfg in arms.items():
        if cfg is None:
            continue
        entry = {"id_accuracy": _curve(runs[arm], "id_accuracy", "evals"),
                 "ood_accuracy": _curve(runs[arm], "ood_accuracy", "evals"),
                 "judge_agreement_probe": _curve(runs[arm], "judge_agreement", "evals"),
                 "solver_reward": _curve(runs[arm], "solver/reward")}
        if cfg.mode == "mae":
            for key in ("judge/agreement", "proposer/gate_pass", "proposer/true_difficulty",
                        "proposer/judged_difficulty", "proposer/digits", "proposer/carries", "proposer/well_formed",
                        "judge/accept_rate", "buffer/evolved", "proposer/reward"):
                entry[key.replace("/", "_")] = _curve(runs[arm], key)
        dynamics[arm] = entry
    # the gain against the judge's initial error (one point per MAE run)
    points = []
    for arm, cfg in arms.items():
        if cfg is None or cfg.mode != "mae" or "base" not in runs:
            continue
        for s in seeds:
            initial = runs[arm][s]["evals"][0]
            points.append({"arm": arm, "seed": s, "judge_initial_error": 1.0 - initial["judge_agreement"],
                           "id_gain": runs[arm][s]["final"]["id_accuracy"] - runs["base"][s]["final"]["id_accuracy"],
                           "ood_gain": runs[arm][s]["final"]["ood_accuracy"]
                           - runs["base"][s]["final"]["ood_accuracy"]})
    slope = None
    if len({round(p["judge_initial_error"], 6) for p in points}) > 1:
        x = np.array([p["judge_initial_error"] for p in points])
        y = np.array([p["id_gain"] for p in points])
        slope = float(np.polyfit(x, y, 1)[0])
    mae_runs = [runs[a][s] for a in arms if arms[a] is not None and arms[a].mode == "mae" for s in seeds]
    drift = {}
    for arm in arms:
        if arms[arm] is not None and arms[arm].mode == "mae":
            drift[arm] = mean_se([runs[arm][s]["final"]["judge_agreement"] - runs[arm][s]["evals"][0]["judge_agreement"]
                                  for s in seeds])
    headline = verdict(gains)
    base_accuracy = accuracy.get("base", {}).get("id", {}).get("mean")
    return {
        "label": (f"toy scale: a {config.model.num_params():,}-parameter policy on fixed-width addition, "
                  f"{jax.default_backend()} backend, {len(seeds)} seeds x {config.mae.steps} RL steps per arm; the "
                  "paper's numbers are quoted, not reproduced"),
        "paper": PAPER,
        "criterion": CRITERION,
        "verdict": headline,
        "mae_beats_base": headline.get("mae_beats_base"),
        "statement": (f"MAE (half reference) {'beats' if headline.get('mae_beats_base') else 'does not beat'} the "
                      "base on ID accuracy by the pre-registered criterion (base "
                      + ("not run" if base_accuracy is None else f"{base_accuracy:.3f}") + ")"),
        "accuracy": accuracy,
        "gain_vs_base": gains,
        "judge_agreement_drift": drift,
        "gain_vs_judge_error": {"points": points, "slope_id_gain_per_error": slope},
        "dynamics": dynamics,
        "gate_pass_share": {arm: mean_se([np.mean([h["proposer/gate_pass"] for h in runs[arm][s]["history"]])
                                          for s in seeds])
                            for arm in arms if arms[arm] is not None and arms[arm].mode == "mae"},
        "sft": {"log": sft_log, "per_seed": config.sft_per_seed},
        "eval_sets": {"id": len(sets["id"]), "ood": len(sets["ood"]), "judge_probes": len(sets["probes"])},
        "wall_s_per_step": float(np.median([h["wall_s"] for r in mae_runs for h in r["history"]])) if mae_runs else None,
    }


ARM_LABELS = {"base": "base (SFT)", "mae_no_reference": "MAE no ref", "mae_half_reference": "MAE half ref",
              "mae_with_reference": "MAE with ref", "frozen_proposer": "frozen proposer",
              "grpo_true_checker": "GRPO true checker"}


#: the live per-step curves of the dynamics panel are drawn as moving means over this many steps
SMOOTH_STEPS = 5

ARM_COLORS = {"base": "C7", "mae_no_reference": "C0", "mae_half_reference": "C1", "mae_with_reference": "C2",
              "frozen_proposer": "C3", "grpo_true_checker": "C4"}


def _color(arm: str) -> str:
    return ARM_COLORS.get(arm, "C5" if arm.endswith("_1") else "C6")


def _label(arm: str) -> str:
    if arm.startswith("mae_judge_noise_"):
        return f"MAE judge noise {arm.rsplit('_', 1)[1]}"
    return ARM_LABELS.get(arm, arm)


def _plot_accuracy(summary: dict, record: RunRecord) -> None:
    plt = pyplot()
    arms = list(summary["accuracy"])
    fig, (ours, theirs) = plt.subplots(1, 2, figsize=(15, 4.8), gridspec_kw={"width_ratios": [1.3, 1]})
    x = np.arange(len(arms))
    for offset, metric, label in ((-0.2, "id", "ID (1-2 digit operands)"), (0.2, "ood", "OOD (3-digit operands)")):
        means = [summary["accuracy"][a][metric]["mean"] for a in arms]
        ses = [summary["accuracy"][a][metric]["se"] for a in arms]
        bars = ours.bar(x + offset, means, 0.4, yerr=ses, capsize=3, label=label)
        for bar, m, e in zip(bars, means, ses):
            ours.annotate(f"{m:.2f}", (bar.get_x() + bar.get_width() / 2, m + e + 0.005), ha="center", va="bottom",
                          fontsize=7)
    if "base" in summary["accuracy"]:
        ours.axhline(summary["accuracy"]["base"]["id"]["mean"], color="k", ls="--", lw=0.8, label="base ID")
    ours.set_xticks(x, [_label(a) for a in arms], rotation=25, ha="right", fontsize=8)
    ours.set_ylabel("solver accuracy vs ground truth (1 sample, T = 1)")
    no_ood = all(summary["accuracy"][a]["ood"]["mean"] == 0 for a in arms)
    ours.set_title(f"ours (toy): mean +- SE over {summary['accuracy'][arms[0]]['id']['n']} seeds; "
                   f"verdict: {summary['verdict']['result']}"
                   + ("\nOOD accuracy is 0 in every arm (no arm learned 3-digit sums)" if no_ood else ""), fontsize=9)
    top = max([summary["accuracy"][a][m]["mean"] + summary["accuracy"][a][m]["se"] for a in arms for m in ("id", "ood")]
              + [0.05])
    ours.set_ylim(0, min(1.05, top * 1.3))
    ours.legend(fontsize=8, loc="upper center", ncol=3)
    table = PAPER["table"]
    y = np.arange(len(table))
    theirs.barh(y - 0.2, [r["id"] for r in table], 0.4, label="ID avg", color="C0", alpha=0.6)
    theirs.barh(y + 0.2, [r["ood"] for r in table], 0.4, label="OOD avg", color="C1", alpha=0.6)
    for i, r in enumerate(table):
        theirs.annotate(f"{r['id']:.2f} / {r['ood']:.2f}", (max(r["id"], r["ood"]) + 0.5, i), va="center", fontsize=7)
    theirs.set_yticks(y, [r["setting"] for r in table], fontsize=8)
    theirs.invert_yaxis()
    theirs.set_xlim(0, 100)
    theirs.set_xlabel("benchmark average (%)")
    theirs.set_title("paper's numbers (README of ulab-uiuc/Multi-agent-evolve,\nQwen2.5-3B-Instruct; not ours)",
                     fontsize=9)
    theirs.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    fig.tight_layout()
    record.save_plot(fig, "accuracy.png", dpi=110)


def _moving_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving mean over ``window`` points, skipping NaNs (the ends average fewer points)."""
    half = window // 2
    out = np.full(values.shape, np.nan)
    for i in range(len(values)):
        near = values[max(0, i - half):i + half + 1]
        near = near[np.isfinite(near)]
        if near.size:
            out[i] = near.mean()
    return out


def _band(ax, curve, label, smooth: int = 1, **kwargs):
    """Mean +- SE over seeds; ``smooth`` > 1: both as a centred moving mean over that many steps."""
    steps = np.asarray(curve["step"], float)
    mean = _moving_mean(np.asarray([np.nan if m is None else m for m in curve["mean"]], float), smooth)
    se = _moving_mean(np.nan_to_num(np.asarray([np.nan if s is None else s for s in curve["se"]], float)), smooth)
    line, = ax.plot(steps, mean, label=label, **kwargs)
    ax.fill_between(steps, mean - se, mean + se, alpha=0.2, color=line.get_color())


def _plot_dynamics(summary: dict, record: RunRecord) -> None:
    plt = pyplot()
    dynamics = summary["dynamics"]
    smooth = SMOOTH_STEPS
    live = f" ({smooth}-step mean)"
    panels = [("id_accuracy", "ID accuracy (held-out evaluation)", 1),
              ("judge_agreement_probe", "judge agreement with truth (balanced probes)", 1),
              ("judge_agreement", "judge agreement with truth, live answers" + live, smooth),
              ("proposer_gate_pass", "share of questions passing the 0.7 gate" + live, smooth),
              ("proposer_true_difficulty", "question difficulty: 1 - true solve rate" + live, smooth),
              ("proposer_digits", "proposed operand width (digits)" + live, smooth)]
    fig, axes = plt.subplots(2, 4, figsize=(20, 8))
    for ax, (key, title, window) in zip(axes.flat, panels):
        for arm, entry in dynamics.items():
            if key in entry:
                _band(ax, entry[key], _label(arm), smooth=window, color=_color(arm))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("RL step")
    for ax in axes.flat[1:3]:
        ax.axhline(0.5, color="k", ls=":", lw=0.8, label="chance")
    axes.flat[0].legend(fontsize=7)
    # the gain against the judge's initial error
    ax = axes.flat[6]
    points = summary["gain_vs_judge_error"]["points"]
    for arm in dict.fromkeys(p["arm"] for p in points):
        mine = [p for p in points if p["arm"] == arm]
        ax.scatter([p["judge_initial_error"] for p in mine], [p["id_gain"] for p in mine], label=_label(arm), s=18,
                   color=_color(arm))
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("judge's initial error (1 - probe agreement)")
    ax.set_ylabel("ID accuracy gain over base")
    slope = summary["gain_vs_judge_error"]["slope_id_gain_per_error"]
    ax.set_title("gain vs judge's initial error (one point per run" + ("" if slope is None else
                 f"; least-squares slope {slope:+.2f}") + ")", fontsize=9)
    ax.legend(fontsize=6)
    ax = axes.flat[7]
    for arm, entry in dynamics.items():
        if "judge_accept_rate" in entry:
            _band(ax, entry["judge_accept_rate"], _label(arm), smooth=smooth, color=_color(arm))
    ax.set_title("judge accept rate, live answers (collusion check)" + live, fontsize=9)
    ax.set_xlabel("RL step")
    fig.suptitle("MAE dynamics (toy; mean +- SE over seeds; ground truth used only to measure)", fontsize=10)
    fig.tight_layout()
    record.save_plot(fig, "dynamics.png", dpi=100)


def replot(run_dir: str | pathlib.Path) -> None:
    """Draws accuracy.png and dynamics.png of a run from its summary.json (also to redraw a finished run)."""
    record = RunRecord.open(run_dir)
    summary = record.read_summary()
    _plot_accuracy(summary, record)
    _plot_dynamics(summary, record)


def _fmt(stat: dict | None) -> str:
    if not stat or stat.get("n", 0) == 0:
        return "-"
    return f"{stat['mean']:.3f} +- {stat['se']:.3f}"


def _markdown(summary: dict, out: pathlib.Path) -> str:
    lines = [f"# mae ({out})", "", summary["label"], "", (f"**Verdict: {summary['verdict']['result']}.** "
                                                         f"{summary['statement']}."), "", f"Criterion (fixed before the run): {summary['criterion']}", "",
             "| arm | ID accuracy | OOD accuracy | ID gain vs base | OOD gain vs base | judge agreement (end) |",
             "|---|---|---|---|---|---|"]
    for arm, acc in summary["accuracy"].items():
        gain = summary["gain_vs_base"].get(arm, {})
        lines.append(f"| {_label(arm)} | {_fmt(acc['id'])} | {_fmt(acc['ood'])} | {_fmt(gain.get('id'))} | "
                     f"{_fmt(gain.get('ood'))} | {_fmt(acc['judge_agreement'])} |")
    lines += ["", "Gate pass share (mean over steps): " + ", ".join(
        f"{_label(a)} {_fmt(v)}" for a, v in summary["gate_pass_share"].items()),
        "", "Judge agreement drift (end - start, probes): " + ", ".join(
        f"{_label(a)} {_fmt(v)}" for a, v in summary["judge_agreement_drift"].items()),
        "", f"Gain vs judge's initial error: slope {summary['gain_vs_judge_error']['slope_id_gain_per_error']}",
        "", "Paper's numbers (README, Qwen2.5-3B-Instruct; not ours): " + "; ".join(
        f"{r['setting']} ID {r['id']} / OOD {r['ood']}" for r in PAPER["table"]), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# The paper preset: a local instruction-tuned model, natural-language prompts, exact-match benchmarks


def chat_templates(templates: Templates, render) -> Templates:
    """Each template as the user turn of a chat rendered by ``render(messages) -> text`` (the model's
    chat template with the generation prompt), its ``{field}`` placeholders kept for ``format``."""
    fields = {}
    for field in dataclasses.fields(templates):
        text = getattr(templates, field.name)
        names = re.findall(r"\{(\w+)\}", text)
        sentinel = {name: f"\x00{name}\x00" for name in names}
        rendered = render([{"role": "user", "content": text.format(**sentinel)}])
        rendered = rendered.replace("{", "{{").replace("}", "}}")
        for name, mark in sentinel.items():
            rendered = rendered.replace(mark, "{" + name + "}")
        fields[field.name] = rendered
    return Templates(**fields)


def load_benchmark(path: str | pathlib.Path, limit: int) -> list[tuple[str, str]]:
    """(question, answer) pairs of a local JSONL benchmark file (at most ``limit``). Raises ValueError
    naming the file and line of a bad record."""
    items = []
    for number, record in jsonl_objects(path, "eval_files"):
        if not isinstance(record.get("question"), str) or "answer" not in record:
            raise ValueError(f"eval_files: {path}:{number}: expected an object with 'question' and 'answer'")
        items.append((record["question"], str(record["answer"])))
        if len(items) >= limit:
            break
    return items


def normalise_answer(text: str) -> str:
    """Exact-match normalisation: lower case, collapsed whitespace, no surrounding punctuation."""
    return re.sub(r"\s+", " ", text.strip().lower()).strip(" .,:;!\"'")


def run_paper(config: Config) -> pathlib.Path:
    """The paper preset: MAE arms on a local instruction-tuned model, exact match on local benchmarks."""
    from flax import nnx

    from jaxstack.data.chat import apply_chat_template, load_chat_template
    from jaxstack.data.tokenizer import load_tokenizer
    from jaxstack.models.checkpoint import load_pretrained

    model_dir = pathlib.Path(config.init_from)
    if not model_dir.is_dir():
        raise ValueError(f"init_from: {model_dir} is not a local model directory")
    start = time.perf_counter()
    benchmarks = {pathlib.Path(f).stem: load_benchmark(f, config.eval_limit) for f in config.eval_files}
    seeds_questions = load_seed_questions(config.seed_file or default_seed_file())
    model = load_pretrained(model_dir, scan_layers=True, remat=True)
    masters = jax.tree.map(lambda x: x.astype(jnp.float32), nnx.state(model, nnx.Param))
    hf = load_tokenizer(model_dir)
    eos = hf.backend.token_to_id("<|im_end|>")
    if eos is None:
        raise ValueError(f"init_from: the tokenizer of {model_dir} has no <|im_end|> token (a chat model is expected)")
    jinja = load_chat_template(model_dir)
    templates = chat_templates(INSTRUCT_TEMPLATES, lambda messages: apply_chat_template(messages, jinja))
    setup = RoleSetup(model.config, TextTokenizer(hf, eos_id=eos, pad_id=hf.eos_id), templates, None)
    record = RunRecord.create(config.out_dir, "mae", {"config": to_dict(config), "paper": PAPER, "criterion": CRITERION,
                                                      "jax": jax.__version__, "backend": jax.default_backend()},
                              stamp=config.run_name)

    def evaluate(params, key):
        scores = {}
        for name, items in benchmarks.items():
            out = generate(params, setup, config.mae, [templates.solver_prompt(q) for q, _ in items], key)
            scores[name] = float(np.mean([normalise_answer(answer_of(t)) == normalise_answer(a)
                                          for t, (_, a) in zip(out.texts, items)]))
        scores["average"] = float(np.mean(list(scores.values())))
        return scores

    results = {}
    for arm, mae_cfg in _arm_configs(config).items():
        for seed in config.seeds:
            key = jax.random.key(10_000 + seed)
            if mae_cfg is None:
                results[f"{arm}/s{seed}"] = {"step": 0, **evaluate(masters, key)}
                record.log_metrics(0, arm=arm, seed=seed, kind="eval", **results[f"{arm}/s{seed}"])
                continue
            cfg = dataclasses.replace(mae_cfg, seed=seed)
            state = init_state(masters, seeds_questions, cfg)
            for index in range(1, cfg.steps + 1):
                record.log_metrics(index, arm=arm, seed=seed, kind="train", **step(state, setup, cfg))
                if index % config.eval_every == 0 or index == cfg.steps:
                    results[f"{arm}/s{seed}"] = {"step": index, **evaluate(state.masters, key)}
                    record.log_metrics(index, arm=arm, seed=seed, kind="eval", **results[f"{arm}/s{seed}"])
            print(f"  {arm} seed {seed}: {results[f'{arm}/s{seed}']}", flush=True)
    record.write_summary({"label": "paper preset: exact match on local benchmark files (not the paper's LLM-judge "
                                   "grading)", "paper": PAPER, "results": results,
                          "wall_s": time.perf_counter() - start})
    return record.dir


if __name__ == "__main__":
    run(PRESETS["tiny"])

"""SmolLM2's annealing ablation at toy scale: does math in the decay phase teach math, does the math
source matter, and does saving it for the decay cost anything?

Four arms, same model, token budget and tokenizer, on the embedded corpus (``jaxstack.data.embedded``:
web = Python docs prose, code = stdlib source, math_hi = step-by-step arithmetic (FineMath4+-like),
math_lo = the same kind of problems, answers only (OpenWebMath-like)), each trained with every seed of
``Config.seeds``:

* **A** single stage: web 60 / code 30 / math_hi 10 from the start, WSD with the last 20% decayed (the
  135M / 360M recipe: high-quality data throughout);
* **B** stable phase on web 75 / code 25, then a decay phase (the last third, LR linearly to 0) on
  web 50 / code 20 / math_hi 30 -- resumed from the seed's stable-phase Orbax checkpoint with the
  *changed* Grain mixture;
* **C** as B with math_lo instead of math_hi in the decay;
* **D** as B with no math in the decay (web 50 / code 20, renormalised): the control.

Matched on math tokens: A, B and C each see ``decay_math_share x decay tokens`` math tokens (A spreads
them over the whole run), so A vs B varies only *when* math comes and B vs C only *which* math source
(at equal tokens math_lo holds more problems, being shorter per problem). B, C and D start from copies
of the same stable-phase checkpoint, so they are bit-identical until the decay (checked per seed).

Capability probes (held-out problems, never seen in training; 2-choice, ranked by log-likelihood with
``jaxstack.evals.evaluate_multiple_choice``, the code the Global PIQA evaluator uses):

* ``column_step``: a single column step of a held-out problem's step-by-step solution (``Step 1: ones:
  7 + 5 =`` -> ``12``; for products the ones digit times the multiplier), i.e. the arithmetic facts the
  math sources are made of;
* ``answer``: the final answer of a held-out problem in the answer-only format (``Problem: 347 + 285 =
  ?\\nAnswer:`` -> ``632``), the analogue of GSM8K's final-answer scoring.

The distractor of every item is the correct answer of its *partner* item (same operation and answer
length, different answer), and the partner's distractor is this item's answer. A scorer that ignores
the problem -- one that knows only which numbers are likely answers (the format) -- therefore gets
exactly half of every pair right: accuracy 0.5 by construction, so anything above it is arithmetic.

Pre-registered verdicts (``CLAIMS``, written before any number was seen): each claim compares two arms
on one probe, the difference's standard error combining the seed-to-seed spread and item sampling;
the study is ``reproduced`` when every claim holds, ``partially`` when some do, ``not reproduced`` when
none do. The paper's own numbers are quoted in ``PAPER`` and drawn (marked) in ``probes.png``.

Recorded in ``runs/smollm2-mixture/<stamp>/`` (per seed ``seed<k>/{A,B,C,D}/``, the comparison at the top
level): held-out loss per source every ``eval_every`` steps (``per_source_loss.png``), the probes
(``probes.png``), realised token shares vs targets (``token_shares.png``, seed 0), the learning rates
(``lr.png``, seed 0) and ``summary.json``.

What the toy scale can show: the mechanics (token-share mixing per stage, exact resume into a changed
mixture, WSD aligned to stages), the held-out loss of the sources in the decay, and whether a ~1M-parameter
model picks up arithmetic from a decay phase. Measured on the tiny preset (3 seeds): it does not -- both
probes stay at chance for every arm (greedy samples repeat the step format with wrong digits), so the
capability claims are "not reproduced"; the held-out loss of the decay's own source falls sharply,
which is format learning. What it cannot show: benchmark accuracy of real models.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import random
import shutil
import time
from typing import Any

import numpy as np

from jaxstack.config import to_dict
from jaxstack.data import embedded, lm
from jaxstack.data import mixture as mx
from jaxstack.data import tokenizer as tokenizer_lib
from jaxstack.models.configs import LlamaConfig, get_config
from jaxstack.runs import RunRecord, pyplot, read_metrics
from jaxstack.train.optimizers import OptimizerConfig
from jaxstack.train.trainer import TrainConfig, train

EVAL_SOURCES = ("web", "code", "math_hi", "math_lo")
ARMS = ("A", "B", "C", "D")
ARM_LABELS = {"A": "A: math_hi throughout", "B": "B: decay adds math_hi", "C": "C: decay adds math_lo",
              "D": "D: no math in the decay"}
STABLE = "stable"  # the shared stable-phase model of B / C / D (before the decay), scored like an arm
PROBES = ("column_step", "answer")
CHANCE = 0.5


# ----------------------------------------------------------------------------------------------------
# Pre-registered claims (fixed before the first run of this design; do not tune them to the numbers)


@dataclasses.dataclass(frozen=True)
class Claim:
    """``better`` beats ``worse`` on ``probe``: kind "superior" holds when the mean difference exceeds
    ``SE_MULTIPLE`` standard errors; "non_inferior" when it is above minus that many. A claim between two
    math arms is testable only where the probe moves: its reference arm (``better`` for "superior",
    ``worse`` for "non_inferior") must beat the no-math arm D by ``SE_MULTIPLE`` SE on that probe; two
    arms at chance would otherwise pass a non-inferiority test vacuously."""

    name: str
    statement: str
    paper: str
    better: str
    worse: str
    probe: str
    kind: str = "superior"

    @property
    def criterion(self) -> str:
        bound = f"> {SE_MULTIPLE:g} SE" if self.kind == "superior" else f"> -{SE_MULTIPLE:g} SE"
        text = f"acc({self.better}) - acc({self.worse}) on the {self.probe} probe {bound}"
        if CONTROL not in (self.better, self.worse):
            text += f", testable only if acc({self.reference}) - acc({CONTROL}) > {SE_MULTIPLE:g} SE"
        return text

    @property
    def reference(self) -> str:
        return self.better if self.kind == "superior" else self.worse


SE_MULTIPLE = 2.0
CONTROL = "D"  # the arm without math in its decay
CLAIMS = (
    Claim("math_in_decay_teaches_math",
          "a decay phase that adds math raises math capability over a decay without math",
          "stage 4 (the decay, adding FineMath4+ / InfiWebMath-3+ / OWM / AugGSM8K): GSM8K 10.01 -> 32.60 "
          "(Table 8), math average 7.27 -> 22.07 (Table 3)",
          better="B", worse="D", probe="column_step"),
    Claim("step_by_step_math_beats_answer_only",
          "at equal math tokens in the decay, step-by-step math (FineMath4+-like) beats answer-only math "
          "(OWM-like) on final answers",
          "math annealing ablations: FineMath4+ ~2x the GSM8K of InfiMM-WebMath (peak ~14%); OWM ~10%",
          better="B", worse="C", probe="answer"),
    Claim("decay_only_math_no_worse_than_throughout",
          "at equal math tokens, math saved for the decay is no worse than math spread over the whole run",
          "principle stated for the 1.7B run ('save high-quality math for the decay'; no number); the "
          "135M / 360M runs put it throughout",
          better="B", worse="A", probe="column_step", kind="non_inferior"),
)
"""The claims tested; ``verdicts`` applies them to the measured differences."""

# The paper's numbers drawn in probes.png (Allal et al. 2025, arXiv 2502.02737), quoted, not measured.
PAPER = {
    "gsm8k_by_stage": {"stage 3 (before the decay)": 10.01, "stage 4 (decay adds math)": 32.60},
    "annealing_gsm8k_peak": {"OWM": 10.0, "InfiMM-WebMath": 14.0},
    "source": "SmolLM2 paper Table 8 (GSM8K by stage, %) and its math annealing ablations (approximate "
              "peaks, %); FineMath4+ is reported as ~2x InfiMM-WebMath on GSM8K",
}


@dataclasses.dataclass(frozen=True)
class Config:
    """total_tokens: every arm's budget; decay_share: B/C/D's decay stage as a share of it (A decays over
    the last ``single_decay_fraction``); decay_math_share: the math share of B/C's decay mixture (A's
    math share is ``decay_math_share * decay_share``: the same math tokens). train.steps and train.seed
    are ignored (set from the schedule and ``seeds``); the other train fields (batch, seq_len, eval
    cadence) apply to every arm. probe_items: held-out problems per probe (an even number of items,
    paired)."""

    model: LlamaConfig = get_config("smollm2-tiny", vocab_size=2048, hidden_size=128, intermediate_size=384,
                                    num_layers=4, num_heads=4, num_kv_heads=2, max_position_embeddings=512)
    train: TrainConfig = TrainConfig(batch_size=16, seq_len=128, log_every=10, eval_every=30, eval_batches=3,
                                     checkpoint_every=10_000, keep_checkpoints=2)
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=3e-3, warmup_steps=20)
    corpus: embedded.CorpusConfig = embedded.CorpusConfig()
    total_tokens: int = 400_000
    decay_share: float = 1 / 3
    decay_math_share: float = 0.3
    single_decay_fraction: float = 0.2
    tokenizer_chars_per_source: int = 300_000
    probe_items: int = 400
    probe_batch_size: int = 32
    seeds: tuple[int, ...] = (0, 1, 2)
    show_progress: bool = True
    out_dir: str = "runs"  # the record goes to out_dir/smollm2-mixture/<run_name or a timestamp>
    run_name: str | None = None

    def __post_init__(self):
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: expected distinct integers, got {self.seeds!r}")
        if not 0.0 < self.decay_math_share < 1.0:
            raise ValueError(f"decay_math_share: expected a value in (0, 1), got {self.decay_math_share}")


PRESETS = {
    # ~1M parameters, 400k tokens per arm (A 196 steps of 16 x 128; B/C/D share 131 stable steps, then
    # 65 decay steps each), 3 seeds: about 8 minutes on 2 idle CPU cores.
    "tiny": Config(),
    # The SmolLM2-135M shape on the same embedded corpus, for one accelerator: the corpus is ~15 MB of
    # text, so at this scale it is repeated many times -- a pipeline and mechanics check, not a study.
    "paper": Config(
        model=get_config("smollm2-135m", vocab_size=8192, rope_theta=10000.0, max_position_embeddings=2048,
                         scan_layers=True),
        train=TrainConfig(batch_size=64, seq_len=1024, log_every=20, eval_every=200, eval_batches=8,
                          checkpoint_every=100_000, policy="bf16-mixed"),
        optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=200),
        total_tokens=200_000_000, tokenizer_chars_per_source=2_000_000, probe_items=1000,
    ),
}


def schedules(config: Config) -> dict[str, mx.StageSchedule]:
    """arm -> its stage schedule. B, C and D share the stable stage; A's math_hi tokens equal B's."""
    decay_tokens = int(config.total_tokens * config.decay_share)
    math = config.decay_math_share
    stable = mx.Stage("stable", config.total_tokens - decay_tokens, {"web": 75.0, "code": 25.0})

    def schedule(stages, description, **kwargs):
        names = sorted({k for stage in stages for k, _ in stage.weights})
        return mx.StageSchedule(tuple(stages), tuple(mx.SourceSpec(n, format="embedded") for n in names),
                                description=description, **kwargs)

    def anneal(source):
        # the decay's web : code is 50 : 20 with or without math (D: the same mixture, math left out)
        weights = ({"web": 5.0, "code": 2.0} if source is None
                   else {"web": (1 - math) * 5 / 7, "code": (1 - math) * 2 / 7, source: math})
        return schedule((stable, mx.Stage("decay", decay_tokens, weights, lr_phase="decay")),
                        f"stable web/code, decay {'without math' if source is None else 'adds ' + source}")

    single_math = math * decay_tokens / config.total_tokens
    single = mx.Stage("single", config.total_tokens, {"web": (1 - single_math) * 2 / 3,
                                                       "code": (1 - single_math) / 3, "math_hi": single_math})
    return {"A": schedule((single,), "one stage, math_hi throughout", decay_fraction=config.single_decay_fraction),
            "B": anneal("math_hi"), "C": anneal("math_lo"), "D": anneal(None)}


# ----------------------------------------------------------------------------------------------------
# The probes


def _column_step(problem: embedded.Problem) -> tuple[str, str]:
    """(the solution text up to the ``=`` of one column step, that step's result): the ones column for
    + and - (``ones: 7 + 5 =`` -> ``12``; ``ones: 3 < 5, borrow: 13 - 5 =`` -> ``8``), the ones digit
    times the multiplier for * (``7 * 6 =`` -> ``42``, after the decomposition steps)."""
    steps = embedded.solution_steps(problem)
    index = 2 if problem.op == "*" else 0
    head, result = steps[index].rsplit(" = ", 1)
    before = "".join(f"\nStep {i + 1}: {s}" for i, s in enumerate(steps[:index]))
    return f"{problem.question}{before}\nStep {index + 1}: {head} =", result.split(",")[0]


def _paired_items(entries: list[tuple[str, str, Any, dict]], rng: random.Random):
    """MultipleChoiceItems from ``(context, answer, group, meta)`` entries: consecutive entries of one group
    with different answers are paired, and each item's distractor is its partner's answer. So a scorer
    that ranks choices without looking at the context gets exactly one item of every pair right."""
    from jaxstack.evals import MultipleChoiceItem

    groups: dict[Any, list] = {}
    for entry in entries:
        groups.setdefault(entry[2], []).append(entry)
    items = []
    for key in sorted(groups, key=str):
        pending = groups[key]
        while len(pending) >= 2:
            first = pending.pop(0)
            partner = next((i for i, e in enumerate(pending) if e[1] != first[1]), None)
            if partner is None:
                break
            second = pending.pop(partner)
            for own, other in ((first, second), (second, first)):
                label = int(rng.random() < 0.5)
                choices = (other[1], own[1]) if label else (own[1], other[1])
                items.append(MultipleChoiceItem(context=own[0], choices=choices, label=label, meta=own[3]))
    return items


def probe_items(config: Config) -> dict[str, list]:
    """probe name -> paired 2-choice items on the first ``probe_items`` held-out problems (see the module
    docstring). Deterministic; independent of the training seeds."""
    problems = [p for doc in embedded.math_split(config.corpus, "validation") for p in doc][:config.probe_items]
    step_entries, answer_entries = [], []
    for index, problem in enumerate(problems):
        meta = {"index": index, "op": problem.op}
        context, result = _column_step(problem)
        step_entries.append((context, result, problem.op, meta))
        answer = str(problem.answer)
        answer_entries.append((f"{problem.question}\nAnswer:", answer, (problem.op, len(answer)), meta))
    return {"column_step": _paired_items(step_entries, random.Random(17)),
            "answer": _paired_items(answer_entries, random.Random(18))}


def score_probes(model, tokenizer, probes: dict[str, list], config: Config) -> dict[str, np.ndarray]:
    """probe -> per-item correctness (bool [n]) of ``model``."""
    from jaxstack.evals import evaluate_multiple_choice

    return {name: np.array([r["correct"] for r in evaluate_multiple_choice(
        model, tokenizer, items, target_delimiter=" ", batch_size=config.probe_batch_size, progress=False)["records"]])
        for name, items in probes.items()}


# ----------------------------------------------------------------------------------------------------
# Statistics and verdicts


def estimate(values: np.ndarray) -> dict[str, Any]:
    """Mean of ``values`` [seeds, items] (per-item scores, or per-item differences between two arms) and
    its standard error: the seed-to-seed spread (std of the per-seed means / sqrt(seeds); 0 with one seed)
    and item sampling (std over items of the seed-averaged scores / sqrt(items)) in quadrature."""
    values = np.asarray(values, np.float64)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"values: expected a non-empty [seeds, items] array, got shape {values.shape}")
    seeds, items = values.shape
    per_seed = values.mean(axis=1)
    se_seeds = float(per_seed.std(ddof=1) / math.sqrt(seeds)) if seeds > 1 else 0.0
    se_items = float(values.mean(axis=0).std(ddof=1) / math.sqrt(items)) if items > 1 else 0.0
    return {"mean": float(per_seed.mean()), "se": math.hypot(se_seeds, se_items), "se_seeds": se_seeds,
            "se_items": se_items, "per_seed": per_seed.tolist(), "n_seeds": seeds, "n_items": items}


def verdicts(correct: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """The pre-registered claims applied to per-item correctness ``correct[arm][probe]`` ([seeds, items]):
    each claim's difference estimate and verdict, and the study's verdict."""
    def difference(better, worse, probe):
        return estimate(correct[better][probe].astype(float) - correct[worse][probe])

    claims = {}
    for claim in CLAIMS:
        diff = difference(claim.better, claim.worse, claim.probe)
        bound = SE_MULTIPLE * diff["se"]
        holds = diff["mean"] > bound if claim.kind == "superior" else diff["mean"] > -bound
        moves = difference(claim.reference, CONTROL, claim.probe)
        testable = CONTROL in (claim.better, claim.worse) or moves["mean"] > SE_MULTIPLE * moves["se"]
        claims[claim.name] = {"statement": claim.statement, "paper": claim.paper, "criterion": claim.criterion,
                              "difference": diff, "testable": bool(testable),
                              "reference_vs_control": moves, "holds": bool(holds and testable),
                              "verdict": "reproduced" if holds and testable else "not reproduced"}
    held = sum(c["holds"] for c in claims.values())
    study = "reproduced" if held == len(claims) else "partially" if held else "not reproduced"
    return {"claims": claims, "verdict": study,
            "verdict_criterion": f"reproduced: all {len(claims)} claims hold; partially: some; not reproduced: none"}


# ----------------------------------------------------------------------------------------------------
# Plots

COLOURS = {"A": "tab:blue", "B": "tab:green", "C": "tab:red", "D": "tab:gray", STABLE: "black"}


def plot_per_source_loss(metrics: dict[int, dict[str, list[dict]]], decay_steps: dict[str, int]):
    """Held-out loss per source against step, every arm and seed (one thin line each), decay starts
    dotted (a matplotlib figure). metrics: seed -> arm -> metrics records."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(EVAL_SOURCES), figsize=(4.2 * len(EVAL_SOURCES), 3.6), sharex=True)
    for ax, source in zip(axes, EVAL_SOURCES):
        for seed_index, arms in enumerate(metrics.values()):
            for arm, records in arms.items():
                points = [(m["step"], m[f"eval_loss/{source}"]) for m in records if f"eval_loss/{source}" in m]
                if points:
                    ax.plot(*zip(*points), "o-", ms=2, lw=1.0, alpha=0.8, color=COLOURS[arm],
                            label=ARM_LABELS[arm] if seed_index == 0 else None)
        for arm, step in decay_steps.items():
            ax.axvline(step, color=COLOURS[arm], ls=":", lw=1)
        ax.set_title(f"held-out {source}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cross-entropy (nats / token)")
    axes[0].legend(title=f"one line per seed ({len(metrics)}); dotted: decay start", fontsize=7, title_fontsize=7)
    fig.tight_layout()
    return fig


def plot_probes(probes: dict[str, dict[str, dict]], study: dict[str, Any]):
    """Probe accuracy per arm (mean over seeds, +-1 SE bars, seeds as dots, chance dashed) and the
    paper's GSM8K numbers in a separate, labelled panel (a matplotlib figure)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(PROBES) + 1, figsize=(4.6 * (len(PROBES) + 1), 4.0))
    arms = [*ARMS, STABLE]
    for ax, probe in zip(axes, PROBES):
        for x, arm in enumerate(arms):
            entry = probes[probe][arm]
            ax.bar(x, entry["mean"], 0.6, yerr=entry["se"], capsize=4, color=COLOURS[arm], alpha=0.75)
            ax.plot([x] * len(entry["per_seed"]), entry["per_seed"], "k.", ms=5)
        ax.axhline(CHANCE, color="black", ls="--", lw=1, label="chance (by construction)")
        ax.set_xticks(range(len(arms)), [a if a != STABLE else "stable\n(B/C/D\nbefore decay)" for a in arms],
                      fontsize=8)
        ax.set_ylim(0.3, 1.0)
        ax.set_title(f"toy probe: {probe} (n={probes[probe]['A']['n_items']}, "
                     f"{probes[probe]['A']['n_seeds']} seeds)", fontsize=9)
        ax.set_ylabel("2-choice accuracy")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="upper right")
    ax = axes[-1]
    labels, values = [], []
    for group in ("gsm8k_by_stage", "annealing_gsm8k_peak"):
        for label, value in PAPER[group].items():
            labels.append(label.replace(" (", "\n("))
            values.append(value)
    ax.bar(range(len(values)), values, 0.6, color="white", edgecolor="black", hatch="//")
    for x, value in enumerate(values):
        ax.text(x, value + 0.5, f"{value:g}", ha="center", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("GSM8K accuracy (%)")
    ax.set_title("PAPER's numbers (SmolLM2-1.7B; not measured here)\nTable 8 by stage | annealing peaks",
                 fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"study verdict (pre-registered): {study['verdict']} -- "
                 + "; ".join(f"{name}: {c['verdict']}" for name, c in study["claims"].items()), fontsize=8)
    fig.tight_layout()
    return fig


def plot_shares(shares: dict[str, dict]):
    """Grouped bars: target (hatched) vs realised token share per (arm, stage, source) (a matplotlib figure)."""
    plt = pyplot()
    groups = [(arm, stage) for arm, stages in shares.items() for stage in stages]
    fig, axes = plt.subplots(1, len(groups), figsize=(3.0 * len(groups), 3.4), sharey=True)
    for ax, (arm, stage) in zip(np.atleast_1d(axes), groups):
        entry = shares[arm][stage]
        names = sorted(set(entry["target"]) | set(entry["realised"]))
        x = np.arange(len(names))
        ax.bar(x - 0.2, [entry["target"].get(n, 0) for n in names], 0.4, label="target", hatch="//",
               color="white", edgecolor="black")
        ax.bar(x + 0.2, [entry["realised"].get(n, 0) for n in names], 0.4, label="realised", color="tab:orange")
        ax.set_xticks(x, names, rotation=30)
        ax.set_title(f"{arm}: {stage}")
    np.atleast_1d(axes)[0].set_ylabel("token share")
    np.atleast_1d(axes)[0].legend()
    fig.tight_layout()
    return fig


def plot_lr(metrics: dict[str, list[dict]]):
    """The learning rate against step, per arm (a matplotlib figure)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for arm, records in metrics.items():
        points = [(m["step"], m["lr"]) for m in records if "lr" in m]
        ax.plot(*zip(*points), label=arm)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title("WSD schedules aligned to the stages")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------
# Run


def _eval_sets(tokenizer, config: Config) -> dict[str, Any]:
    """source -> callable returning a fresh iterator over that source's packed held-out windows."""
    seq_len, batch = config.train.seq_len, config.train.batch_size
    sets = {}
    for source in EVAL_SOURCES:
        documents = list(embedded.embedded_source(source, "validation", config.corpus))
        windows = lm.pack_documents(tokenizer.encode_batch(documents), seq_len, tokenizer.eos_id)
        size = min(batch, len(windows))
        sets[source] = (lambda w=windows, b=size: iter(lm.lm_dataset(w, b, seed=0, shuffle=False, repeat=False)))
    return sets


def _tokenizer(config: Config, documents):
    sample = []
    for name in sorted(documents):  # the tokenizer sees an equal character budget of every source's training split
        chars = 0
        for text in documents[name]:
            sample.append(text)
            chars += len(text)
            if chars >= config.tokenizer_chars_per_source:
                break
    tokenizer = tokenizer_lib.cached_bpe(sample, config.model.vocab_size, "embedded")
    if tokenizer.vocab_size != config.model.vocab_size:
        raise ValueError(f"model.vocab_size={config.model.vocab_size} but the tokenizer has {tokenizer.vocab_size}")
    return tokenizer


def run(config: Config) -> pathlib.Path:
    started = time.perf_counter()
    record = RunRecord.create(config.out_dir, "smollm2-mixture", config, stamp=config.run_name)
    run_dir = record.dir
    documents = {n: embedded.embedded_source(n, "train", config.corpus) for n in sorted(EVAL_SOURCES)}
    tokenizer = _tokenizer(config, documents)
    tokenizer.save(run_dir / "tokenizer.json")
    eval_sets = _eval_sets(tokenizer, config)
    probes = probe_items(config)
    plans = schedules(config)
    tokens_per_step = config.train.batch_size * config.train.seq_len
    stable_end = plans["B"].stage_steps(tokens_per_step)[0][1]
    print(f"smollm2-mixture: {config.model.num_params():,} parameters, {config.total_tokens:,} tokens per arm, "
          f"seeds {list(config.seeds)} -> {run_dir}")

    def fit(arm, seed, *, stop_after=None):
        schedule = plans[arm]
        train_config = dataclasses.replace(config.train, steps=schedule.total_steps(tokens_per_step),
                                           stop_after=stop_after, seed=seed)
        data = iter(mx.StagedMixture(schedule, documents, tokenizer, seq_len=config.train.seq_len,
                                     batch_size=config.train.batch_size, seed=seed))
        model, _ = train(config.model, train_config, schedule.optimizer_config(config.optimizer, tokens_per_step),
                         data, run_dir / f"seed{seed}" / arm, eval_data=eval_sets, show_progress=config.show_progress,
                         extra_config={"schedule": to_dict(schedule), "experiment": "smollm2-mixture", "arm": arm,
                                       "seed": seed, "corpus": embedded.LICENCES})
        return model, data

    correct: dict[str, dict[str, list]] = {arm: {p: [] for p in PROBES} for arm in (*ARMS, STABLE)}
    metrics, iterators, identical = {}, {}, {}
    for seed in config.seeds:
        seed_dir = run_dir / f"seed{seed}"
        models = {}
        models["A"], iterators[seed, "A"] = fit("A", seed)
        models[STABLE], _ = fit("B", seed, stop_after=stable_end)
        for arm in ("C", "D"):  # C and D start from B's stable-phase checkpoint: copy it before B goes on
            (seed_dir / arm).mkdir(parents=True, exist_ok=True)
            shutil.copytree(seed_dir / "B" / "checkpoints", seed_dir / arm / "checkpoints", dirs_exist_ok=True)
            shutil.copy(seed_dir / "B" / "metrics.jsonl", seed_dir / arm / "metrics.jsonl")
        for arm in ("B", "C", "D"):  # each resumes at the boundary into its own decay mixture
            models[arm], iterators[seed, arm] = fit(arm, seed)
        for arm, model in models.items():
            for probe, values in score_probes(model, tokenizer, probes, config).items():
                correct[arm][probe].append(values)
        metrics[seed] = {arm: read_metrics(seed_dir / arm) for arm in ARMS}
        stable_losses = {arm: [(m["step"], m["loss"]) for m in metrics[seed][arm] if m["step"] <= stable_end]
                         for arm in ("B", "C", "D")}
        identical[seed] = stable_losses["B"] == stable_losses["C"] == stable_losses["D"]

    correct = {arm: {p: np.stack(v) for p, v in by_probe.items()} for arm, by_probe in correct.items()}
    results: dict[str, Any] = {"arms": ARM_LABELS, "seeds": list(config.seeds)}
    results["probes"] = {p: {arm: estimate(correct[arm][p]) for arm in correct} for p in PROBES}
    results["probe_chance"] = CHANCE
    results.update(verdicts(correct))
    results["paper"] = PAPER
    results["final_eval"] = {arm: {s: estimate(np.array([[metrics[seed][arm][-1][f"eval_loss/{s}"]]
                                                         for seed in config.seeds]))
                                   for s in EVAL_SOURCES} for arm in ARMS}
    for values in results["final_eval"].values():  # one value per seed: only the seed spread applies
        for entry in values.values():
            entry.pop("se_items"), entry.pop("n_items")
    results["math_tokens"] = {arm: {str(seed): sum(n for stage in iterators[seed, arm].token_counts().values()
                                                   for source, n in stage.items() if source.startswith("math"))
                                    for seed in config.seeds} for arm in ARMS}
    shares = {}
    for arm in ARMS:
        targets = {st.name: st.shares for st in plans[arm].stages}
        realised = iterators[config.seeds[0], arm].realised_shares()
        shares[arm] = {stage: {"target": targets[stage], "realised": realised.get(stage, {}),
                               "max_abs_error": max(abs(realised.get(stage, {}).get(k, 0.0) - v)
                                                    for k, v in targets[stage].items())}
                       for stage in targets}
    results["shares_seed0"] = shares
    results["shares_worst_abs_error"] = max(abs(iterators[seed, arm].realised_shares().get(st.name, {}).get(k, 0.0) - v)
                                            for seed in config.seeds for arm in ARMS
                                            for st in plans[arm].stages for k, v in st.shares.items())
    results["stage_steps"] = {arm: dict(zip([st.name for st in plans[arm].stages],
                                            plans[arm].stage_steps(tokens_per_step))) for arm in ARMS}
    # B, C and D share the stable phase: the same losses up to the boundary (a resume-determinism check)
    results["shared_stable_phase_identical"] = all(identical.values())
    decay_starts = {arm: plans[arm].total_steps(tokens_per_step) - plans[arm].decay_steps(tokens_per_step)
                    for arm in ARMS}
    record.save_plot(plot_per_source_loss(metrics, decay_starts), "per_source_loss.png")
    record.save_plot(plot_probes(results["probes"], results), "probes.png")
    record.save_plot(plot_shares(shares), "token_shares.png")
    record.save_plot(plot_lr(metrics[config.seeds[0]]), "lr.png")
    results["wall_seconds"] = time.perf_counter() - started
    results["scale"] = (f"toy: {config.model.num_params():,} parameters, {config.total_tokens:,} tokens per arm, "
                        f"{len(config.seeds)} seeds; see the module docstring for what this can and cannot show")
    record.write_summary(results)
    _print_summary(results)
    return run_dir


def _fmt(entry: dict) -> str:
    return f"{entry['mean']:.3f} +- {entry['se']:.3f}"


def _print_summary(results: dict[str, Any]) -> None:
    print(f"\nheld-out loss at the end (nats/token; mean +- SE over {len(results['seeds'])} seeds):")
    print(f"{'arm':28s}" + "".join(f"{s:>17s}" for s in EVAL_SOURCES))
    for arm, losses in results["final_eval"].items():
        print(f"{ARM_LABELS[arm]:28s}" + "".join(f"{_fmt(losses[s]):>17s}" for s in EVAL_SOURCES))
    print(f"\nprobes (2-choice accuracy, chance {CHANCE} by construction; mean +- SE):")
    print(f"{'arm':28s}" + "".join(f"{p:>17s}" for p in PROBES))
    for arm in (*ARMS, STABLE):
        print(f"{ARM_LABELS.get(arm, 'stable (B/C/D before decay)'):28s}"
              + "".join(f"{_fmt(results['probes'][p][arm]):>17s}" for p in PROBES))
    print(f"\nmath tokens per arm: {results['math_tokens']}")
    for name, claim in results["claims"].items():
        print(f"claim {name}: {claim['criterion']}: {_fmt(claim['difference'])} -> {claim['verdict']}")
    print(f"study verdict: {results['verdict']} ({results['verdict_criterion']})")
    print(f"realised vs target token shares: worst absolute error {results['shares_worst_abs_error']:.4f}")
    print(f"B, C and D identical over the shared stable phase: {results['shared_stable_phase_identical']}")

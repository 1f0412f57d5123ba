"""SmolLM2's annealing ablation at toy scale: when does high-quality math enter the mixture?

Three arms, same model, seed, token budget and tokenizer, on the embedded corpus
(``jaxstack.data.embedded``: web = Python docs prose, code = stdlib source, math_hi = step-by-step
arithmetic, math_lo = answer-only arithmetic):

* **A** single stage: web 55 / code 30 / math_hi 15 from the start, WSD with the last 20% decayed
  (the 135M / 360M recipe: high-quality data throughout);
* **B** stable phase on web 75 / code 25, then a decay phase (last third, LR linearly to 0) on
  web 50 / code 20 / math_hi 30 -- resumed from B's stable-phase Orbax checkpoint with the *changed*
  Grain mixture (web and code continue where they were, math_hi starts);
* **C** as B, but the decay phase adds math_lo (answer-only) instead. C starts from a copy of B's
  stable-phase checkpoint, so B and C share their first two thirds bit for bit.

Recorded per arm (``runs/smollm2-mixture/<stamp>/{A,B,C}/`` + the comparison at the top level):
held-out loss per source every ``eval_every`` steps (``per_source_loss.png``), realised token shares
vs targets per stage (``token_shares.png``), the learning rate (``lr.png``), and a 2-choice
log-likelihood arithmetic task (correct answer vs one digit changed -- any digit, and the ones digit
only -- on held-out problems) scored with
``jaxstack.evals.evaluate_multiple_choice`` -- the code the Global PIQA evaluator uses -- for each arm
and for the shared stable-phase model (B/C before the decay).

What the toy scale can show: the *mechanics* (token-share mixing per stage, exact resume into a changed
mixture, WSD aligned to stages) and the direction of a data effect on held-out loss of the sources in
the decay. What it cannot show: anything about benchmark accuracy of real models (a ~1M-parameter model,
~0.6M tokens; arithmetic here is memorisable surface form; one seed, no error bars on the loss curves).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
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
from jaxstack.train.optimizers import OptimizerConfig
from jaxstack.train.trainer import TrainConfig, read_metrics, train

EVAL_SOURCES = ("web", "code", "math_hi", "math_lo")
ARMS = ("A", "B", "C")


@dataclasses.dataclass(frozen=True)
class Config:
    """total_tokens: every arm's budget; decay_share: B/C's decay stage as a share of it (A decays over
    the last ``single_decay_fraction``). train.steps is ignored (set from the schedule); the other
    train fields (batch, seq_len, eval cadence) apply to every arm."""

    model: LlamaConfig = get_config("smollm2-tiny", vocab_size=2048, hidden_size=128, intermediate_size=384,
                                    num_layers=4, num_heads=4, num_kv_heads=2, max_position_embeddings=512)
    train: TrainConfig = TrainConfig(batch_size=16, seq_len=128, log_every=10, eval_every=30, eval_batches=3,
                                     checkpoint_every=10_000, keep_checkpoints=2)
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=3e-3, warmup_steps=20)
    corpus: embedded.CorpusConfig = embedded.CorpusConfig()
    total_tokens: int = 600_000
    decay_share: float = 1 / 3
    single_decay_fraction: float = 0.2
    tokenizer_chars_per_source: int = 300_000
    task_items: int = 400
    task_batch_size: int = 32
    seed: int = 0
    show_progress: bool = True
    out_dir: str = "runs/smollm2-mixture"
    run_name: str | None = None


PRESETS = {
    # ~1M parameters, 600k tokens per arm (A and B ~293 steps of 16 x 128; C ~98 decay steps):
    # about 5-8 minutes on 2 idle CPU cores.
    "tiny": Config(),
    # The SmolLM2-135M shape on the same embedded corpus, for one accelerator: the corpus is ~15 MB of
    # text, so at this scale it is repeated many times -- a pipeline and mechanics check, not a study.
    "paper": Config(
        model=get_config("smollm2-135m", vocab_size=8192, rope_theta=10000.0, max_position_embeddings=2048,
                         scan_layers=True),
        train=TrainConfig(batch_size=64, seq_len=1024, log_every=20, eval_every=200, eval_batches=8,
                          checkpoint_every=100_000, policy="bf16-mixed"),
        optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=200),
        total_tokens=200_000_000, tokenizer_chars_per_source=2_000_000, task_items=1000,
    ),
}


def schedules(config: Config) -> dict[str, mx.StageSchedule]:
    single = mx.tiny_single(config.total_tokens)
    single = dataclasses.replace(single, decay_fraction=config.single_decay_fraction)
    return {"A": single,
            "B": mx.tiny_anneal("math_hi", config.total_tokens, config.decay_share),
            "C": mx.tiny_anneal("math_lo", config.total_tokens, config.decay_share)}


# ----------------------------------------------------------------------------------------------------
# The toy task


def arithmetic_items(config: Config, count: int, digit: str = "any"):
    """2-choice items on held-out problems: ``Problem: a op b = ?\\nAnswer:`` -> the answer vs the
    answer with one digit changed (same length, so acc / acc_norm / acc_bytes differ only by scoring).
    ``digit="any"``: a random digit is changed; ``"last"``: the ones digit (the easiest to get right:
    for + / - / x it depends on the operands' ones digits only).
    The prompt is the answer-only format; a step-by-step-trained model sees it only at the end of its
    solutions (``Answer: ...``), which the summary states when comparing B and C."""
    from jaxstack.evals import MultipleChoiceItem

    rng = random.Random(config.seed + 7)
    problems = [p for doc in embedded.math_split(config.corpus, "validation") for p in doc][:count]
    items = []
    for index, problem in enumerate(problems):
        answer = str(problem.answer)
        position = len(answer) - 1 if digit == "last" else rng.randrange(len(answer))
        digits = [d for d in "0123456789" if d != answer[position] and not (position == 0 and d == "0"
                                                                               and len(answer) > 1)]
        wrong = answer[:position] + rng.choice(digits) + answer[position + 1:]
        choices, label = ((answer, wrong), 0) if rng.random() < 0.5 else ((wrong, answer), 1)
        items.append(MultipleChoiceItem(context=f"{problem.question}\nAnswer:", choices=choices, label=label,
                                        meta={"index": index, "op": problem.op}))
    return items


def score_task(model, tokenizer, items, config: Config) -> dict[str, Any]:
    from jaxstack.evals import evaluate_multiple_choice

    metrics = evaluate_multiple_choice(model, tokenizer, items, target_delimiter=" ",
                                       batch_size=config.task_batch_size, progress=False)
    return {k: metrics[k] for k in ("acc", "acc_norm", "acc_bytes", "acc_stderr", "n") if k in metrics}


# ----------------------------------------------------------------------------------------------------
# Plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_per_source_loss(metrics: dict[str, list[dict]], decay_steps: dict[str, int], path: pathlib.Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(EVAL_SOURCES), figsize=(4.2 * len(EVAL_SOURCES), 3.6), sharex=True)
    colours = {"A": "tab:blue", "B": "tab:green", "C": "tab:red"}
    for ax, source in zip(axes, EVAL_SOURCES):
        for arm, records in metrics.items():
            points = [(m["step"], m[f"eval_loss/{source}"]) for m in records if f"eval_loss/{source}" in m]
            if points:
                ax.plot(*zip(*points), "o-", ms=3, lw=1.4, color=colours[arm], label=arm)
        for arm, step in decay_steps.items():
            ax.axvline(step, color=colours[arm], ls=":", lw=1)
        ax.set_title(f"held-out {source}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cross-entropy (nats / token)")
    axes[0].legend(title="arm (dotted: decay start)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_shares(shares: dict[str, dict], path: pathlib.Path) -> None:
    """Grouped bars: target (hatched) vs realised token share per (arm, stage, source)."""
    plt = _plt()
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_lr(metrics: dict[str, list[dict]], path: pathlib.Path) -> None:
    plt = _plt()
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


def run(config: Config) -> pathlib.Path:
    started = time.perf_counter()
    name = config.run_name or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = pathlib.Path(config.out_dir) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    names = sorted({"web", "code", "math_hi", "math_lo"})
    documents = {n: embedded.embedded_source(n, "train", config.corpus) for n in names}
    sample = []
    for n in names:  # the tokenizer sees an equal character budget of every source's training split
        chars = 0
        for text in documents[n]:
            sample.append(text)
            chars += len(text)
            if chars >= config.tokenizer_chars_per_source:
                break
    tokenizer = tokenizer_lib.cached_bpe(sample, config.model.vocab_size, "embedded")
    if tokenizer.vocab_size != config.model.vocab_size:
        raise ValueError(f"model.vocab_size={config.model.vocab_size} but the tokenizer has {tokenizer.vocab_size}")
    tokenizer.save(run_dir / "tokenizer.json")
    eval_sets = _eval_sets(tokenizer, config)
    tasks = {"task": arithmetic_items(config, config.task_items, "any"),
             "task_last_digit": arithmetic_items(config, config.task_items, "last")}

    plans = schedules(config)
    tokens_per_step = config.train.batch_size * config.train.seq_len

    def pipeline(arm):
        return iter(mx.StagedMixture(plans[arm], documents, tokenizer, seq_len=config.train.seq_len,
                                     batch_size=config.train.batch_size, seed=config.seed))

    def fit(arm, *, stop_after=None):
        schedule = plans[arm]
        steps = schedule.total_steps(tokens_per_step)
        train_config = dataclasses.replace(config.train, steps=steps, stop_after=stop_after, seed=config.seed)
        data = pipeline(arm)
        model, summary = train(config.model, train_config, schedule.optimizer_config(config.optimizer, tokens_per_step),
                               data, run_dir / arm, eval_data=eval_sets, show_progress=config.show_progress,
                               extra_config={"schedule": to_dict(schedule), "experiment": "smollm2-mixture",
                                             "arm": arm, "corpus": embedded.LICENCES})
        return model, summary, data

    print(f"smollm2-mixture: {config.model.num_params():,} parameters, {config.total_tokens:,} tokens per arm "
          f"-> {run_dir}")
    results: dict[str, Any] = {"task": {}, "task_last_digit": {}, "final_eval": {}, "shares": {}, "stage_steps": {}}

    def score(arm, model):
        for key, items in tasks.items():
            results[key][arm] = score_task(model, tokenizer, items, config)
    iterators = {}
    model_a, _, iterators["A"] = fit("A")
    score("A", model_a)

    stable_end = plans["B"].stage_steps(tokens_per_step)[0][1]
    model_stable, _, _ = fit("B", stop_after=stable_end)
    score("B/C stable (before decay)", model_stable)
    # C starts from B's stable-phase checkpoint: copy it (and the metrics so far) before B goes on
    (run_dir / "C").mkdir(exist_ok=True)
    shutil.copytree(run_dir / "B" / "checkpoints", run_dir / "C" / "checkpoints", dirs_exist_ok=True)
    shutil.copy(run_dir / "B" / "metrics.jsonl", run_dir / "C" / "metrics.jsonl")
    model_b, _, iterators["B"] = fit("B")  # resumes at the boundary; the decay mixture adds math_hi
    score("B", model_b)
    model_c, _, iterators["C"] = fit("C")  # resumes B's stable checkpoint; the decay mixture adds math_lo
    score("C", model_c)

    metrics = {arm: read_metrics(run_dir / arm / "metrics.jsonl") for arm in ARMS}
    for arm in ARMS:
        final = metrics[arm][-1]
        results["final_eval"][arm] = {s: final.get(f"eval_loss/{s}") for s in EVAL_SOURCES}
        targets = {st.name: st.shares for st in plans[arm].stages}
        realised = iterators[arm].realised_shares()
        results["shares"][arm] = {stage: {"target": targets[stage], "realised": realised.get(stage, {}),
                                          "max_abs_error": max(abs(realised.get(stage, {}).get(k, 0.0) - v)
                                                               for k, v in targets[stage].items())}
                                  for stage in targets}
        results["stage_steps"][arm] = dict(zip(targets, plans[arm].stage_steps(tokens_per_step)))
    stable_eval = [m for m in metrics["B"] if m["step"] <= stable_end and "eval_loss" in m]
    if stable_eval:
        # the last held-out evaluation of the shared stable phase (evaluations run every eval_every steps)
        results["final_eval"][f"B/C stable (step {stable_eval[-1]['step']})"] = {
            s: stable_eval[-1].get(f"eval_loss/{s}") for s in EVAL_SOURCES}
    decay_starts = {arm: plans[arm].total_steps(tokens_per_step) - plans[arm].decay_steps(tokens_per_step)
                    for arm in ARMS}
    plot_per_source_loss(metrics, decay_starts, run_dir / "per_source_loss.png")
    plot_shares(results["shares"], run_dir / "token_shares.png")
    plot_lr(metrics, run_dir / "lr.png")
    # B and C share the stable phase: the same losses up to the boundary (a resume-determinism check)
    b_stable = [(m["step"], m["loss"]) for m in metrics["B"] if m["step"] <= stable_end]
    c_stable = [(m["step"], m["loss"]) for m in metrics["C"] if m["step"] <= stable_end]
    results["shared_stable_phase_identical"] = b_stable == c_stable
    results["wall_seconds"] = time.perf_counter() - started
    results["scale"] = (f"toy: {config.model.num_params():,} parameters, {config.total_tokens:,} tokens per arm, "
                        f"one seed; see the module docstring for what this can and cannot show")
    (run_dir / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    (run_dir / "config.json").write_text(json.dumps(to_dict(config), indent=2) + "\n")
    _print_summary(results)
    return run_dir


def _print_summary(results: dict[str, Any]) -> None:
    print("\nheld-out loss at the end (nats/token):")
    print(f"{'arm':28s}" + "".join(f"{s:>10s}" for s in EVAL_SOURCES))
    for arm, losses in results["final_eval"].items():
        print(f"{arm:28s}" + "".join(f"{(losses.get(s) or float('nan')):10.3f}" for s in EVAL_SOURCES))
    for key, title in (("task", "any digit changed"), ("task_last_digit", "ones digit changed")):
        print(f"\n2-choice arithmetic, {title} (acc / acc_norm / acc_bytes, chance 0.5):")
        for arm, task in results[key].items():
            print(f"{arm:28s} {task['acc']:.3f} / {task['acc_norm']:.3f} / {task['acc_bytes']:.3f}  "
                  f"(n={task.get('n')}, stderr {task.get('acc_stderr', float('nan')):.3f})")
    worst = max(stage["max_abs_error"] for arm in results["shares"].values() for stage in arm.values())
    print(f"\nrealised vs target token shares: worst absolute error {worst:.4f}")
    print(f"B and C identical over the shared stable phase: {results['shared_stable_phase_identical']}")

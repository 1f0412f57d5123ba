"""Precision-RL at toy scale: the training-vs-rollout mismatch in BF16, FP16 and FP32, and what it does to RL.

Paper: Qi et al., "Defeating the Training-Inference Mismatch via FP16" (arXiv 2510.26788; code
sail-sg/Precision-RL); shared/refs/rl.md has the formulas and numbers. Experiments:

* **E1 offline mismatch matrix** -- train dtype x rollout dtype (fp32 / bf16 / fp16) x engine knobs
  (``none`` = the same-kernel control, ``all`` = an inference-engine-like rollout: KV-cache decode, fused
  QKV, chunked online softmax, chunked norms, cache in compute dtype, batch padding) x response
  lengths, on the random-init and the SFT-trained policy; a per-knob ablation on the diagonal.
  Heat-map, Figure-5-style token-probability scatter (pi vs mu), |sequence log-ratio| vs length.
* **E2 RL study** -- {bf16, fp16, fp32} x losses x seeds on k-digit addition with a scratchpad,
  starting from an SFT base at 20-80% success on a fixed pool of problems ("perfectible": a stable
  algorithm should drive train success towards 100%). Reward and mismatch curves with seed bands.
* **E3 dose-response** -- fp32 engines with Gaussian noise of std sigma on the rollout logits; final
  reward against the measured mismatch, with the bf16 and fp16 levels measured in E2 marked.
* **E4 loss scaling** -- fp16 training with and without the dynamic loss scaler: loss scale, skipped
  steps, gradient underflow (fraction of exactly-zero gradient entries), reward.

Everything is written under ``runs/precision-rl/<stamp>/`` (config.json, e1.jsonl, e2/*.jsonl,
e3/*.jsonl, e4/*.jsonl, summary.json, summary.md, *.png). The paper's numbers (``PAPER``) are quoted,
never presented as ours.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxstack.config import to_dict
from jaxstack.models.configs import LlamaConfig, get_config
from jaxstack.rl import engine as engine_lib
from jaxstack.rl.loop import (
    RLConfig,
    evaluate_success,
    init_masters,
    score,
    sft,
    train_rl,
)
from jaxstack.rl.metrics import mismatch_metrics
from jaxstack.rl.policy import engine_policy
from jaxstack.rl.tasks import VOCAB, ArithmeticTask
from jaxstack.runs import RunRecord, pyplot

PAPER = {
    "source": "Qi et al., arXiv 2510.26788 and github.com/sail-sg/Precision-RL, as summarised in shared/refs/rl.md",
    "offline_sequence_kl": {"bf16": 7.64, "fp16": 0.32, "note": "R1D-1.5B, vLLM vs FSDP, offline (Fig. 5)"},
    "per_token_kl": "~1e-3 growing until collapse in BF16 vs ~1e-5 flat in FP16 (VeRL sanity runs)",
    "sanity_test": "BF16 GRPO collapses near step 600; FP16 reaches ~0.98 train reward; in FP16 plain "
                   "PG-Seq-IS beats every BF16 fix (token TIS, sequence MIS, GSPO)",
    "cpu_feasibility": "shared/refs/rl.md 6.1 (a throwaway CPU probe, not the paper): mean |dlogp| 1.49e-2 bf16 "
                       "vs 2.45e-3 fp16 (6x), k3 KL 2.2e-4 vs 6.8e-6 (33x)",
}

DTYPES = ("fp32", "bf16", "fp16")
#: The engine policy (a ``DtypePolicy`` preset: float32 masters) of each compute dtype studied.
ENGINE_POLICY = {"fp32": "fp32", "bf16": "bf16-mixed", "fp16": "fp16-mixed"}

#: The tiny policy: 2 layers, d = 64, GQA 4:2, the task's 34-token vocabulary (76k parameters).
TINY_MODEL = LlamaConfig(vocab_size=len(VOCAB), hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                         num_kv_heads=2, max_position_embeddings=256)


@dataclasses.dataclass(frozen=True)
class Config:
    model: LlamaConfig = TINY_MODEL
    init_from: str | None = None  # a local HF checkpoint directory (load_pretrained), else random init
    seed: int = 0
    digits: int = 2
    pool_size: int = 256
    # SFT base
    sft_steps: int = 800
    sft_batch: int = 64
    sft_learning_rate: float = 3e-3
    sft_eval_every: int = 50
    sft_error_rate: float = 0.1
    distractor_rate: float = 0.02
    sft_target: tuple[float, float] = (0.2, 0.8)
    # E1
    e1_dtypes: tuple[str, ...] = DTYPES
    e1_knobs: tuple[str, ...] = ("none", "all")
    e1_ablation: tuple[str, ...] = ("kv_cache", "fused_qkv", "online_softmax", "chunked_norm", "f32_lm_head",
                                    "batch_padding")
    e1_lengths: tuple[int, ...] = (32, 128)
    # the same-kernel control recomputes the whole buffer per token (O(T^2)): only up to this length
    control_max_length: int = 512
    e1_batch: int = 16
    # E2
    e2_dtypes: tuple[str, ...] = ("bf16", "fp16", "fp32")
    e2_losses: tuple[str, ...] = ("grpo", "pg_seq_is")
    e2_seeds: tuple[int, ...] = (0, 1)
    rl_steps: int = 40
    prompts_per_step: int = 16
    group_size: int = 8
    num_minibatches: int = 2
    rl_learning_rate: float = 3e-4
    knobs: str = "all"
    # E3
    e3_sigmas: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)
    e3_loss: str = "grpo"
    # E4
    e4_loss: str = "drgrpo"
    e4_growth_interval: int = 10
    e4_steps: int = 30
    out_dir: str = "runs"  # the record goes to out_dir/precision-rl/<run_name or a timestamp>
    run_name: str | None = None
    experiments: tuple[str, ...] = ("e1", "e2", "e3", "e4")

    def __post_init__(self):
        for name in ("e1_dtypes", "e2_dtypes"):
            bad = [d for d in getattr(self, name) if d not in DTYPES]
            if bad:
                raise ValueError(f"Config.{name}: unknown dtypes {bad}; expected a subset of {list(DTYPES)}")
        bad = [e for e in self.experiments if e not in ("e1", "e2", "e3", "e4")]
        if bad:
            raise ValueError(f"Config.experiments: unknown {bad}; expected a subset of ['e1', 'e2', 'e3', 'e4']")
        if self.model.vocab_size < len(VOCAB):
            raise ValueError(f"Config.model.vocab_size: must hold the task vocabulary ({len(VOCAB)}), "
                             f"got {self.model.vocab_size}")


PRESETS = {
    # ~10 minutes on 2 idle CPU cores (E1: 2 x 3 x 3 x 2 x 2 cells + ablation; E2: 12 runs x 40 steps).
    "tiny": Config(),
    # One accelerator: the Qwen2.5-0.5B shape (random init, or --init_from=<local HF dir>), E1 at longer
    # lengths and a short E2. The toy vocabulary is embedded in Qwen's 151,936-token vocabulary.
    "paper": Config(model=get_config("qwen2.5-0.5b", max_position_embeddings=4096, scan_layers=False),
                    digits=4, sft_steps=2000, sft_batch=128, sft_learning_rate=1e-4, e1_lengths=(128, 512, 2048),
                    control_max_length=512,
                    e1_batch=32, e2_seeds=(0, 1, 2), e2_losses=("grpo", "grpo_token_tis", "grpo_seq_mis", "pg_seq_is"),
                    rl_steps=200, prompts_per_step=32, group_size=8, rl_learning_rate=1e-5, e4_steps=100,
                    e4_growth_interval=50),
}


def _masters(config: Config):
    """Float32 master Params (an ``nnx.State``): random init or a local HF checkpoint."""
    if config.init_from is None:
        return init_masters(config.model, config.seed)
    from flax import nnx

    from jaxstack.models.checkpoint import load_pretrained

    model = load_pretrained(config.init_from)
    if model.config.vocab_size < len(VOCAB):
        raise ValueError(f"init_from: the checkpoint's vocabulary ({model.config.vocab_size}) is smaller than the "
                         f"task vocabulary ({len(VOCAB)})")
    masters = nnx.state(model, nnx.Param)
    return jax.tree.map(lambda x: x.astype(jnp.float32), masters)


def _f(x) -> float:
    return float(np.asarray(x))


# ----------------------------------------------------------------------------------------------------
# E1


def e1_matrix(config: Config, states: dict[str, dict], task: ArithmeticTask, record: RunRecord):
    """Offline mismatch: sample with the rollout engine, re-score with the training engine."""
    model = config.model
    rows, scatter = [], {}
    rng = np.random.default_rng(config.seed)
    prompts = jnp.asarray(task.sample(rng, config.e1_batch).prompts)
    cells = [(k, length, r) for k in config.e1_knobs for length in config.e1_lengths for r in config.e1_dtypes
             if k != "none" or length <= config.control_max_length]
    cells += [(k, config.e1_lengths[0], d) for k in config.e1_ablation for d in config.e1_dtypes if d != "fp32"]
    for state_name, masters in states.items():
        for knobs, length, rollout_dtype in cells:
            ablation = knobs in config.e1_ablation and knobs not in config.e1_knobs
            # eos_id -1: never stop, so every cell measures exactly `length` response tokens
            result = engine_lib.rollout(masters, prompts, jax.random.key(config.seed + length), 0.0, config=model,
                                        policy=engine_policy(ENGINE_POLICY[rollout_dtype]), knobs=engine_lib.get_knobs(knobs),
                                        max_new_tokens=length, eos_id=-1)
            train_dtypes = [rollout_dtype] if ablation else list(config.e1_dtypes)
            for train_dtype in train_dtypes:
                logp, _ = score(masters, result.tokens, config=model, policy=engine_policy(ENGINE_POLICY[train_dtype]),
                                prompt_length=task.prompt_length)
                metrics = {k: _f(v) for k, v in mismatch_metrics(logp, result.logprobs, result.mask).items()}
                rows.append({"model_state": state_name, "knobs": knobs, "ablation": ablation, "length": length,
                             "rollout_dtype": rollout_dtype, "train_dtype": train_dtype, **metrics})
                if (knobs == "all" and train_dtype == rollout_dtype and length == max(config.e1_lengths)
                        and state_name == "sft"):
                    scatter[train_dtype] = (np.exp(np.asarray(logp)).ravel(), np.exp(np.asarray(result.logprobs)).ravel())
    record.write_jsonl("e1.jsonl", rows)
    _plot_e1(rows, scatter, config, record)
    return rows


def _cell(rows, **match):
    for row in rows:
        if all(row[k] == v for k, v in match.items()):
            return row
    return None


def _plot_e1(rows, scatter, config: Config, record: RunRecord):
    plt = pyplot()
    length = max(config.e1_lengths)
    dtypes = list(config.e1_dtypes)
    states = sorted({r["model_state"] for r in rows})
    fig, axes = plt.subplots(1, 2 * len(states), figsize=(5.2 * 2 * len(states), 4.4))
    for i, state in enumerate(states):
        for j, (metric, label) in enumerate((("abs_diff_mean", "mean |dlogp|"), ("k3", "k3 KL / token"))):
            ax = axes[2 * i + j]
            grid = np.full((len(dtypes), len(dtypes)), np.nan)
            for a, t in enumerate(dtypes):
                for b, r in enumerate(dtypes):
                    cell = _cell(rows, model_state=state, knobs="all", length=length, train_dtype=t, rollout_dtype=r)
                    if cell:
                        grid[a, b] = cell[metric]
            image = ax.imshow(np.log10(np.maximum(grid, 1e-12)), cmap="viridis")
            for a in range(len(dtypes)):
                for b in range(len(dtypes)):
                    ax.text(b, a, f"{grid[a, b]:.1e}", ha="center", va="center", color="w", fontsize=8)
            ax.set_xticks(range(len(dtypes)), dtypes)
            ax.set_yticks(range(len(dtypes)), dtypes)
            ax.set_xlabel("rollout dtype")
            ax.set_ylabel("train dtype")
            ax.set_title(f"{label}, {state} policy\nknobs=all, {length} tokens")
            fig.colorbar(image, ax=ax, label="log10")
    fig.tight_layout()
    record.save_plot(fig, "e1_heatmap.png", dpi=110)

    if scatter:
        fig, axes = plt.subplots(1, len(scatter), figsize=(4.6 * len(scatter), 4.4))
        axes = np.atleast_1d(axes)
        for ax, (dtype, (pi, mu)) in zip(axes, sorted(scatter.items())):
            ax.scatter(mu, pi, s=3, alpha=0.4)
            ax.plot([1e-6, 1], [1e-6, 1], "k--", lw=0.8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(1e-6, 1.2)
            ax.set_ylim(1e-6, 1.2)
            ax.set_xlabel("rollout probability mu(token)")
            ax.set_ylabel("training probability pi(token)")
            ax.set_title(f"{dtype}/{dtype}, SFT policy, knobs=all")
        fig.tight_layout()
        record.save_plot(fig, "e1_token_scatter.png", dpi=110)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for state, ax in zip(["random", "sft"], axes):
        for dtype in dtypes:
            xs, ys = [], []
            for length_i in config.e1_lengths:
                cell = _cell(rows, model_state=state, knobs="all", length=length_i, train_dtype=dtype,
                             rollout_dtype=dtype)
                if cell:
                    xs.append(length_i)
                    ys.append(max(cell["seq_log_ratio_abs_mean"], 1e-9))
            ax.plot(xs, ys, "o-", label=f"{dtype}/{dtype}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("response length (tokens)")
        ax.set_ylabel("mean |sum_t log pi/mu|")
        ax.set_title(f"sequence log-ratio vs length ({state}, knobs=all)")
        ax.legend()
    fig.tight_layout()
    record.save_plot(fig, "e1_seq_ratio_vs_length.png", dpi=110)

    ablation = [r for r in rows if r["model_state"] == "sft" and r["length"] == min(config.e1_lengths)
                and r["train_dtype"] == r["rollout_dtype"] and r["train_dtype"] != "fp32"]
    if ablation:
        knobs = list(dict.fromkeys(r["knobs"] for r in ablation))
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(knobs)), 4))
        width = 0.4
        for i, dtype in enumerate(("bf16", "fp16")):
            values = [(_cell(ablation, knobs=k, train_dtype=dtype) or {}).get("abs_diff_mean", np.nan) for k in knobs]
            ax.bar(np.arange(len(knobs)) + (i - 0.5) * width, np.maximum(values, 1e-10), width, label=dtype)
        ax.set_xticks(range(len(knobs)), knobs, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("mean |dlogp| (same dtype both engines)")
        ax.set_title(f"E1 ablation: which engine difference matters (SFT policy, {min(config.e1_lengths)} tokens)")
        ax.legend()
        fig.tight_layout()
        record.save_plot(fig, "e1_knob_ablation.png", dpi=110)


# ----------------------------------------------------------------------------------------------------
# E2-E4


def _rl_config(config: Config, **overrides) -> RLConfig:
    base = {"knobs": config.knobs, "steps": config.rl_steps, "prompts_per_step": config.prompts_per_step,
            "group_size": config.group_size, "num_minibatches": config.num_minibatches,
            "learning_rate": config.rl_learning_rate}
    base.update(overrides)
    return RLConfig(**base)


def e2_study(config, base, task, record):
    runs = {}
    for loss in config.e2_losses:
        for dtype in config.e2_dtypes:
            for seed in config.e2_seeds:
                name = f"{dtype}_{loss}_s{seed}"
                _, history = train_rl(base, config.model, task, _rl_config(config, train_policy=ENGINE_POLICY[dtype], loss=loss,
                                                                            seed=seed),
                                      log_path=record.dir / "e2" / f"{name}.jsonl",
                                      extra={"dtype": dtype, "loss_name": loss, "seed": seed})
                runs[name] = history
                print(f"  E2 {name}: success {history[0]['success_rate']:.2f} -> "
                      f"{np.mean([h['success_rate'] for h in history[-5:]]):.2f}, mean |dlogp| "
                      f"{np.mean([h['abs_diff_mean'] for h in history]):.2e}")
    _plot_e2(runs, config, record)
    return runs


def _band(runs, keys, metric):
    values = np.array([[h[metric] for h in runs[k]] for k in keys])
    return values.mean(0), values.min(0), values.max(0)


def _plot_e2(runs, config, record):
    plt = pyplot()
    metrics = (("success_rate", "train success (pool)"), ("abs_diff_mean", "mean |log pi - log mu|"),
               ("k3", "k3 KL / token"), ("clip_fraction_real", "real PPO clip fraction"))
    fig, axes = plt.subplots(len(metrics), len(config.e2_losses), figsize=(4.6 * len(config.e2_losses), 3.0 * len(metrics)),
                             squeeze=False)
    for j, loss in enumerate(config.e2_losses):
        for i, (metric, label) in enumerate(metrics):
            ax = axes[i, j]
            for dtype in config.e2_dtypes:
                keys = [f"{dtype}_{loss}_s{s}" for s in config.e2_seeds]
                mean, low, high = _band(runs, keys, metric)
                steps = np.arange(len(mean))
                ax.plot(steps, mean, label=dtype)
                ax.fill_between(steps, low, high, alpha=0.2)
            if metric in ("abs_diff_mean", "k3"):
                ax.set_yscale("log")
            ax.set_title(f"{loss}: {label}", fontsize=9)
            ax.set_xlabel("RL step")
            ax.legend(fontsize=7)
    fig.tight_layout()
    record.save_plot(fig, "e2_rl_curves.png", dpi=110)


def e3_dose_response(config, base, task, record, levels):
    rows = []
    for sigma in config.e3_sigmas:
        _, history = train_rl(base, config.model, task,
                              _rl_config(config, train_policy="fp32", loss=config.e3_loss, noise_std=sigma,
                                         seed=config.e2_seeds[0]),
                              log_path=record.dir / "e3" / f"sigma_{sigma:g}.jsonl", extra={"sigma": sigma})
        rows.append({"sigma": sigma, "abs_diff_mean": float(np.mean([h["abs_diff_mean"] for h in history])),
                     "k3": float(np.mean([h["k3"] for h in history])),
                     "final_success": float(np.mean([h["success_rate"] for h in history[-5:]])),
                     "is_ess": float(np.mean([h["ess"] for h in history]))})
        print(f"  E3 sigma={sigma:g}: mean |dlogp| {rows[-1]['abs_diff_mean']:.2e}, final success "
              f"{rows[-1]['final_success']:.2f}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [max(r["abs_diff_mean"], 1e-8) for r in rows]
    ax.plot(xs, [r["final_success"] for r in rows], "o-", label=f"fp32 + logit noise ({config.e3_loss})")
    for r, x in zip(rows, xs):
        ax.annotate(f"sigma={r['sigma']:g}", (x, r["final_success"]), fontsize=7)
    for name, level in levels.items():
        ax.axvline(level, ls="--", color={"bf16": "C3", "fp16": "C2", "fp32": "C7"}.get(name, "k"),
                   label=f"measured {name} (E2)")
    ax.set_xscale("log")
    ax.set_xlabel("mean |log pi - log mu| during training")
    ax.set_ylabel("final train success (last 5 steps)")
    ax.set_title("E3 dose-response")
    ax.legend(fontsize=7)
    fig.tight_layout()
    record.save_plot(fig, "e3_dose_response.png", dpi=110)
    record.write_jsonl("e3.jsonl", rows)
    return rows


def e4_loss_scaling(config, base, task, record):
    runs = {}
    for enabled in (True, False):
        name = "scaler_on" if enabled else "scaler_off"
        _, history = train_rl(base, config.model, task,
                              _rl_config(config, train_policy="fp16-mixed", loss=config.e4_loss, loss_scale=enabled,
                                         growth_interval=config.e4_growth_interval, steps=config.e4_steps,
                                         seed=config.e2_seeds[0]),
                              log_path=record.dir / "e4" / f"{name}.jsonl", extra={"loss_scale_enabled": enabled})
        runs[name] = history
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for name, history in runs.items():
        steps = [h["step"] for h in history]
        axes[0].plot(steps, [h["loss_scale"] for h in history], label=name)
        axes[1].plot(steps, [h["skipped_steps"] for h in history], label=name)
        axes[2].plot(steps, [h["grad_zero_fraction"] for h in history], label=name)
        axes[3].plot(steps, [h["success_rate"] for h in history], label=name)
    for ax, title in zip(axes, ("loss scale", "skipped steps (cumulative)", "fraction of zero gradient entries",
                                "train success")):
        ax.set_title(f"E4 fp16 {config.e4_loss}: {title}", fontsize=9)
        ax.set_xlabel("RL step")
        ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    fig.tight_layout()
    record.save_plot(fig, "e4_loss_scaling.png", dpi=110)
    return runs


# ----------------------------------------------------------------------------------------------------


def run(config: Config) -> pathlib.Path:
    start = time.perf_counter()
    record = RunRecord.create(config.out_dir, "precision-rl", {"config": to_dict(config), "paper": PAPER,
                                                               "jax": jax.__version__, "backend": jax.default_backend()},
                              stamp=config.run_name)
    out = record.dir
    task = ArithmeticTask(digits=config.digits, pool_size=config.pool_size)
    random_init = _masters(config)
    print(f"precision-rl: {config.digits}-digit addition, {task.max_new_tokens}-token budget -> {out}")
    base, sft_log = sft(random_init, config.model, task, steps=config.sft_steps, batch_size=config.sft_batch,
                        learning_rate=config.sft_learning_rate, seed=config.seed, error_rate=config.sft_error_rate,
                        distractor_rate=config.distractor_rate, target=config.sft_target,
                        eval_every=config.sft_eval_every)
    base_success = evaluate_success(base, config.model, task, 256, config.seed + 99)
    print(f"  SFT base: {sft_log[-1]['step']} steps, pool success {base_success:.2f}")
    record.write_jsonl("sft.jsonl", sft_log)
    summary = {"label": f"toy scale: a {config.model.num_params():,}-parameter policy, "
                        f"{jax.default_backend()} backend; the paper's numbers are quoted, not reproduced", "paper": PAPER, "sft": {"steps": sft_log[-1]["step"],
                                                                  "pool_success": base_success}}
    if "e1" in config.experiments:
        rows = e1_matrix(config, {"random": random_init, "sft": base}, task, record)
        summary["e1"] = _e1_summary(rows, config)
    levels = {}
    if "e2" in config.experiments:
        runs = e2_study(config, base, task, record)
        summary["e2"] = {name: {"success_first": h[0]["success_rate"],
                                "success_last5": float(np.mean([x["success_rate"] for x in h[-5:]])),
                                "abs_diff_mean": float(np.mean([x["abs_diff_mean"] for x in h])),
                                "k3": float(np.mean([x["k3"] for x in h])),
                                "clip_fraction_real": float(np.mean([x["clip_fraction_real"] for x in h])),
                                "phantom_clip_fraction": float(np.mean([x["phantom_clip_fraction"] for x in h])),
                                "is_mask_fraction": float(np.mean([x["is_mask_fraction"] for x in h])),
                                "wall_s_per_step": float(np.median([x["wall_s"] for x in h]))}
                         for name, h in runs.items()}
        for dtype in config.e2_dtypes:
            levels[dtype] = float(np.mean([v["abs_diff_mean"] for k, v in summary["e2"].items()
                                           if k.startswith(dtype + "_")]))
    if "e3" in config.experiments:
        summary["e3"] = e3_dose_response(config, base, task, record, levels)
    if "e4" in config.experiments:
        runs = e4_loss_scaling(config, base, task, record)
        summary["e4"] = {name: {"final_loss_scale": h[-1]["loss_scale"], "skipped_steps": h[-1]["skipped_steps"],
                                "grad_zero_fraction": float(np.mean([x["grad_zero_fraction"] for x in h])),
                                "success_last5": float(np.mean([x["success_rate"] for x in h[-5:]]))}
                         for name, h in runs.items()}
    summary["wall_s"] = time.perf_counter() - start
    record.write_summary(summary)
    (out / "summary.md").write_text(_markdown(summary, config, out))
    print(f"precision-rl: done in {summary['wall_s']:.0f} s; plots and summary.md in {out}")
    return out


def _e1_summary(rows, config: Config) -> dict:
    length = max(config.e1_lengths)
    result = {}
    for state in ("random", "sft"):
        for t in config.e1_dtypes:
            for r in config.e1_dtypes:
                for knobs in config.e1_knobs:
                    cell = _cell(rows, model_state=state, knobs=knobs, length=length, train_dtype=t, rollout_dtype=r)
                    if cell:
                        result[f"{state}/{knobs}/{t}-train/{r}-rollout"] = {
                            k: cell[k] for k in ("abs_diff_mean", "abs_diff_p99", "k3", "seq_kl_k3", "seq_log_ratio_abs_mean",
                                                 "seq_log_ratio_mean", "phantom_clip_fraction")}
    for state in ("random", "sft"):
        bf = _cell(rows, model_state=state, knobs="all", length=length, train_dtype="bf16", rollout_dtype="bf16")
        fp = _cell(rows, model_state=state, knobs="all", length=length, train_dtype="fp16", rollout_dtype="fp16")
        if bf and fp:
            result[f"{state}/bf16_over_fp16"] = {
                "abs_diff_mean": bf["abs_diff_mean"] / max(fp["abs_diff_mean"], 1e-12),
                "k3": bf["k3"] / max(fp["k3"], 1e-15),
                "seq_kl_k3": bf["seq_kl_k3"] / max(fp["seq_kl_k3"], 1e-15),
                "seq_log_ratio_abs_mean": bf["seq_log_ratio_abs_mean"] / max(fp["seq_log_ratio_abs_mean"], 1e-12)}
    return result


def _markdown(summary: dict, config: Config, out: pathlib.Path) -> str:
    lines = [f"# precision-rl ({out})", "", summary["label"], "",
             f"SFT base: {summary['sft']['steps']} steps, pool success {summary['sft']['pool_success']:.2f}", ""]
    if "e1" in summary:
        length = max(config.e1_lengths)
        lines += [f"## E1 offline mismatch (knobs=all, {length} tokens, {config.e1_batch} sequences)", "",
                  ("| policy | train/rollout | mean abs dlogp | p99 | k3 KL/token | seq KL (sum k3) | "
                   "mean abs seq log-ratio | phantom clip |"),
                  "|---|---|---|---|---|---|---|---|"]
        for key, v in summary["e1"].items():
            if "/all/" in key:
                state, _, t, r = key.split("/")
                lines.append(f"| {state} | {t.split('-')[0]}/{r.split('-')[0]} | {v['abs_diff_mean']:.2e} | "
                             f"{v['abs_diff_p99']:.2e} | {v['k3']:.2e} | {v['seq_kl_k3']:.2e} | {v['seq_log_ratio_abs_mean']:.3f} | "
                             f"{v['phantom_clip_fraction']:.4f} |")
        for state in ("random", "sft"):
            ratio = summary["e1"].get(f"{state}/bf16_over_fp16")
            if ratio:
                lines.append(f"\n{state}: bf16/fp16 ratio of mean |dlogp| {ratio['abs_diff_mean']:.1f}x, of k3 "
                             f"{ratio['k3']:.1f}x, of sequence KL {ratio['seq_kl_k3']:.1f}x, of |seq log-ratio| "
                             f"{ratio['seq_log_ratio_abs_mean']:.1f}x")
        lines.append("")
    if "e2" in summary:
        lines += ["## E2 RL (arithmetic, SFT base)", "",
                  "| run | success first -> last5 | mean abs dlogp | k3 | real clip | phantom clip | s/step |",
                  "|---|---|---|---|---|---|---|"]
        for name, v in summary["e2"].items():
            lines.append(f"| {name} | {v['success_first']:.2f} -> {v['success_last5']:.2f} | {v['abs_diff_mean']:.2e} "
                         f"| {v['k3']:.2e} | {v['clip_fraction_real']:.3f} | {v['phantom_clip_fraction']:.4f} | "
                         f"{v['wall_s_per_step']:.2f} |")
        lines.append("")
    if "e3" in summary:
        lines += ["## E3 dose-response (fp32 + logit noise)", "", "| sigma | mean abs dlogp | final success |",
                  "|---|---|---|"]
        lines += [f"| {r['sigma']:g} | {r['abs_diff_mean']:.2e} | {r['final_success']:.2f} |" for r in summary["e3"]]
        lines.append("")
    if "e4" in summary:
        lines += ["## E4 loss scaling (fp16)", "", "| run | final scale | skipped | zero-grad fraction | success last5 |",
                  "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['final_loss_scale']:g} | {v['skipped_steps']} | {v['grad_zero_fraction']:.4f} | "
                  f"{v['success_last5']:.2f} |" for k, v in summary["e4"].items()]
        lines.append("")
    lines.append(f"Wall time: {summary['wall_s']:.0f} s. Paper numbers: {json.dumps(PAPER['offline_sequence_kl'])}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run(PRESETS["tiny"])

"""Kimi Linear ablation at toy scale: KDA:MLA layer schedules compared at matched parameters and tokens.

Arms (``Config.schedules``, KDA:MLA ratios as in the paper's Table 1): ``3:1`` (the Kimi Linear
hybrid), ``0:1`` (all MLA), ``1:0`` (all KDA), optionally ``1:1`` / ``7:1``. An ``a:1`` schedule puts
MLA at every (a+1)-th layer (1-based), so the last of each group is full attention, as in the
released config. Every arm is trained twice from the same seed on the same batches:

* **language modelling** on the embedded corpus (Python documentation, BPE tokenizer trained on it):
  train and held-out loss curves;
* **MQAR** (multi-query associative recall, Zoology / Based; paper Fig. 4 for KDA): a sequence of
  key-value pairs, then queries (keys drawn from the pairs) each followed by its value; the loss is on
  the values after queries only; reported: accuracy of the argmax prediction on held-out sequences.

Matched parameters: an MLA layer and a KDA layer of the same width do not have the same parameter
count, so (``match_params``) the MLA latent rank ``kv_lora_rank`` is set so an MLA layer has about as
many parameters as a KDA layer; the residual difference (a few dozen parameters per layer) is
reported per arm. Matched tokens: same steps, batch size, sequence length and data order.

Also recorded: decode-cache bytes (``cache_bytes``) of the 48B-A3B and tiny presets, hybrid vs
all-MLA (vs all-KDA) per token and at 1M tokens (a markdown table, ``cache_bytes.md``), and decode
tokens/s against context length for each arm's trained LM (a jitted greedy loop over the model's own
mixed cache; the cache is filled with random values of the right shape instead of a real prefill,
which does not change the work per token). Those are **CPU toy numbers**: they show the shape (all-MLA
slows with context, KDA does not) and nothing about accelerator speed.

The paper's numbers (``PAPER``) are quoted with their source and never presented as ours.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import platform
import time
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxstack.config import to_dict
from jaxstack.data.lm import text_data
from jaxstack.models.configs import KimiLinearConfig, get_kimi_config
from jaxstack.models.kimi_linear import KimiCache, KimiLinearForCausalLM, cache_bytes, init_cache
from jaxstack.runs import RunRecord, pyplot, read_metrics
from jaxstack.train.optimizers import OptimizerConfig
from jaxstack.train.step import make_batch, token_cross_entropy
from jaxstack.train.trainer import TrainConfig, train

LABEL = ("toy scale (tiny preset: ~0.47M-parameter models, ~300k LM tokens per arm, minutes on 2 CPU cores); "
         "decode timings are CPU toy numbers. The paper's numbers are quoted under 'paper' with their source; "
         "they are not reproduced here.")

PAPER = {
    "source": "Kimi Linear tech report (Moonshot AI, arXiv 2510.26692), as summarised in shared/refs/kda.md",
    "ablation_validation_ppl": {
        "note": "Table 1, 16-layer scaling-law model, validation perplexity (lower is better)",
        "3:1": 5.65, "0:1 (all MLA)": 5.77, "1:1": 5.66, "7:1": 5.70, "15:1": 5.82,
    },
    "decode": "TPOT 1.84 ms vs 11.48 ms for MLA at 1M context, 6.3x (Fig. 1b, larger batches); "
              "~2.2-2.3x at batch size 1 (Fig. 7b, section 6.3)",
    "kv_cache": "up to 75% smaller KV cache (48B-A3B: 7 of 27 layers MLA)",
}


# ----------------------------------------------------------------------------------------------------
# Config


@dataclasses.dataclass(frozen=True)
class MQARConfig:
    """Multi-query associative recall. A sequence is ``BOS k1 v1 .. kN vN q1 a1 .. qM aM`` with N =
    ``num_pairs`` distinct keys from ``num_keys``, values from ``num_values`` (repeats allowed), and M =
    ``num_queries`` distinct keys of the pairs in random order, each followed by its value (the loss and
    the accuracy count those values only). Sequence length ``2 (N + M)`` (+1 for the BOS)."""

    num_pairs: int = 4
    num_queries: int = 4
    num_keys: int = 16
    num_values: int = 16
    train_examples: int = 16384
    eval_examples: int = 512
    steps: int = 200
    batch_size: int = 64
    learning_rate: float = 1e-2
    warmup_steps: int = 20

    def __post_init__(self):
        if self.num_pairs > self.num_keys:
            raise ValueError(f"mqar.num_pairs={self.num_pairs} exceeds mqar.num_keys={self.num_keys} (keys are distinct)")
        if not 0 < self.num_queries <= self.num_pairs:
            raise ValueError(f"mqar.num_queries: expected 1..num_pairs={self.num_pairs}, got {self.num_queries}")

    @property
    def seq_len(self) -> int:
        """Model inputs per sequence (the window is seq_len + 1 tokens)."""
        return 2 * (self.num_pairs + self.num_queries)

    @property
    def vocab_size(self) -> int:
        return 1 + self.num_keys + self.num_values


@dataclasses.dataclass(frozen=True)
class Config:
    """model: the base config (its schedule is replaced per arm). schedules: KDA:MLA ratios ``a:1``,
    ``0:1`` (all MLA), ``1:0`` (all KDA). match_params: tune MLA ``kv_lora_rank`` so an MLA layer has about
    the parameters of a KDA layer. decode_contexts: context lengths for decode tokens/s (each arm's LM)."""

    model: KimiLinearConfig = get_kimi_config("kimi-linear-tiny", vocab_size=2048, kda_backend="reference")
    schedules: tuple[str, ...] = ("3:1", "0:1", "1:0")
    match_params: bool = True
    train: TrainConfig = TrainConfig(steps=150, batch_size=16, seq_len=128, log_every=10, eval_every=50,
                                     eval_batches=100, checkpoint_every=1000, keep_checkpoints=1)
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=3e-3, warmup_steps=20, decay_fraction=0.2)
    mqar: MQARConfig = MQARConfig()
    decode_contexts: tuple[int, ...] = (256, 2048, 16384, 65536)
    decode_steps: int = 32
    decode_batch: int = 1
    decode_repeats: int = 3
    cache_presets: tuple[str, ...] = ("kimi-linear-48b-a3b", "kimi-linear-tiny")
    cache_contexts: tuple[int, ...] = (4096, 32768, 131072, 1048576)
    show_progress: bool = True
    out_dir: str = "runs"  # the record goes to out_dir/kimi-linear/<run_name or a timestamp>
    run_name: str | None = None


PRESETS = {
    # ~10 minutes on 2 CPU cores: d=64, 4 layers (3:1 = MLA at layer 4), MoE 2-of-4 + 1 shared;
    # LM 150 steps x 16 x 128 tokens (~307k tokens per arm, ~2.5 passes over the corpus); MQAR (4 pairs of
    # 16 keys / 16 values) 200 steps x 64 x 16 tokens. 1:1 (also fits 4 layers) adds ~3 minutes:
    # --schedules=3:1,0:1,1:0,1:1.
    # kda_backend="reference" (the token recurrence): at T <= 128 and K = 16 it is faster on CPU than the
    # chunked XLA path and compiles in a fraction of the time; both compute the same function (tested).
    "tiny": Config(),
    # One accelerator: the paper's ablation depth (16 layers), d=1024, all five schedules, a harder MQAR
    # (64 pairs over 4096 keys). The embedded corpus is only ~120k tokens, so at this scale the LM arm
    # measures fitting / memorisation speed; a larger corpus is the next step for a real ablation.
    "paper": Config(
        model=get_kimi_config("kimi-linear-small", num_layers=16, vocab_size=8192, max_position_embeddings=65536,
                              kda_layers=tuple(range(1, 17)), full_attn_layers=()),
        schedules=("3:1", "0:1", "1:0", "1:1", "7:1"),
        train=TrainConfig(steps=2000, batch_size=32, seq_len=512, log_every=20, eval_every=250, eval_batches=50,
                          checkpoint_every=1000, keep_checkpoints=1, policy="bf16-mixed"),
        optimizer=OptimizerConfig(learning_rate=1.5e-3, warmup_steps=200, decay_fraction=0.2),
        mqar=MQARConfig(num_pairs=64, num_queries=64, num_keys=4096, num_values=4096, train_examples=262144,
                        eval_examples=2048, steps=4000, batch_size=64, learning_rate=1e-3, warmup_steps=200),
        decode_contexts=(4096, 32768, 131072, 262144),
        decode_steps=64,
        decode_batch=4,
    ),
}


# ----------------------------------------------------------------------------------------------------
# Schedules and parameter matching


def schedule_types(ratio: str, num_layers: int) -> tuple[str, ...]:
    """Per-layer types for a KDA:MLA ratio: ``"0:1"`` all MLA, ``"1:0"`` all KDA, ``"a:1"`` MLA at every
    (a+1)-th layer (1-based; the released 48B puts MLA at 4, 8, .., 24 for 3:1)."""
    try:
        kda, mla = (int(part) for part in ratio.split(":"))
    except ValueError:
        raise ValueError(f"schedule: expected a KDA:MLA ratio like '3:1', '0:1' or '1:0', got {ratio!r}") from None
    if (kda, mla) == (0, 1):
        return ("full_attention",) * num_layers
    if (kda, mla) == (1, 0):
        return ("linear_attention",) * num_layers
    if mla != 1 or kda < 1:
        raise ValueError(f"schedule {ratio!r}: supported ratios are 'a:1' (a >= 1), '0:1' and '1:0'")
    if num_layers < kda + 1:
        raise ValueError(f"schedule {ratio!r} needs at least {kda + 1} layers; the model has {num_layers}")
    return tuple("full_attention" if (i + 1) % (kda + 1) == 0 else "linear_attention" for i in range(num_layers))


def schedule_name(ratio: str) -> str:
    """Directory-safe name: ``3:1`` -> ``kda3-mla1``."""
    kda, mla = ratio.split(":")
    return f"kda{kda}-mla{mla}"


def schedule_label(ratio: str) -> str:
    return {"0:1": "all-MLA (0:1)", "1:0": "all-KDA (1:0)"}.get(ratio, f"hybrid {ratio}")


def mixer_params(config: KimiLinearConfig) -> dict[str, int]:
    """Parameters of one KDA and one MLA token mixer of this config's shape (from abstract shapes)."""
    probe = config.replace(vocab_size=8, num_layers=2, kda_layers=(1,), full_attn_layers=(2,), first_k_dense_replace=2)
    model = nnx.eval_shape(lambda: KimiLinearForCausalLM(probe, rngs=nnx.Rngs(0)))
    count = lambda module: sum(v.size for _, v in nnx.to_flat_state(nnx.state(module, nnx.Param)))  # noqa: E731
    return {"kda": int(count(model.layers[0].self_attn)), "mla": int(count(model.layers[1].self_attn))}


def match_mla_params(config: KimiLinearConfig) -> KimiLinearConfig:
    """``config`` with ``kv_lora_rank`` (a multiple of 4) chosen so an MLA layer's parameters come closest
    to a KDA layer's. MLA parameters are affine in the rank, so two probes give the slope."""
    low, high = config.replace(kv_lora_rank=4), config.replace(kv_lora_rank=8)
    target = mixer_params(low)["kda"]
    at_low, at_high = mixer_params(low)["mla"], mixer_params(high)["mla"]
    slope = (at_high - at_low) / 4
    rank = 4 + (target - at_low) / slope
    candidates = {max(4, int(4 * np.floor(rank / 4))), max(4, int(4 * np.ceil(rank / 4)))}
    best = min(candidates, key=lambda r: (abs(mixer_params(config.replace(kv_lora_rank=r))["mla"] - target), r))
    return config.replace(kv_lora_rank=best)


# ----------------------------------------------------------------------------------------------------
# MQAR data


def mqar_examples(config: MQARConfig, count: int, seed: int) -> dict[str, np.ndarray]:
    """``count`` MQAR sequences: tokens ``[count, seq_len + 1]`` int32, loss_mask (1 on the answer values,
    aligned with tokens), and for checking: keys / values ``[count, N]``, queries / answers ``[count, M]``.

    Token ids: 0 = BOS, keys ``1 .. num_keys``, values ``num_keys + 1 .. num_keys + num_values``.
    """
    rng = np.random.default_rng(seed)
    n, m = config.num_pairs, config.num_queries
    keys = 1 + np.argsort(rng.random((count, config.num_keys)), axis=1)[:, :n]  # distinct per row
    values = 1 + config.num_keys + rng.integers(0, config.num_values, size=(count, n))
    which = np.argsort(rng.random((count, n)), axis=1)[:, :m]  # distinct pairs, random order
    queries = np.take_along_axis(keys, which, axis=1)
    answers = np.take_along_axis(values, which, axis=1)
    tokens = np.zeros((count, config.seq_len + 1), np.int32)
    tokens[:, 1:2 * n + 1:2], tokens[:, 2:2 * n + 2:2] = keys, values
    tokens[:, 2 * n + 1::2], tokens[:, 2 * n + 2::2] = queries, answers
    loss_mask = np.zeros_like(tokens)
    loss_mask[:, 2 * n + 2::2] = 1
    return {"tokens": tokens, "loss_mask": loss_mask, "keys": keys.astype(np.int32), "values": values.astype(np.int32),
            "queries": queries.astype(np.int32), "answers": answers.astype(np.int32)}


def _mqar_dataset(examples: dict[str, np.ndarray], batch_size: int, *, seed: int, shuffle: bool = True,
                  repeat: bool = True):
    """Grain iterator of {"tokens", "loss_mask"} batches (checkpointable, like ``jaxstack.data.lm.lm_dataset``)."""
    stacked = np.stack([examples["tokens"], examples["loss_mask"]], axis=1)  # [N, 2, T+1]
    dataset = grain.MapDataset.source(stacked)
    if repeat:
        dataset = dataset.repeat(None)
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    dataset = dataset.map(lambda w: {"tokens": w[0], "loss_mask": w[1]}).batch(batch_size, drop_remainder=True)
    return dataset.to_iter_dataset()


def mqar_accuracy(model, examples: dict[str, np.ndarray], batch_size: int) -> dict[str, float]:
    """Held-out recall: accuracy of the argmax prediction at each query's answer, and the loss there."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def score(state, tokens, loss_mask):
        batch = make_batch(tokens, loss_mask)
        logits = nnx.merge(graphdef, state)(batch["inputs"]).logits
        correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32) * batch["loss_mask"]
        loss, count = token_cross_entropy(logits, batch["targets"], batch["loss_mask"])
        return correct.sum(), loss * count, count

    correct = total_loss = count = 0.0
    rows = len(examples["tokens"])
    for start in range(0, rows - batch_size + 1, batch_size):
        c, l, n = score(state, jnp.asarray(examples["tokens"][start:start + batch_size]),
                        jnp.asarray(examples["loss_mask"][start:start + batch_size]))
        correct, total_loss, count = correct + float(c), total_loss + float(l), count + float(n)
    return {"accuracy": correct / max(count, 1.0), "loss": total_loss / max(count, 1.0), "answers": int(count)}


# ----------------------------------------------------------------------------------------------------
# Decode timing


def decode_tokens_per_s(model: KimiLinearForCausalLM, context: int, *, steps: int, batch: int, repeats: int,
                        seed: int = 0) -> dict[str, float]:
    """Greedy decode of ``steps`` tokens after ``context`` cached tokens, jitted as one loop.

    The cache (MLA latents, KDA states, conv inputs) is filled with random values of the right shape and
    ``lengths = context``: the work per decoded token is what it would be after a real prefill, without
    paying for one. Returns the best of ``repeats`` timed calls (after one compile call).
    """
    config = model.config
    cache = init_cache(config, batch, context + steps)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    cache = KimiCache.from_stacked(
        latent=0.1 * jax.random.normal(k1, cache.latent.shape, cache.latent.dtype),
        recurrent=0.1 * jax.random.normal(k2, cache.recurrent.shape, cache.recurrent.dtype),
        conv=0.1 * jax.random.normal(k3, cache.conv.shape, cache.conv.dtype),
        lengths=jnp.full((batch,), context, jnp.int32),
    )
    graphdef, state = nnx.split(model)

    @jax.jit
    def loop(state, cache, token):
        model = nnx.merge(graphdef, state)

        def body(_, carry):
            cache, token = carry
            out = model(token[:, None], cache=cache, mode="recurrent")
            return out.cache, jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32)

        return jax.lax.fori_loop(0, steps, body, (cache, token))

    token = jnp.ones((batch,), jnp.int32)
    start = time.perf_counter()
    jax.block_until_ready(loop(state, cache, token))
    compile_s = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(loop(state, cache, token))
        best = min(best, time.perf_counter() - start)
    return {"tokens_per_s": batch * steps / best, "ms_per_step": 1e3 * best / steps, "compile_s": compile_s}


# ----------------------------------------------------------------------------------------------------
# Cache-bytes table


def _human(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def cache_report(presets: tuple[str, ...], contexts: tuple[int, ...]) -> dict[str, Any]:
    """``cache_bytes`` of each preset (bf16 latents/conv, f32 KDA state), plus its all-KDA variant."""
    report = {}
    for name in presets:
        config = get_kimi_config(name)
        all_kda = config.with_schedule(["linear_attention"] * config.num_layers)
        report[name] = {"hybrid_vs_all_mla": cache_bytes(config, context_lengths=contexts),
                        "all_kda": cache_bytes(all_kda, context_lengths=contexts)}
    return report


def cache_table(report: dict[str, Any]) -> str:
    """Markdown: per preset, all-MLA vs Kimi Linear bytes per token and at 1M tokens (per sequence)."""
    lines = [
        "| config | layers (KDA + MLA) | all-MLA per token | Kimi Linear per token (MLA latents) "
        "| Kimi Linear fixed (KDA state + conv) | all-MLA at 1M | Kimi Linear at 1M | reduction at 1M |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in report.items():
        r = entry["hybrid_vs_all_mla"]
        at = r["contexts"].get(1048576) or r["contexts"][max(r["contexts"])]
        lines.append(
            f"| {name} | {r['layers']['kda']} + {r['layers']['mla']} | {_human(r['per_token']['all_mla'])} "
            f"| {_human(r['per_token']['hybrid'])} | {_human(r['fixed']['hybrid'])} | {_human(at['all_mla_bytes'])} "
            f"| {_human(at['hybrid_bytes'])} | {100 * at['reduction']:.1f}% |"
        )
    first = next(iter(report.values()))["hybrid_vs_all_mla"]
    lines.append("")
    lines.append(f"Per sequence; latents and conv inputs in {first['dtype']}, KDA recurrent state in "
                 f"{first['state_dtype']}. From `jaxstack.models.kimi_linear.cache_bytes` (arithmetic on the "
                 "configs, not a measurement). 1M = 1,048,576 tokens.")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------
# Plots


def plot_loss_curves(arms: dict[str, Any]):
    """Train and held-out LM loss per schedule (a matplotlib figure)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (ratio, arm) in enumerate(arms.items()):
        color = f"C{i}"
        train_points = [(m["step"], m["loss"]) for m in arm["lm"]["metrics"] if "loss" in m]
        eval_points = [(m["step"], m["eval_loss"]) for m in arm["lm"]["metrics"] if "eval_loss" in m]
        if train_points:
            ax.plot(*zip(*train_points), color=color, lw=1.0, alpha=0.7, label=f"{schedule_label(ratio)} train")
        if eval_points:
            ax.plot(*zip(*eval_points), "o--", color=color, lw=1.5, label=f"{schedule_label(ratio)} held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title("Kimi Linear schedules, embedded corpus (toy scale, CPU)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_mqar(arms: dict[str, Any], chance: float):
    """MQAR held-out accuracy per schedule against chance (a matplotlib figure)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [schedule_label(r) for r in arms]
    values = [arm["mqar"]["accuracy"] for arm in arms.values()]
    bars = ax.bar(labels, values, color=[f"C{i}" for i in range(len(values))])
    for bar, value in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, value + 0.01, f"{value:.2f}", ha="center", fontsize=9)
    ax.axhline(chance, color="gray", ls=":", label=f"chance ({chance:.3f})")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out recall accuracy")
    ax.set_title("MQAR (toy scale, CPU)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_cache_bytes(report: dict[str, Any]):
    """Decode-cache bytes against context per preset (a matplotlib figure)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(report), figsize=(5.5 * len(report), 4), squeeze=False)
    for ax, (name, entry) in zip(axes[0], report.items()):
        contexts = sorted(entry["hybrid_vs_all_mla"]["contexts"])
        hybrid = [entry["hybrid_vs_all_mla"]["contexts"][n]["hybrid_bytes"] for n in contexts]
        all_mla = [entry["hybrid_vs_all_mla"]["contexts"][n]["all_mla_bytes"] for n in contexts]
        all_kda = [entry["all_kda"]["contexts"][n]["hybrid_bytes"] for n in contexts]
        ax.loglog(contexts, all_mla, "o-", label="all-MLA")
        ax.loglog(contexts, hybrid, "s-", label="Kimi Linear (3:1 schedule)")
        ax.loglog(contexts, all_kda, "^-", label="all-KDA (constant)")
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("decode cache per sequence (bytes)")
        ax.set_title(name)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_decode(arms: dict[str, Any], batch: int):
    """Decode tokens/s against context per schedule (a matplotlib figure)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (ratio, arm) in enumerate(arms.items()):
        points = sorted((int(n), r["tokens_per_s"]) for n, r in arm["decode"].items())
        ax.semilogx(*zip(*points), "o-", color=f"C{i}", label=schedule_label(ratio))
    ax.set_xlabel("context length (tokens in the cache)")
    ax.set_ylabel("decode tokens / s")
    ax.set_title(f"decode speed, tiny model, batch {batch}: CPU toy numbers")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------
# Run


def _train_record(run_dir: pathlib.Path, summary: dict[str, Any], wall_s: float) -> dict[str, Any]:
    metrics = read_metrics(run_dir)
    evals = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    return {
        "run_dir": str(run_dir),
        "final_train_loss": summary["final"].get("loss"),
        "held_out_loss": evals[-1] if evals else None,
        "tokens_per_s": summary["final"].get("tokens_per_s"),
        "wall_s": wall_s,
        "metrics": metrics,
    }


def run(config: Config) -> pathlib.Path:
    started = time.perf_counter()
    run_record = RunRecord.create(config.out_dir, "kimi-linear", config, stamp=config.run_name)
    run_dir = run_record.dir
    base = match_mla_params(config.model) if config.match_params else config.model
    per_layer = mixer_params(base)
    schedules = {ratio: schedule_types(ratio, base.num_layers) for ratio in config.schedules}  # validate first

    # Language-model data: the embedded corpus, BPE trained on its train split.
    tcfg = config.train
    text = text_data(vocab_size=base.vocab_size, seq_len=tcfg.seq_len, batch_size=tcfg.batch_size, seed=tcfg.seed,
                     tokenizer_name="pydoc")

    # MQAR data: same training and held-out sequences for every arm.
    mq = config.mqar
    mqar_train = mqar_examples(mq, mq.train_examples, seed=tcfg.seed + 1)
    mqar_eval = mqar_examples(mq, mq.eval_examples, seed=tcfg.seed + 2)
    mqar_train_cfg = dataclasses.replace(tcfg, steps=mq.steps, batch_size=mq.batch_size, seq_len=mq.seq_len,
                                         eval_every=max(mq.steps // 4, 1), eval_batches=4,
                                         log_every=min(tcfg.log_every, mq.steps))
    mqar_opt = dataclasses.replace(config.optimizer, learning_rate=mq.learning_rate, warmup_steps=mq.warmup_steps)
    mqar_eval_batch = min(mq.batch_size, mq.eval_examples)
    print(f"kimi-linear: {len(schedules)} schedules x (LM {tcfg.steps} steps x {tcfg.batch_size} x {tcfg.seq_len} "
          f"tokens, MQAR {mq.steps} steps x {mq.batch_size} x {mq.seq_len}); MLA kv_lora_rank "
          f"{config.model.kv_lora_rank} -> {base.kv_lora_rank} (mixer params: KDA {per_layer['kda']}, "
          f"MLA {per_layer['mla']}) -> {run_dir}")

    arms: dict[str, Any] = {}
    for ratio, types in schedules.items():
        model_config = base.with_schedule(list(types))
        arm_name = schedule_name(ratio)
        params = model_config.num_params()
        arm: dict[str, Any] = {"label": schedule_label(ratio), "layer_types": list(types),
                               "kda_layers": model_config.num_kda_layers, "mla_layers": model_config.num_mla_layers,
                               "params": params}

        print(f"[{ratio}] LM: {params['total']:,} parameters ({params['activated']:,} activated)")
        t0 = time.perf_counter()
        lm_model, lm_summary = train(model_config, tcfg, config.optimizer, iter(text.dataset),
                                     run_dir / "lm" / arm_name, eval_data=text.eval_data, show_progress=config.show_progress,
                                     extra_config={"schedule": ratio, "corpus": "pydoc_data.topics (PSF licence)"})
        arm["lm"] = _train_record(run_dir / "lm" / arm_name, lm_summary, time.perf_counter() - t0)
        arm["lm"]["tokens_seen"] = tcfg.steps * tcfg.batch_size * tcfg.seq_len

        print(f"[{ratio}] decode timing at contexts {list(config.decode_contexts)}")
        arm["decode"] = {
            int(n): decode_tokens_per_s(lm_model, int(n), steps=config.decode_steps, batch=config.decode_batch,
                                        repeats=config.decode_repeats)
            for n in config.decode_contexts
        }
        del lm_model

        mqar_config = model_config.replace(vocab_size=mq.vocab_size, bos_token_id=0, eos_token_id=None,
                                           pad_token_id=None, max_position_embeddings=max(mq.seq_len, 64))
        mqar_data = _mqar_dataset(mqar_train, mq.batch_size, seed=tcfg.seed)

        def mqar_eval_data():
            return _mqar_dataset(mqar_eval, mqar_eval_batch, seed=0, shuffle=False, repeat=False)

        print(f"[{ratio}] MQAR: {mqar_config.num_params()['total']:,} parameters")
        t0 = time.perf_counter()
        mqar_model, mqar_summary = train(mqar_config, mqar_train_cfg, mqar_opt, iter(mqar_data),
                                         run_dir / "mqar" / arm_name, eval_data=mqar_eval_data,
                                         show_progress=config.show_progress,
                                         extra_config={"schedule": ratio, "mqar": to_dict(mq)})
        record = _train_record(run_dir / "mqar" / arm_name, mqar_summary, time.perf_counter() - t0)
        record.update(mqar_accuracy(mqar_model, mqar_eval, mqar_eval_batch))
        record["params"] = mqar_config.num_params()
        arm["mqar"] = record
        del mqar_model
        arms[ratio] = arm
        print(f"[{ratio}] held-out LM loss {arm['lm']['held_out_loss']:.3f}, MQAR accuracy "
              f"{record['accuracy']:.3f}, decode tok/s "
              + ", ".join(f"{n}: {r['tokens_per_s']:.0f}" for n, r in arm["decode"].items()))

    report = cache_report(config.cache_presets, config.cache_contexts)
    table = cache_table(report)
    (run_dir / "cache_bytes.md").write_text(table)
    run_record.save_plot(plot_loss_curves(arms), "loss_curves.png")
    run_record.save_plot(plot_mqar(arms, 1.0 / mq.num_values), "mqar_accuracy.png")
    run_record.save_plot(plot_cache_bytes(report), "cache_bytes.png")
    run_record.save_plot(plot_decode(arms, config.decode_batch), "decode_tokens_per_s.png")

    wall = time.perf_counter() - started
    summary = {
        "label": LABEL,
        "device": {"platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind,
                   "devices": jax.device_count(), "cpu_cores": len(os.sched_getaffinity(0))
                   if hasattr(os, "sched_getaffinity") else os.cpu_count(), "machine": platform.machine()},
        "matched_params": {"enabled": config.match_params, "kv_lora_rank": base.kv_lora_rank,
                           "mixer_params_per_layer": per_layer},
        "schedules": {
            ratio: {
                "label": arm["label"], "layer_types": arm["layer_types"], "kda_layers": arm["kda_layers"],
                "mla_layers": arm["mla_layers"], "params": arm["params"],
                "lm": {k: v for k, v in arm["lm"].items() if k != "metrics"},
                "mqar": {k: v for k, v in arm["mqar"].items() if k != "metrics"},
                "decode_cpu_toy": {str(n): r for n, r in arm["decode"].items()},
            }
            for ratio, arm in arms.items()
        },
        "mqar_task": {**to_dict(mq), "seq_len": mq.seq_len, "vocab_size": mq.vocab_size, "chance": 1.0 / mq.num_values},
        "decode_setup": {"batch": config.decode_batch, "steps": config.decode_steps,
                         "note": "CPU toy numbers; random-filled cache of the right shape (no prefill); best of "
                                 f"{config.decode_repeats} timed calls of a jitted greedy loop"},
        "cache_bytes": report,
        "cache_table_markdown": table,
        "paper": PAPER,
        "wall_time_s": wall,
    }
    run_record.write_summary(summary)
    print(table)
    print(f"kimi-linear: done in {wall:.0f} s -> {run_dir}")
    return run_dir

"""The training loop: data in, a run directory out (config.json, metrics.jsonl, checkpoints, loss.png).

``train(...)`` builds the model and optimizer on a mesh, restores the latest checkpoint in the run
directory if there is one (parameters, optimizer state, step, RNG and the data iterator), then runs
the pure jitted step with a progress bar. Resuming is exact: N steps straight equal k steps, a
restart, and N - k more, bit for bit on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jaxstack.config import to_dict
from jaxstack.models.configs import LlamaConfig
from jaxstack.models import build_model
from jaxstack.precision import get_policy, loss_scale_for
from jaxstack.train import sharding as sharding_lib
from jaxstack.train.checkpoint import Checkpointer
from jaxstack.train.optimizers import OptimizerConfig, make_optimizer, make_schedule
from jaxstack.train.step import init_train_state, make_batch, make_train_step, split_model, token_cross_entropy


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """steps: total optimizer steps (the schedule's length). stop_after: end the process early at this
    step (a checkpoint is written) -- used to test exact resumption. mesh: (data, fsdp, tensor), -1 =
    the remaining devices. peak_tflops: per-device peak for the MFU estimate (None = from the device).
    init_from: a local Hugging Face model directory (``config.json`` + safetensors) whose parameters
    start the run instead of a random init (fine-tuning); its architecture must match the model
    config (see ``initial_model``). A checkpoint in the run directory still takes precedence."""

    steps: int = 200
    batch_size: int = 16
    seq_len: int = 128
    seed: int = 0
    policy: str = "fp32"
    log_every: int = 10
    eval_every: int = 50
    eval_batches: int = 4
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    stop_after: int | None = None
    mesh: tuple[int, ...] = (-1, 1, 1)
    peak_tflops: float | None = None
    init_from: str | None = None

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len", "log_every", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name}: expected a positive integer, got {getattr(self, name)}")
        if len(self.mesh) != 3:
            raise ValueError(f"train.mesh: expected three sizes (data, fsdp, tensor), got {self.mesh}")
        get_policy(self.policy)


# Nominal dense peak TFLOP/s per device for the MFU estimate (bf16 on accelerators).
_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "TPU v4": 275.0, "TPU v5 lite": 197.0,
                "TPU v5p": 459.0, "TPU v6 lite": 918.0}


def peak_tflops_per_device(override: float | None = None) -> float:
    """Peak TFLOP/s of one device. CPU: cores x 2 FMA units x 8 float32 lanes x 2 x 3 GHz (nominal)."""
    if override:
        return override
    device = jax.devices()[0]
    for name, value in _PEAK_TFLOPS.items():
        if name.lower() in device.device_kind.lower():
            return value
    if device.platform == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return cores * 2 * 8 * 2 * 3.0e9 / 1e12 / jax.device_count()
    return float("nan")


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl``."""

    def __init__(self, path: pathlib.Path, *, truncate_after_step: int | None = None, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        if truncate_after_step is not None and path.exists():
            # on resume, drop lines logged after the checkpoint so the file reads as one clean run
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= truncate_after_step]
            path.write_text("".join(line + "\n" for line in kept))
        elif truncate_after_step is None and path.exists():
            path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def read_metrics(path: str | pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


def plot_losses(metrics: list[dict[str, Any]], path: pathlib.Path, title: str = "training loss") -> pathlib.Path:
    """Writes a PNG of train (and eval, where logged) loss against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train", lw=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


_BATCH_KEYS = ("tokens", "loss_mask", "segment_ids", "positions")


def _to_host_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{"tokens": [B, T+1], optional "loss_mask" / "segment_ids" / "positions": [B, T+1]} -> step batch."""
    unknown = sorted(set(batch) - set(_BATCH_KEYS))
    if "tokens" not in batch or unknown:
        raise ValueError(f"data batch: expected keys {_BATCH_KEYS} (tokens required), got {sorted(batch)}")
    get = lambda key: None if key not in batch else jnp.asarray(batch[key])  # noqa: E731
    return make_batch(get("tokens"), get("loss_mask"), segment_ids=get("segment_ids"), positions=get("positions"))


# Fields that may differ between a pretrained directory and the model config of a fine-tuning run:
# they change neither the parameters' shapes nor the function the model computes (execution
# choices, the init scale, token-id metadata, the position limit). Every other field must match.
_INIT_FREE_FIELDS = ("attention_implementation", "scan_layers", "remat", "initializer_range", "bos_token_id",
                     "eos_token_id", "max_position_embeddings")


def initial_model(model_config, train_config: TrainConfig, policy) -> nnx.Module:
    """The model a run starts from: a random init (seeded by ``train.seed``), or the parameters of
    the HF directory ``train.init_from``. Raises ValueError naming each field where the directory's
    config.json disagrees with ``model_config`` (``model.hidden_size: 64 in DIR/config.json, 192 in the
    model config``), a missing config.json, or a checkpoint error (missing tensor, wrong shape)."""
    if train_config.init_from is None:
        return build_model(model_config, policy=policy, rngs=nnx.Rngs(train_config.seed))
    if not isinstance(model_config, LlamaConfig):
        raise ValueError(f"train.init_from: supported for Llama-family models, not {type(model_config).__name__}")
    from jaxstack.models.hf import config_from_hf, load_pretrained

    path = pathlib.Path(train_config.init_from)
    if not (path / "config.json").is_file():
        raise ValueError(f"train.init_from: {path} has no config.json (expected a local Hugging Face model directory)")
    pretrained = config_from_hf(json.loads((path / "config.json").read_text()))
    mismatched = [f"model.{f.name}: {getattr(pretrained, f.name)!r} in {path}/config.json, "
                  f"{getattr(model_config, f.name)!r} in the model config"
                  for f in dataclasses.fields(LlamaConfig)
                  if f.name not in _INIT_FREE_FIELDS and getattr(pretrained, f.name) != getattr(model_config, f.name)]
    if mismatched:
        raise ValueError("train.init_from: the pretrained model does not match the model config: "
                         + "; ".join(mismatched))
    model = load_pretrained(path, policy=policy, **{name: getattr(model_config, name) for name in _INIT_FREE_FIELDS})
    assert model.config == model_config, (model.config, model_config)
    return model


def _flops_per_token(model_config, seq_len: int) -> float:
    """Training FLOPs per token for the MFU estimate (6 x activated parameters where a family has no
    finer formula)."""
    if hasattr(model_config, "flops_per_token"):
        return model_config.flops_per_token(seq_len)
    counts = model_config.num_params()
    return 6.0 * (counts["activated"] if isinstance(counts, dict) else counts)


def train(
    model_config,
    train_config: TrainConfig,
    optimizer_config: OptimizerConfig,
    data: Iterator[dict[str, np.ndarray]],
    run_dir: str | pathlib.Path,
    *,
    eval_data: Callable[[], Iterator[dict[str, np.ndarray]]]
    | Mapping[str, Callable[[], Iterator[dict[str, np.ndarray]]]] | None = None,
    extra_config: dict[str, Any] | None = None,
    show_progress: bool = True,
) -> tuple[nnx.Module, dict[str, Any]]:
    """Trains (or resumes training) and returns (model, summary).

    model_config: a LlamaConfig or KimiLinearConfig (see ``jaxstack.models.build_model``).
    data: a Grain ``DatasetIterator`` (checkpointable) of {"tokens": [B, seq_len + 1]} batches.
    eval_data: a callable returning a fresh iterator of held-out batches (evaluated every eval_every),
    or a mapping name -> such callable (per-source held-out losses ``eval_loss/<name>``).
    """
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    main_process = jax.process_index() == 0  # multi-host: one process writes the run record
    policy = get_policy(train_config.policy)
    config_record = {
        "model": to_dict(model_config),
        "train": to_dict(train_config),
        "optimizer": to_dict(optimizer_config),
        **(extra_config or {}),
    }
    if main_process:
        (run_dir / "config.json").write_text(json.dumps(config_record, indent=2) + "\n")

    mesh = sharding_lib.make_mesh(*train_config.mesh)
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if train_config.batch_size % batch_shards:
        raise ValueError(
            f"train.batch_size={train_config.batch_size} must be divisible by data x fsdp = {batch_shards} "
            f"(mesh {dict(mesh.shape)} over {jax.device_count()} devices); change train.batch_size or train.mesh"
        )
    model = initial_model(model_config, train_config, policy)
    graphdef, params = split_model(model)
    tx = make_optimizer(optimizer_config, train_config.steps, params)
    schedule = make_schedule(optimizer_config, train_config.steps)
    loss_scale = loss_scale_for(policy.compute_dtype)  # dynamic loss scaling for float16 compute, else off
    state = init_train_state(params, tx, train_config.seed, loss_scale)
    state_sh = sharding_lib.state_shardings(state, mesh)
    batch_sh = sharding_lib.batch_sharding(mesh)
    state = sharding_lib.shard(state, state_sh)
    step_fn = make_train_step(graphdef, tx, schedule, state_sharding=state_sh, batch_sharding=batch_sh,
                              loss_scale=loss_scale)

    checkpointer = Checkpointer(run_dir / "checkpoints", max_to_keep=train_config.keep_checkpoints)
    start = 0
    if checkpointer.latest_step() is not None:
        state, start = checkpointer.restore(state, data)
    metrics_writer = MetricsWriter(run_dir / "metrics.jsonl", truncate_after_step=start if start else None,
                                   enabled=main_process)

    eval_fn = None
    # eval_data: one callable (logged as eval_loss) or a mapping name -> callable (logged as
    # eval_loss/<name>, plus eval_loss = the token-weighted mean over all of them)
    eval_sets = {} if eval_data is None else (dict(eval_data) if isinstance(eval_data, Mapping) else {"": eval_data})
    if eval_sets:
        @jax.jit
        def eval_loss(params, batch):
            model = nnx.merge(graphdef, params)
            logits = model(batch["inputs"], batch.get("positions"), segment_ids=batch.get("segment_ids")).logits
            return token_cross_entropy(logits, batch["targets"], batch["loss_mask"])

        def eval_fn(params) -> dict[str, float]:
            results, all_total, all_count = {}, 0.0, 0.0
            for name, make_data in eval_sets.items():
                total, count = 0.0, 0.0
                for i, batch in enumerate(make_data()):
                    if i >= train_config.eval_batches:
                        break
                    loss, n = eval_loss(params, sharding_lib.shard(_to_host_batch(batch), batch_sh))
                    total, count = total + float(loss) * float(n), count + float(n)
                if name:
                    results[f"eval_loss/{name}"] = total / max(count, 1.0)
                all_total, all_count = all_total + total, all_count + count
            results["eval_loss"] = all_total / max(all_count, 1.0)
            return results

    flops_per_token = _flops_per_token(model_config, train_config.seq_len)
    peak = peak_tflops_per_device(train_config.peak_tflops) * 1e12 * jax.device_count()
    end = train_config.steps if train_config.stop_after is None else min(train_config.stop_after, train_config.steps)
    bar = tqdm(total=train_config.steps, initial=start, desc="train", unit="step", disable=not (show_progress and main_process),
               dynamic_ncols=True)
    last_time, tokens_since = time.perf_counter(), 0.0
    final_metrics: dict[str, Any] = {}
    for step in range(start, end):
        batch = sharding_lib.shard(_to_host_batch(next(data)), batch_sh)
        state, metrics = step_fn(state, batch)
        tokens_since += train_config.batch_size * train_config.seq_len
        done = step + 1
        if done % train_config.log_every == 0 or done == end:
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            now = time.perf_counter()
            tokens_per_s = tokens_since / max(now - last_time, 1e-9)
            record = {"step": done, **metrics, "tokens_per_s": tokens_per_s,
                      "mfu": tokens_per_s * flops_per_token / peak if math.isfinite(peak) else None}
            if eval_fn is not None and (done % train_config.eval_every == 0 or done == train_config.steps):
                record.update(eval_fn(state.params))
            metrics_writer.write(record)
            final_metrics = record
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{tokens_per_s:,.0f}")
            last_time, tokens_since = now, 0.0
        bar.update(1)
        if done % train_config.checkpoint_every == 0 or done == end:
            checkpointer.save(done, state, data, force=True)
    bar.close()
    checkpointer.close()

    metrics = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    if metrics and main_process:
        plot_losses(metrics, run_dir / "loss.png", title=f"{run_dir.name}: loss")
    params = state.params
    if jax.process_count() > 1:  # every process gets the full parameters (collective: all call it)
        params = jax.jit(lambda tree: tree, out_shardings=sharding_lib.NamedSharding(mesh, sharding_lib.P()))(params)
    model = nnx.merge(graphdef, params)
    if end == train_config.steps and jax.process_index() == 0:
        # the finished model in Hugging Face format: `jaxstack generate --model RUN/hf`, or transformers
        from jaxstack.models.hf import save_pretrained

        save_pretrained(model, run_dir / "hf")
    summary = {"steps_done": end, "steps": train_config.steps, "final": final_metrics,
               "num_params": model_config.num_params()}
    if main_process:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return model, summary

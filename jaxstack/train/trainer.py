"""The training loop: data in, a run directory out (the ``jaxstack.runs`` record: config.json,
metrics.jsonl, summary.json, loss.png; plus checkpoints and the final model in ``hf/``).

``train(...)`` builds the model and optimizer on a mesh, restores the latest checkpoint in the run
directory if there is one (parameters, optimizer state, step, RNG and the data iterator), then runs
the pure jitted step with a progress bar. Resuming is exact: N steps straight equal k steps, a
restart, and N - k more, bit for bit on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import logging
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
from jaxstack.precision import all_finite, get_policy, loss_scale_for
from jaxstack.runs import CONFIG_FILE, RunRecord, as_json, pyplot
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
    config (see ``initial_model``). A checkpoint in the run directory still takes precedence.
    early_stopping_patience: stop after this many evaluations in a row without a new minimum of the
    held-out ``eval_loss`` (None: off; needs ``eval_data``). The best evaluation's parameters are kept
    in ``best/`` (Hugging Face format), returned, and exported to ``hf/``.
    max_nonfinite_steps: a step whose loss or gradients are not finite is skipped (parameters and
    optimizer state unchanged) and counted (``skipped_steps``); this many skipped steps in a row stop
    the run with :class:`NonFiniteTrainingError` at the next log or checkpoint step (where the count
    is read from the device), leaving the newest checkpoint as it was.

    Run-defining fields (:data:`RUN_DEFINING_TRAIN_FIELDS`) decide the parameters after every step;
    a resume refuses a change to them (see :func:`train`). The others only change what is observed
    (logging, evaluation, checkpoint cadence, the MFU estimate) or where the process ends."""

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
    early_stopping_patience: int | None = None
    max_nonfinite_steps: int = 10

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len", "log_every", "checkpoint_every", "max_nonfinite_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name}: expected a positive integer, got {getattr(self, name)}")
        if len(self.mesh) != 3:
            raise ValueError(f"train.mesh: expected three sizes (data, fsdp, tensor), got {self.mesh}")
        if self.early_stopping_patience is not None and self.early_stopping_patience <= 0:
            raise ValueError(f"train.early_stopping_patience: expected a positive integer or None, "
                             f"got {self.early_stopping_patience}")
        if self.peak_tflops is not None and not (math.isfinite(self.peak_tflops) and self.peak_tflops > 0):
            raise ValueError(f"train.peak_tflops: expected a finite positive number or None, got {self.peak_tflops}")
        get_policy(self.policy)


# The train fields that define a run: with the model, optimizer and data config (every field of those)
# they decide the parameters after each step and the model exported. Changing one on resume would make
# the run a different one under the same directory, so a resume refuses it (``allow_config_change``).
# The fields left out only observe the run or end the process: stop_after, log_every, eval_every,
# eval_batches, checkpoint_every, keep_checkpoints, mesh (the device layout), peak_tflops,
# max_nonfinite_steps.
RUN_DEFINING_TRAIN_FIELDS = ("steps", "batch_size", "seq_len", "seed", "policy", "init_from",
                             "early_stopping_patience")
CONFIG_CHANGES_FILE = "config_changes.jsonl"


class NonFiniteTrainingError(RuntimeError):
    """The run stopped: ``train.max_nonfinite_steps`` steps in a row had a non-finite loss or gradient,
    or a checkpoint or export would have held non-finite values (never written)."""


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


def plot_losses(metrics: list[dict[str, Any]], title: str = "training loss"):
    """A matplotlib figure of train (and eval, where logged) loss against step."""
    plt = pyplot()
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
    return fig


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
    from jaxstack.models.checkpoint import config_from_hf, load_pretrained

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


class _EarlyStopping:
    """The best held-out ``eval_loss`` so far, its step, and the evaluations since. Built from the run's
    logged evaluations, so a resumed run stops where the uninterrupted one would."""

    def __init__(self, patience: int, metrics: list[dict[str, Any]]):
        self.patience, self.best_loss, self.best_step, self.stale = patience, math.inf, None, 0
        for m in metrics:
            if "eval_loss" in m:
                self.update(m["step"], m["eval_loss"])

    def update(self, step: int, loss: float) -> bool:
        """Records one evaluation; True when it is a new best (a NaN loss never is)."""
        if loss < self.best_loss:
            self.best_loss, self.best_step, self.stale = loss, step, 0
            return True
        self.stale += 1
        return False

    @property
    def stop(self) -> bool:
        return self.stale >= self.patience


def _run_defining(config_record: Mapping[str, Any]) -> dict[str, Any]:
    """The run-defining entries of a run's config record (as read back from ``config.json``), flat:
    ``{"model.hidden_size": 64, "train.steps": 20, "schedule.stages": [...], ...}``. Every field is
    run-defining except the train fields outside :data:`RUN_DEFINING_TRAIN_FIELDS`."""
    flat: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict) and value:
            for name, inner in value.items():
                walk(inner, f"{key}.{name}" if key else str(name))
        else:
            flat[key] = value

    walk(as_json(dict(config_record)), "")
    return {k: v for k, v in flat.items()
            if not k.startswith("train.") or k.split(".", 2)[1] in RUN_DEFINING_TRAIN_FIELDS}


def _config_changes(run_dir: pathlib.Path, config_record: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{key: {"old": ..., "new": ...}} for each run-defining entry that differs from ``run_dir/config.json``
    when ``run_dir`` holds a checkpoint to resume ({} for a fresh start, or without a config.json)."""
    checkpoints = run_dir / "checkpoints"
    resuming = checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())
    if not resuming or not (run_dir / CONFIG_FILE).is_file():
        return {}
    old = _run_defining(json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8")))
    new = _run_defining(config_record)
    absent = "<absent>"
    return {key: {"old": old.get(key, absent), "new": new.get(key, absent)}
            for key in sorted(old.keys() | new.keys()) if old.get(key, absent) != new.get(key, absent)}


def _assert_finite(tree, what: str) -> None:
    """Raises NonFiniteTrainingError unless every value of ``tree`` is finite: nothing non-finite is
    ever written (``what`` names the write: "checkpoint step 10", "export to RUN/hf")."""
    if not bool(jax.jit(all_finite)(tree)):
        raise NonFiniteTrainingError(f"train: refusing to write the {what}: the training state holds non-finite "
                                     "values")


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
    allow_config_change: bool = False,
) -> tuple[nnx.Module, dict[str, Any]]:
    """Trains (or resumes training) and returns (model, summary).

    model_config: a LlamaConfig or KimiLinearConfig (see ``jaxstack.models.build_model``).
    data: a Grain ``DatasetIterator`` (checkpointable) of {"tokens": [B, seq_len + 1]} batches.
    eval_data: a callable returning a fresh iterator of held-out batches (evaluated every eval_every),
    or a mapping name -> such callable (per-source held-out losses ``eval_loss/<name>``).
    run_dir: the run directory, created if missing (``RunRecord.open``); a checkpoint in it is resumed.
    allow_config_change: resume even when a run-defining field (every model, optimizer and
    ``extra_config`` field, and the train fields of :data:`RUN_DEFINING_TRAIN_FIELDS`) differs from
    the run's ``config.json``; the change is appended to ``config_changes.jsonl`` (old and new
    values, with a warning) before ``config.json`` is rewritten. Without it such a resume raises
    ValueError listing the changed fields.
    The summary is merged into ``summary.json``, so a caller can add its own keys afterwards.

    Raises NonFiniteTrainingError at the first log or checkpoint step after ``train.max_nonfinite_steps``
    skipped (non-finite) steps in a row, without a checkpoint or export of that state; the newest
    checkpoint is left as it was.
    """
    main_process = jax.process_index() == 0  # multi-host: one process shows progress (and writes the record)
    policy = get_policy(train_config.policy)
    config_record = {
        "model": to_dict(model_config),
        "train": to_dict(train_config),
        "optimizer": to_dict(optimizer_config),
        **(extra_config or {}),
    }
    changes = _config_changes(pathlib.Path(run_dir), config_record)
    if changes:
        listing = "; ".join(f"{key}: {c['old']!r} -> {c['new']!r}" for key, c in changes.items())
        if not allow_config_change:
            raise ValueError(
                f"resume: {run_dir} holds a checkpoint of a run whose config differs in run-defining fields: "
                f"{listing} (pass --allow-config-change to resume with the new values, recorded in "
                f"{CONFIG_CHANGES_FILE}; or use another run directory)")
    record = RunRecord.open(run_dir)
    run_dir = record.dir
    if changes and record.writer:  # recorded before config.json is rewritten with the new values
        with (run_dir / CONFIG_CHANGES_FILE).open("a", encoding="utf-8") as out:
            out.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "changes": changes}) + "\n")
        logging.getLogger(__name__).warning("resume: run-defining config changed (recorded in %s): %s",
                                            run_dir / CONFIG_CHANGES_FILE, listing)
    record.write_config(config_record)

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
    record.truncate_metrics(start)  # a fresh start (0) or a resume: drop what was logged after the checkpoint
    stopper, best_params = None, None
    if train_config.early_stopping_patience is not None:
        if eval_data is None:
            raise ValueError("train.early_stopping_patience: needs eval_data (the held-out loss it watches)")
        stopper = _EarlyStopping(train_config.early_stopping_patience, record.read_metrics())

    def export(params, directory: pathlib.Path | None) -> nnx.Module:
        """The model of ``params``, gathered on every process (a collective: all call it), saved in HF
        format to ``directory`` (unless None) by process 0."""
        if jax.process_count() > 1:
            params = jax.jit(lambda tree: tree, out_shardings=sharding_lib.NamedSharding(mesh, sharding_lib.P()))(params)
        model = nnx.merge(graphdef, params)
        if directory is not None:
            _assert_finite(params, f"export to {directory}")
        if directory is not None and jax.process_index() == 0:
            from jaxstack.models.checkpoint import save_pretrained

            save_pretrained(model, directory)
        return model

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
    stopped = stopper is not None and stopper.stop  # resuming a run that had stopped early: nothing to do
    end = start if stopped else end
    bar = tqdm(total=train_config.steps, initial=start, desc="train", unit="step", disable=not (show_progress and main_process),
               dynamic_ncols=True)
    last_time, tokens_since = time.perf_counter(), 0.0
    final_metrics: dict[str, Any] = {}
    halted, longest_streak = False, 0
    for step in range(start, end):
        batch = sharding_lib.shard(_to_host_batch(next(data)), batch_sh)
        state, metrics = step_fn(state, batch)
        tokens_since += train_config.batch_size * train_config.seq_len
        done = step + 1
        log_now = done % train_config.log_every == 0 or done == end
        save_now = done % train_config.checkpoint_every == 0 or done == end
        if log_now or save_now:
            # The guard's only host read, where the run logs or saves anyway (no per-step sync): the
            # step keeps the longest run of skipped steps on device (it survives a resume), so a limit
            # crossed between two checks still stops the run, at the check, before anything is saved.
            longest_streak = int(metrics["longest_nonfinite_streak"])
            halted = longest_streak >= train_config.max_nonfinite_steps
        if log_now or halted:
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            now = time.perf_counter()
            tokens_per_s = tokens_since / max(now - last_time, 1e-9)
            evals = {}
            if eval_fn is not None and (done % train_config.eval_every == 0 or done == train_config.steps):
                evals = eval_fn(state.params)
                if stopper is not None and stopper.update(done, evals["eval_loss"]):
                    # a copy: the train step donates (and so invalidates) the state's buffers
                    best_params = jax.tree.map(jnp.copy, state.params)
                    export(best_params, run_dir / "best")
                stopped = stopper is not None and stopper.stop
            final_metrics = record.log_metrics(
                done, **metrics, tokens_per_s=tokens_per_s,
                mfu=tokens_per_s * flops_per_token / peak if math.isfinite(peak) else None, **evals)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{tokens_per_s:,.0f}")
            last_time, tokens_since = now, 0.0
        bar.update(1)
        if halted:
            break
        if save_now or stopped:
            _assert_finite((state.params, state.opt_state), f"checkpoint of step {done}")
            checkpointer.save(done, state, data, force=True)
        if stopped:
            end = done
            break
    bar.close()
    newest_checkpoint = checkpointer.latest_step()
    checkpointer.close()
    if halted:
        message = (f"train: stopped at step {done}: {longest_streak} steps in a row (train.max_nonfinite_steps) "
                   f"had a non-finite loss or gradient (last loss {final_metrics.get('loss')}) and were skipped; "
                   f"nothing was saved for them, the newest checkpoint is step {newest_checkpoint} "
                   f"in {run_dir / 'checkpoints'} (check the learning rate, the data and the precision policy)")
        record.write_summary({"steps_done": done, "steps": train_config.steps, "final": final_metrics,
                              "error": message})
        raise NonFiniteTrainingError(message)

    metrics = record.read_metrics()
    if metrics and record.writer:
        record.save_plot(plot_losses(metrics, title=f"{run_dir.name}: loss"), "loss.png")
    finished = end == train_config.steps or stopped
    params = state.params
    if finished and stopper is not None and stopper.best_step is not None:
        if best_params is None:  # the best evaluation came before a resume: its parameters are on disk
            best = initial_model(model_config, dataclasses.replace(train_config, init_from=str(run_dir / "best")), policy)
            best_params = split_model(best)[1]
        params = best_params
    # the finished model in Hugging Face format: `jaxstack generate --model RUN/hf`, or transformers
    model = export(params, run_dir / "hf" if finished else None)
    summary = {"steps_done": end, "steps": train_config.steps, "final": final_metrics,
               "num_params": model_config.num_params()}
    if stopper is not None:
        summary["early_stopping"] = {"patience": stopper.patience, "best_step": stopper.best_step,
                                     "best_eval_loss": stopper.best_loss, "stopped_at": end if stopped else None}
    record.write_summary(summary)
    return model, summary

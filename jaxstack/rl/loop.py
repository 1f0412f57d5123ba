"""The RL loop: rollout engine -> verifier -> group advantages -> learner re-score -> loss-scaled update.

Per step (``train_rl``):

1. weight sync + rollout: the rollout engine casts the float32 masters once into its dtype and samples
   ``prompts_per_step x group_size`` responses at T = 1, keeping log mu of each sampled token;
2. rewards from the task's verifier, group-relative advantages;
3. the training engine casts the masters once more into its dtype and re-scores the same tokens
   (log pi_old, entropy); the mismatch metrics compare log pi_old with log mu;
4. ``num_minibatches`` optimizer steps on the chosen loss; the first minibatch has pi_theta == pi_old,
   so its PPO clip fraction is zero unless pi_old is taken from the rollout (bypass mode), where all
   of it is phantom; later minibatches give the real clip fraction;
5. float16 training goes through the dynamic loss scaler; non-finite steps are skipped and counted.

The parameters are the ``nnx.State`` of the model's Params (float32 masters), as in the trainer; the
loss-scaled step is ``train.step.loss_scaled_update`` and the optimizer ``train.optimizers.make_optimizer``.
Everything numeric is jitted; policies, knobs and loss config are static arguments. Every step's
metrics are one JSON line (``metrics.jsonl``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from jaxstack.models.configs import LlamaConfig
from jaxstack.models.llama import LlamaForCausalLM
from jaxstack.precision import (
    DtypePolicy,
    LossScaleConfig,
    LossScaleState,
    all_finite,
    init_loss_scale,
    scale_loss,
    select_tree,
    unscale_grads,
    update_loss_scale,
)
from jaxstack.rl import engine as engine_lib
from jaxstack.rl.losses import (
    LossConfig,
    default_loss_config,
    group_advantages,
    rl_loss,
)
from jaxstack.rl.metrics import mismatch_metrics
from jaxstack.rl.policy import engine_policy
from jaxstack.rl.tasks import EOS, Task, demonstrations
from jaxstack.train.optimizers import OptimizerConfig, make_optimizer
from jaxstack.train.step import loss_scaled_update, split_model


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """One RL run. ``train_policy`` / ``rollout_policy``: ``DtypePolicy`` presets with float32 masters
    (``"fp32"``, ``"bf16-mixed"``, ``"fp16-mixed"``); ``rollout_policy`` None = same as ``train_policy``.
    ``loss_scale`` None = on iff the training engine computes in float16. ``noise_std``: Gaussian noise
    on the rollout logits (E3)."""

    train_policy: str = "fp32"
    rollout_policy: str | None = None
    knobs: str = "all"
    loss: str = "grpo"
    clip_eps: float = 0.2
    tis_cap: float = 2.0
    mis_cap: float = 10.0
    seq_is_cap: float | None = None
    old_logp_source: str = "learner"
    scale_advantages: bool = True
    steps: int = 50
    prompts_per_step: int = 16
    group_size: int = 4
    num_minibatches: int = 1
    learning_rate: float = 1e-3
    grad_clip: float = 1.0
    loss_scale: bool | None = None
    initial_loss_scale: float = 2.0**16
    growth_interval: int = 400
    noise_std: float = 0.0
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "prompts_per_step", "group_size", "num_minibatches"):
            if getattr(self, name) <= 0:
                raise ValueError(f"rl.{name}: expected a positive integer, got {getattr(self, name)}")
        if (self.prompts_per_step * self.group_size) % self.num_minibatches:
            raise ValueError(f"rl.num_minibatches: must divide prompts_per_step * group_size = "
                             f"{self.prompts_per_step * self.group_size}")
        if self.group_size < 2:
            raise ValueError(f"rl.group_size: group-relative advantages need >= 2 samples, got {self.group_size}")
        if self.noise_std < 0:
            raise ValueError(f"rl.noise_std: expected >= 0, got {self.noise_std}")

    def policies(self) -> tuple[DtypePolicy, DtypePolicy]:
        train = engine_policy(self.train_policy)
        return train, engine_policy(self.rollout_policy or self.train_policy)

    def loss_config(self, max_new_tokens: int) -> LossConfig:
        return default_loss_config(self.loss, max_new_tokens, clip_eps=self.clip_eps, tis_cap=self.tis_cap,
                                   mis_cap=self.mis_cap, seq_is_cap=self.seq_is_cap,
                                   old_logp_source=self.old_logp_source)

    def loss_scale_config(self) -> LossScaleConfig:
        train, _ = self.policies()
        enabled = (train.compute_dtype == jnp.float16) if self.loss_scale is None else self.loss_scale
        return LossScaleConfig(enabled=bool(enabled), initial_scale=self.initial_loss_scale,
                               growth_interval=self.growth_interval)


def init_masters(config: LlamaConfig, seed: int) -> nnx.State:
    """Float32 master parameters of a fresh ``LlamaForCausalLM``: the ``nnx.State`` of its Params."""
    _, params = split_model(LlamaForCausalLM(config, rngs=nnx.Rngs(seed)))
    return params


@functools.partial(jax.jit, static_argnames=("config", "policy", "prompt_length"))
def score(masters, tokens, *, config, policy, prompt_length):
    """Training-engine log-probs and entropies [B, G] (no gradient): log pi_old."""
    return engine_lib.token_logprobs(masters, tokens, prompt_length=prompt_length, config=config, policy=policy,
                                     with_entropy=True)


def _adam(learning_rate: float, clip_norm: float | None, params) -> optax.GradientTransformation:
    """Adam at a constant learning rate (no warmup, no weight decay), optionally after global-norm
    clipping: ``make_optimizer``'s AdamW with those settings."""
    config = OptimizerConfig(learning_rate=learning_rate, schedule="constant", warmup_steps=0, b2=0.999,
                             weight_decay=0.0, clip_norm=clip_norm)
    return make_optimizer(config, 1, params)


def _zero_fraction(grads) -> jax.Array:
    leaves = jax.tree.leaves(grads)
    zeros = sum(jnp.sum(g == 0) for g in leaves)
    return zeros / sum(g.size for g in leaves)


@functools.partial(jax.jit, static_argnames=("config", "policy", "loss_cfg", "ls_cfg", "tx", "prompt_length"))
def rl_update(masters, opt_state, ls_state, batch, *, config, policy, loss_cfg, ls_cfg, tx, prompt_length):
    """One loss-scaled optimizer step on a minibatch (tokens, old, rollout, adv, mask). Returns
    (masters, opt_state, ls_state, metrics)."""

    def loss_fn(params):
        logp = engine_lib.token_logprobs(params, batch["tokens"], prompt_length=prompt_length, config=config,
                                         policy=policy)
        return rl_loss(logp, batch["old"], batch["rollout"], batch["adv"], batch["mask"], loss_cfg)

    (new_masters, opt_state, new_ls_state), (loss, aux, grads, finite) = loss_scaled_update(
        loss_fn, masters, opt_state, ls_state, tx=tx, loss_scale=ls_cfg, skip_nonfinite=True)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "grad_zero_fraction": _zero_fraction(grads),
               "finite": finite, "loss_scale": ls_state.scale, **aux}
    return new_masters, opt_state, new_ls_state, metrics


def loss_gradients(loss_of, params, scaler: LossScaleState):
    """The gradient half of a loss-scaled step: ``(loss, aux, grads)`` of ``loss_of(params) -> (loss, aux)``.

    With an enabled scaler (float16 compute) the loss is multiplied by the scale before the backward
    pass and the gradients divided by it in float32; ``grads`` are the unscaled gradients (a pytree
    like ``params``; possibly non-finite: :func:`apply_gradients` checks). Gradients of several losses
    (e.g. one per role batch, each whitened on its own) are summed with ``jax.tree.map`` and applied
    once; the gradient being linear, the sum is the gradient of the summed loss.
    """

    def scaled_loss(params):
        loss, aux = loss_of(params)
        return scale_loss(scaler, loss), (loss, aux)

    grads, (loss, aux) = jax.grad(scaled_loss, has_aux=True)(params)
    return loss, aux, unscale_grads(scaler, grads)


def apply_gradients(params, opt_state, scaler: LossScaleState, grads, *, tx: optax.GradientTransformation,
                    loss_scale: LossScaleConfig | None = None, skip_nonfinite: bool = True):
    """The apply half: one optimizer step with unscaled ``grads`` (e.g. a sum of :func:`loss_gradients`).

    A step whose gradients are not all finite leaves params and optimizer state unchanged (with an
    enabled scaler, or ``skip_nonfinite``) and backs the scale off; the scaler counts skipped steps.
    Returns (params, opt_state, scaler, finite). :func:`loss_gradients` then this function is
    ``train.step.loss_scaled_update`` split in two.
    """
    if scaler.enabled and loss_scale is None:
        raise ValueError("loss_scale: the loss scaler is enabled; pass its LossScaleConfig")
    finite = all_finite(grads)
    updates, new_opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    if scaler.enabled or skip_nonfinite:
        new_params = select_tree(finite, new_params, params)
        new_opt_state = select_tree(finite, new_opt_state, opt_state)
        scaler = update_loss_scale(scaler, finite, loss_scale)
    return new_params, new_opt_state, scaler, finite


def _float(x) -> float:
    return float(np.asarray(x))


def train_rl(masters: nnx.State, model_config: LlamaConfig, task: Task, cfg: RLConfig, *,
             log_path: str | pathlib.Path | None = None, progress: bool = True,
             extra: dict[str, Any] | None = None) -> tuple[nnx.State, list[dict]]:
    """Runs ``cfg.steps`` RL steps from ``masters`` (float32). Returns (final masters, per-step metrics);
    with ``log_path`` each step is also appended to that JSONL file."""
    train_policy, rollout_policy = cfg.policies()
    knobs = engine_lib.get_knobs(cfg.knobs)
    loss_cfg = cfg.loss_config(task.max_new_tokens)
    ls_cfg = cfg.loss_scale_config()
    tx = _adam(cfg.learning_rate, cfg.grad_clip, masters)
    opt_state = tx.init(masters)
    ls_state = init_loss_scale(ls_cfg)
    rng = np.random.default_rng(cfg.seed)
    key = jax.random.key(cfg.seed)
    prompt_length = task.prompt_length
    rows = cfg.prompts_per_step * cfg.group_size
    per_mb = rows // cfg.num_minibatches
    history = []
    log_file = None
    if log_path is not None:
        log_path = pathlib.Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("w")
    bar = tqdm(range(cfg.steps), desc=f"rl {cfg.train_policy}/{cfg.rollout_policy or cfg.train_policy} {cfg.loss}",
               disable=not progress, leave=False)
    try:
        for step in bar:
            start = time.perf_counter()
            problems = task.sample(rng, cfg.prompts_per_step).repeat(cfg.group_size)
            key, sample_key = jax.random.split(key)
            result = engine_lib.rollout(masters, jnp.asarray(problems.prompts), sample_key,
                                        jnp.float32(cfg.noise_std), config=model_config, policy=rollout_policy,
                                        knobs=knobs, max_new_tokens=task.max_new_tokens, eos_id=EOS)
            tokens, mask = np.asarray(result.tokens), np.asarray(result.mask)
            rewards = task.reward(problems, tokens[:, prompt_length:], mask)
            adv = group_advantages(rewards, cfg.group_size, scale=cfg.scale_advantages and cfg.loss != "drgrpo")
            old, entropy = score(masters, result.tokens, config=model_config, policy=train_policy,
                                 prompt_length=prompt_length)
            mismatch = mismatch_metrics(old, result.logprobs, result.mask, cfg.clip_eps)
            batch = {"tokens": result.tokens, "old": old, "rollout": result.logprobs, "adv": adv,
                     "mask": result.mask}
            update_metrics = []
            for mb in range(cfg.num_minibatches):
                sl = slice(mb * per_mb, (mb + 1) * per_mb)
                minibatch = {k: v[sl] for k, v in batch.items()}
                masters, opt_state, ls_state, m = rl_update(
                    masters, opt_state, ls_state, minibatch, config=model_config, policy=train_policy,
                    loss_cfg=loss_cfg, ls_cfg=ls_cfg, tx=tx, prompt_length=prompt_length)
                update_metrics.append({k: _float(v) for k, v in m.items()})
            jax.block_until_ready(masters)
            record = {
                "step": step,
                "reward_mean": float(rewards.mean()),
                "success_rate": float(task.success(rewards).mean()),
                "response_length": float(mask.sum(1).mean()),
                "finished_fraction": float(np.asarray(result.finished).mean()),
                "entropy": _float(jnp.sum(entropy * result.mask) / jnp.maximum(jnp.sum(result.mask), 1.0)),
                **{k: _float(v) for k, v in mismatch.items()},
                "loss": float(np.mean([m["loss"] for m in update_metrics])),
                "grad_norm": float(np.mean([m["grad_norm"] for m in update_metrics])),
                "grad_zero_fraction": float(np.mean([m["grad_zero_fraction"] for m in update_metrics])),
                "clip_fraction_first_minibatch": update_metrics[0]["clip_fraction"],
                "clip_fraction_real": (float(np.mean([m["clip_fraction"] for m in update_metrics[1:]]))
                                       if len(update_metrics) > 1 else 0.0),
                "is_truncation_fraction": float(np.mean([m["is_truncation_fraction"] for m in update_metrics])),
                "is_mask_fraction": float(np.mean([m["is_mask_fraction"] for m in update_metrics])),
                "loss_scale": _float(ls_state.scale),
                "skipped_steps": int(np.asarray(ls_state.skipped)),
                "nonfinite_this_step": int(sum(1 for m in update_metrics if not m["finite"])),
                "wall_s": time.perf_counter() - start,
                **(extra or {}),
            }
            history.append(record)
            if log_file is not None:
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
            bar.set_postfix(reward=f"{record['reward_mean']:.3f}", dlogp=f"{record['abs_diff_mean']:.1e}")
    finally:
        if log_file is not None:
            log_file.close()
    return masters, history


@functools.partial(jax.jit, static_argnames=("config", "policy", "tx", "prompt_length"))
def sft_update(masters, opt_state, tokens, mask, *, config, policy, tx, prompt_length):
    """One teacher-forced step: mean negative log-likelihood of the response tokens."""

    def loss_fn(params):
        logp = engine_lib.token_logprobs(params, tokens, prompt_length=prompt_length, config=config, policy=policy)
        return -jnp.sum(logp * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    (masters, opt_state, _), (loss, _, _, _) = loss_scaled_update(
        lambda params: (loss_fn(params), None), masters, opt_state, init_loss_scale(LossScaleConfig(enabled=False)),
        tx=tx)
    return masters, opt_state, loss


def evaluate_success(masters, model_config: LlamaConfig, task: Task, n: int, seed: int, *,
                     policy: str = "fp32", knobs: str = "all") -> float:
    """Fraction of ``n`` problems solved with one T = 1 sample each."""
    rng = np.random.default_rng(seed)
    problems = task.sample(rng, n)
    result = engine_lib.rollout(masters, jnp.asarray(problems.prompts), jax.random.key(seed), 0.0,
                                config=model_config, policy=engine_policy(policy),
                                knobs=engine_lib.get_knobs(knobs), max_new_tokens=task.max_new_tokens, eos_id=EOS)
    rewards = task.reward(problems, np.asarray(result.tokens)[:, task.prompt_length:], np.asarray(result.mask))
    return float(task.success(rewards).mean())


def sft(masters: nnx.State, model_config: LlamaConfig, task: Task, *, steps: int, batch_size: int, learning_rate: float,
        seed: int, error_rate: float = 0.1, distractor_rate: float = 0.02, target: tuple[float, float] = (0.2, 0.8),
        eval_every: int = 50, eval_size: int = 128, progress: bool = True) -> tuple[nnx.State, list[dict]]:
    """Supervised fine-tuning on noisy demonstrations (float32), evaluated every ``eval_every`` steps;
    stops at the first evaluation whose success rate lies in ``target`` (the sanity-test band).
    Returns (masters, log of {step, loss, success})."""
    policy = engine_policy("fp32")
    tx = _adam(learning_rate, None, masters)
    opt_state = tx.init(masters)
    rng = np.random.default_rng(seed)
    log = []
    bar = tqdm(range(1, steps + 1), desc=f"sft {task.name}", disable=not progress, leave=False)
    for step in bar:
        problems = task.sample(rng, batch_size)
        tokens, mask = demonstrations(task, problems, task.max_new_tokens, rng, error_rate=error_rate,
                                      distractor_rate=distractor_rate)
        masters, opt_state, loss = sft_update(masters, opt_state, jnp.asarray(tokens), jnp.asarray(mask),
                                              config=model_config, policy=policy, tx=tx,
                                              prompt_length=task.prompt_length)
        if step % eval_every == 0 or step == steps:
            success = evaluate_success(masters, model_config, task, eval_size, seed + step)
            log.append({"step": step, "loss": float(loss), "success": success})
            bar.set_postfix(loss=f"{float(loss):.3f}", success=f"{success:.2f}")
            if target[0] <= success <= target[1]:
                break
    return masters, log

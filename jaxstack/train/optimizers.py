"""Optimizers and learning-rate schedules (optax).

``wsd``: warmup-stable-decay (linear warmup, constant, linear decay to ``min_lr`` over the last
``decay_fraction`` of training), as used by SmolLM2; ``cosine``: linear warmup then cosine decay to
``min_lr``; ``constant``: linear warmup then constant.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import optax
from flax import nnx


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with global-norm clipping. Weight decay skips 1-D parameters (norm scales, biases)."""

    learning_rate: float = 3e-3
    schedule: str = "wsd"
    warmup_steps: int = 100
    decay_fraction: float = 0.2
    min_lr: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.01
    clip_norm: float | None = 1.0

    def __post_init__(self):
        if self.schedule not in ("wsd", "cosine", "constant"):
            raise ValueError(f"optimizer.schedule: expected 'wsd', 'cosine' or 'constant', got {self.schedule!r}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ValueError(f"optimizer.decay_fraction: expected a value in [0, 1], got {self.decay_fraction}")
        if self.warmup_steps < 0:
            raise ValueError(f"optimizer.warmup_steps: expected >= 0, got {self.warmup_steps}")
        # NaN compares False with everything, so each check is written as "not in the valid range"
        _check_range("learning_rate", self.learning_rate, "a finite positive number", lambda v: v > 0)
        _check_range("min_lr", self.min_lr, "a finite number >= 0", lambda v: v >= 0)
        _check_range("b1", self.b1, "a number in [0, 1)", lambda v: 0 <= v < 1)
        _check_range("b2", self.b2, "a number in [0, 1)", lambda v: 0 <= v < 1)
        _check_range("eps", self.eps, "a finite positive number", lambda v: v > 0)
        _check_range("weight_decay", self.weight_decay, "a finite number >= 0", lambda v: v >= 0)
        if self.clip_norm is not None:
            _check_range("clip_norm", self.clip_norm, "a finite positive number or None", lambda v: v > 0)


def _check_range(name: str, value: float, expected: str, valid) -> None:
    """Raises ``optimizer.NAME: expected EXPECTED, got VALUE`` unless ``value`` is finite and ``valid``."""
    if not (math.isfinite(value) and valid(value)):
        raise ValueError(f"optimizer.{name}: expected {expected}, got {value}")


def make_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """The learning-rate schedule over ``total_steps`` optimizer steps."""
    if total_steps <= 0:
        raise ValueError(f"total_steps: expected > 0, got {total_steps}")
    peak, warmup = config.learning_rate, min(config.warmup_steps, total_steps)
    warm = optax.linear_schedule(0.0, peak, max(warmup, 1)) if warmup else optax.constant_schedule(peak)
    if config.schedule == "constant":
        return optax.join_schedules([warm, optax.constant_schedule(peak)], [warmup])
    if config.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, max(total_steps - warmup, 1), alpha=config.min_lr / peak)
        return optax.join_schedules([warm, decay], [warmup])
    decay_steps = int(round(config.decay_fraction * total_steps))
    decay_start = max(total_steps - decay_steps, warmup)
    stable = optax.constant_schedule(peak)
    decay = optax.linear_schedule(peak, config.min_lr, max(total_steps - decay_start, 1))
    return optax.join_schedules([warm, stable, decay], [warmup, decay_start])


def weight_decay_mask(params):
    """True for parameters that get weight decay. A parameter opts out with the metadata
    ``weight_decay=False`` (norm scales, biases, gate constants such as KDA's ``A_log``), so the rule
    also holds for layer-stacked (scanned) parameters whose scales are 2-D."""
    return jax.tree.map(
        lambda v: v.replace(bool(v.get_metadata().get("weight_decay", True))),
        params,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def make_optimizer(config: OptimizerConfig, total_steps: int, params) -> optax.GradientTransformation:
    """AdamW (+ optional global-norm clipping) on the schedule, for an ``nnx.State`` of Params."""
    schedule = make_schedule(config, total_steps)
    adamw = optax.adamw(
        schedule,
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        weight_decay=config.weight_decay,
        mask=weight_decay_mask(params),
    )
    if config.clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), adamw)

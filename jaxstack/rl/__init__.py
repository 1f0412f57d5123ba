"""Reinforcement learning with explicit per-engine precision (Precision-RL, shared/refs/rl.md).

``policy`` (per-engine ``DtypePolicy`` presets, weight sync), dynamic loss scaling (``jaxstack.precision``),
``engine`` (rollout and training engines with engine-difference knobs), ``losses`` (GRPO family),
``metrics`` (training-vs-rollout mismatch), ``tasks`` (verifiable toy tasks), ``loop`` (the RL loop).
"""

from jaxstack.precision import (
    LossScaleConfig,
    LossScaleState,
    all_finite,
    init_loss_scale,
    scale_loss,
    unscale_grads,
    update_loss_scale,
)
from jaxstack.rl.engine import (
    KNOB_SETS,
    EngineKnobs,
    Rollout,
    get_knobs,
    rollout,
    token_logprobs,
)
from jaxstack.rl.losses import LOSSES, LossConfig, group_advantages, k3_kl, rl_loss
from jaxstack.rl.metrics import mismatch_metrics, phantom_clip_fraction
from jaxstack.rl.policy import engine_policy, sync

__all__ = [
    "KNOB_SETS",
    "LOSSES",
    "EngineKnobs",
    "LossConfig",
    "LossScaleConfig",
    "LossScaleState",
    "Rollout",
    "all_finite",
    "engine_policy",
    "get_knobs",
    "group_advantages",
    "init_loss_scale",
    "k3_kl",
    "mismatch_metrics",
    "phantom_clip_fraction",
    "rl_loss",
    "rollout",
    "scale_loss",
    "sync",
    "token_logprobs",
    "unscale_grads",
    "update_loss_scale",
]

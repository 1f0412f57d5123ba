"""Reinforcement learning with explicit per-engine precision (Precision-RL, shared/refs/rl.md).

``policy`` (per-engine dtype policies, weight sync), ``loss_scale`` (dynamic loss scaling),
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
    forward,
    get_knobs,
    rollout,
    token_logprobs,
)
from jaxstack.rl.losses import LOSSES, LossConfig, group_advantages, k3_kl, rl_loss
from jaxstack.rl.metrics import mismatch_metrics, phantom_clip_fraction
from jaxstack.rl.policy import ENGINE_POLICIES, EnginePolicy, engine_policy

__all__ = [
    "ENGINE_POLICIES",
    "KNOB_SETS",
    "LOSSES",
    "EngineKnobs",
    "EnginePolicy",
    "LossConfig",
    "LossScaleConfig",
    "LossScaleState",
    "Rollout",
    "all_finite",
    "engine_policy",
    "forward",
    "get_knobs",
    "group_advantages",
    "init_loss_scale",
    "k3_kl",
    "mismatch_metrics",
    "phantom_clip_fraction",
    "rl_loss",
    "rollout",
    "scale_loss",
    "token_logprobs",
    "unscale_grads",
    "update_loss_scale",
]

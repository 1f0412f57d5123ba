"""GRPO-family policy-gradient losses over one interface, plus group-relative advantages.

``rl_loss(logp_new, logp_old, logp_rollout, advantages, mask, cfg)`` with

* ``logp_new`` [B, G]: log pi_theta(y_t) from the training engine (differentiated);
* ``logp_old`` [B, G]: log pi_old(y_t), the training engine's log-probs at the start of the step
  (recomputed by the learner, so pi_theta == pi_old at the first minibatch);
* ``logp_rollout`` [B, G]: log mu(y_t), the rollout engine's log-probs of the sampled tokens;
* ``advantages`` [B] (one per sequence) and ``mask`` [B, G] (1 on response tokens).

Formulas (Precision-RL's Oat ``main.py``, see shared/refs/rl.md section 1.2; sg = stop-gradient):

===================  ================================================================================
``grpo``             PPO-clip: r = exp(new - old); l = max(-A r, -A clip(r, 1-eps, 1+eps_high));
                     token mean. mu is ignored.
``drgrpo``           as grpo, aggregated as sum / (B * constant_length) (Dr.GRPO's constant normaliser);
                     pair with ``group_advantages(..., scale=False)``.
``grpo_token_tis``   grpo loss x min(exp(old - mu), C) per token (token TIS, Yao et al.; **clamps**).
``grpo_seq_mis``     grpo loss x rho_seq x 1[rho_seq <= C], rho_seq = exp(sum_t (old - mu)) (**masks**).
``pg_seq_is``        rho = exp(sum_t (sg new - mu)) (optionally clamped at C); l = -sg(rho) A new_t.
``pg_token_is``      rho_t = exp(sg new_t - mu_t); l = -min(rho_t, C) A new_t.
``gspo``             s = exp(mean_t (sg new - old)) (geometric mean); ratio_t = s * exp(new - sg new);
                     PPO-clip of that ratio with eps = (3e-4, 4e-4).
===================  ================================================================================

Optional k3 KL to a reference model (``kl_coef`` > 0, ``logp_ref``): lr = clamp(ref - new, +-40),
kl = expm1(lr) - lr, added per token.

``old_logp_source="rollout"`` is the bypass mode (pi_old := mu, as TRL/tunix offer): any PPO clipping
at the first minibatch then comes from the engine mismatch alone -- "phantom" clipping.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

LOSSES = ("grpo", "drgrpo", "grpo_token_tis", "grpo_seq_mis", "pg_seq_is", "pg_token_is", "gspo")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Which loss and its constants. ``seq_is_cap`` None = unclamped sequence IS (``pg_seq_is``).
    ``constant_length``: Dr.GRPO's normaliser (the generation budget). Hashable (jit-static)."""

    name: str = "grpo"
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    tis_cap: float = 2.0
    mis_cap: float = 10.0
    seq_is_cap: float | None = None
    token_is_cap: float = 2.0
    gspo_eps: tuple[float, float] = (3e-4, 4e-4)
    constant_length: int | None = None
    kl_coef: float = 0.0
    old_logp_source: str = "learner"

    def __post_init__(self):
        if self.name not in LOSSES:
            raise ValueError(f"loss.name: unknown loss {self.name!r}; expected one of {list(LOSSES)}")
        if self.old_logp_source not in ("learner", "rollout"):
            raise ValueError(f"loss.old_logp_source: expected 'learner' or 'rollout', got {self.old_logp_source!r}")
        for field in ("tis_cap", "mis_cap", "token_is_cap"):
            if getattr(self, field) <= 0:
                raise ValueError(f"loss.{field}: expected > 0, got {getattr(self, field)}")
        if self.seq_is_cap is not None and self.seq_is_cap <= 0:
            raise ValueError(f"loss.seq_is_cap: expected > 0 or None, got {self.seq_is_cap}")
        if self.name == "drgrpo" and (self.constant_length is None or self.constant_length <= 0):
            raise ValueError("loss.constant_length: drgrpo needs a positive constant normaliser (the generation budget)")

    @property
    def eps_high(self) -> float:
        return self.clip_eps if self.clip_eps_high is None else self.clip_eps_high


def group_advantages(rewards: jax.Array, group_size: int, *, scale: bool = True, eps: float = 1e-6) -> jax.Array:
    """Group-relative advantages. rewards: [N * group_size] (groups contiguous) -> [N * group_size].

    A_i = R_i - mean_group(R), divided by (std_group(R) + eps) when ``scale`` (GRPO); Dr.GRPO uses
    ``scale=False``.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1 or rewards.shape[0] % group_size:
        raise ValueError(f"rewards: expected a vector whose length is a multiple of group_size={group_size}, "
                         f"got shape {rewards.shape}")
    grouped = rewards.reshape(-1, group_size)
    centred = grouped - jnp.mean(grouped, axis=1, keepdims=True)
    if scale:
        centred = centred / (jnp.std(grouped, axis=1, keepdims=True) + eps)
    return centred.reshape(-1)


def masked_mean(x, mask):
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _ppo_clip(log_ratio, advantages, low, high):
    """Per-token PPO-clip loss and the clipped indicator. log_ratio: [B, G]; advantages: [B, 1]."""
    ratio = jnp.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - low, 1.0 + high)
    loss = jnp.maximum(unclipped, clipped)
    was_clipped = (clipped > unclipped).astype(jnp.float32)
    return loss, was_clipped


def k3_kl(logp_new, logp_ref):
    """k3 estimator of KL(pi || ref) per token: expm1(lr) - lr, lr = clamp(ref - new, +-40)."""
    log_ratio = jnp.clip(logp_ref - logp_new, -40.0, 40.0)
    return jnp.expm1(log_ratio) - log_ratio


def rl_loss(logp_new, logp_old, logp_rollout, advantages, mask, cfg: LossConfig, logp_ref=None):
    """Scalar loss and aux metrics for one minibatch. Shapes: [B, G] except advantages [B].

    aux: clip_fraction (tokens whose PPO term is clipped), is_truncation_fraction (token or sequence
    IS weights clamped at their cap), is_mask_fraction (sequences masked by MIS), kl (k3, if used).
    """
    sg = jax.lax.stop_gradient
    mask = mask.astype(jnp.float32)
    adv = advantages.astype(jnp.float32)[:, None]
    logp_new = logp_new.astype(jnp.float32)
    old = sg(logp_old.astype(jnp.float32))
    mu = sg(logp_rollout.astype(jnp.float32))
    if cfg.old_logp_source == "rollout":
        old = mu
    zero = jnp.zeros((), jnp.float32)
    aux = {"clip_fraction": zero, "is_truncation_fraction": zero, "is_mask_fraction": zero}
    name = cfg.name
    seq_count = jnp.maximum(jnp.sum(jnp.any(mask > 0, axis=1)), 1.0)
    valid_seq = jnp.any(mask > 0, axis=1).astype(jnp.float32)

    if name in ("grpo", "drgrpo", "grpo_token_tis", "grpo_seq_mis"):
        per_token, clipped = _ppo_clip((logp_new - old) * mask, adv, cfg.clip_eps, cfg.eps_high)
        aux["clip_fraction"] = masked_mean(clipped, mask)
        if name == "grpo_token_tis":
            raw = jnp.exp((old - mu) * mask)
            weight = jnp.minimum(raw, cfg.tis_cap)
            per_token = per_token * weight
            aux["is_truncation_fraction"] = masked_mean((raw > cfg.tis_cap).astype(jnp.float32), mask)
        elif name == "grpo_seq_mis":
            rho = jnp.exp(jnp.sum((old - mu) * mask, axis=1))
            keep = (rho <= cfg.mis_cap).astype(jnp.float32)
            per_token = per_token * (rho * keep)[:, None]
            aux["is_mask_fraction"] = jnp.sum((1.0 - keep) * valid_seq) / seq_count
    elif name == "pg_seq_is":
        rho = jnp.exp(jnp.sum((sg(logp_new) - mu) * mask, axis=1))
        if cfg.seq_is_cap is not None:
            aux["is_truncation_fraction"] = jnp.sum((rho > cfg.seq_is_cap) * valid_seq) / seq_count
            rho = jnp.minimum(rho, cfg.seq_is_cap)
        per_token = -rho[:, None] * adv * logp_new
    elif name == "pg_token_is":
        raw = jnp.exp((sg(logp_new) - mu) * mask)
        per_token = -jnp.minimum(raw, cfg.token_is_cap) * adv * logp_new
        aux["is_truncation_fraction"] = masked_mean((raw > cfg.token_is_cap).astype(jnp.float32), mask)
    elif name == "gspo":
        lengths = jnp.maximum(jnp.sum(mask, axis=1), 1.0)
        log_s = jnp.sum((sg(logp_new) - old) * mask, axis=1) / lengths
        log_ratio = log_s[:, None] + logp_new - sg(logp_new)
        per_token, clipped = _ppo_clip(log_ratio * mask, adv, cfg.gspo_eps[0], cfg.gspo_eps[1])
        aux["clip_fraction"] = masked_mean(clipped, mask)
    else:  # pragma: no cover - LossConfig validates the name
        raise ValueError(name)

    if cfg.kl_coef > 0:
        if logp_ref is None:
            raise ValueError("logp_ref: kl_coef > 0 needs the reference model's log-probs [B, G]")
        kl = k3_kl(logp_new, sg(logp_ref.astype(jnp.float32)))
        per_token = per_token + cfg.kl_coef * kl
        aux["kl"] = masked_mean(kl, mask)

    if name == "drgrpo":
        loss = jnp.sum(per_token * mask) / (mask.shape[0] * cfg.constant_length)
    else:
        loss = masked_mean(per_token, mask)
    return loss, aux


def default_loss_config(name: str, max_new_tokens: int, **overrides) -> LossConfig:
    """A LossConfig with the Oat constants (Seq-MIS cap 10, token TIS 2); drgrpo gets the budget as
    its constant normaliser."""
    if name == "drgrpo":
        overrides.setdefault("constant_length", max_new_tokens)
    return LossConfig(name=name, **overrides)

"""Multi-Agent Evolve's reward algebra, Task-Relative REINFORCE++ advantages and the per-role loss.

Rewards (the paper's definitions, shared/refs/rl.md section 2.3; the released code's
``GeneralIORewardManager`` agrees except for the tag count, see :func:`~.protocol.format_score`):

* proposer: ``R = q/3 + (1 - s_bar)/3 + format/3``, ``q`` the mean normalised judge score of the
  question (``judge_question``, several samples), ``s_bar`` the mean normalised judge score of N
  solver answers to it (``judge_answer``). Below the quality gate (``q < 0.7``) the difficulty term
  is dropped (``R = q/3 + format/3``) and the question does not enter the evolving dataset; a
  response without a ``<question>`` pair gets 0;
* solver: ``R = 0.5 judge + 0.5 format`` (``<answer>`` pairs); judge: ``R = format`` (``<score>`` pairs).

Task-Relative REINFORCE++ (verl's ``reinforce_plus_plus`` called once per role batch, gamma = 1, no
KL): the return of an outcome reward is the reward itself, whitened within the role's batch,
``A = (R - mu_role) / (sigma_role + eps)``, with the mean and (population) standard deviation
weighted by tokens (verl's ``masked_whiten``: long responses weigh more) or by sequences (a switch).
verl divides by ``sqrt(unbiased variance + 1e-8)``; ours is the biased sigma of the formula, so the
weighted std of A is 1: a difference of scale sqrt((n - 1) / n) only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxstack.rl.mae.protocol import first_tag, format_score, normalise_score

QUALITY_GATE = 0.7
WEIGHTINGS = ("token", "sequence")


@dataclasses.dataclass(frozen=True)
class ProposerReward:
    """reward: the proposer's scalar reward; quality: q (mean normalised judge score of the question);
    difficulty: 1 - s_bar, or None when it does not count (below the gate, or no question);
    format: the ``<question>`` format score; keep: the question passed the gate and enters the
    evolving dataset; question: the first ``<question>`` content (None if there is none)."""

    reward: float
    quality: float
    difficulty: float | None
    format: float
    keep: bool
    question: str | None


def _mean_normalised(scores: Sequence[int | None], field: str) -> float:
    if len(scores) == 0:
        raise ValueError(f"{field}: expected at least one judge score")
    return float(np.mean([normalise_score(s) for s in scores]))


def proposer_reward(generated: str, quality_scores: Sequence[int | None], solver_scores: Sequence[int | None], *,
                    gate: float = QUALITY_GATE) -> ProposerReward:
    """The proposer's reward for one generated response.

    generated: the proposer's decoded response; quality_scores: the judge's raw 1-10 scores of the
    question (``judge_question`` samples; None = a judgment without a score); solver_scores: the
    judge's raw scores of the N solver answers (``judge_answer``; N = ``len(solver_scores)``, the
    difficulty samples). Unused (and may be empty) when there is no ``<question>`` pair.
    """
    question = first_tag(generated, "question")
    form = format_score(generated, "question")
    if question is None:
        return ProposerReward(0.0, 0.0, None, form, False, None)
    quality = _mean_normalised(quality_scores, "quality_scores")
    if quality < gate:
        return ProposerReward(quality / 3 + form / 3, quality, None, form, False, question)
    difficulty = 1.0 - _mean_normalised(solver_scores, "solver_scores")
    return ProposerReward(quality / 3 + difficulty / 3 + form / 3, quality, difficulty, form, True, question)


def solver_reward(generated: str, judge_score: int | None) -> float:
    """0.5 x the normalised judge score of the answer + 0.5 x the ``<answer>`` format score."""
    return 0.5 * normalise_score(judge_score) + 0.5 * format_score(generated, "answer")


def judge_reward(generated: str, expected_scores: int = 1) -> float:
    """The judge's reward: the ``<score>`` format score alone (``expected_scores`` = 2 for ``judge_together``)."""
    return format_score(generated, "score", expected_scores)


# ----------------------------------------------------------------------------------------------------
# Task-Relative REINFORCE++


def task_relative_advantages(rewards: jax.Array, mask: jax.Array, roles: jax.Array, num_roles: int, *,
                             weighting: str = "token", eps: float = 1e-6) -> jax.Array:
    """Per-role whitened outcome rewards: A_b = (R_b - mu_r) / (sigma_r + eps) for row b of role r.

    rewards: [B] float (one outcome reward per response); mask: [B, T] 0/1 response mask; roles: [B]
    int in [0, num_roles). weighting: ``"token"`` (row b weighs its response length, verl's
    ``masked_whiten`` over the role batch's valid tokens) or ``"sequence"`` (each response weighs 1).
    mu_r, sigma_r: the weighted mean and population standard deviation over role r's rows. Returns
    A [B] float32 (rows without a response token get 0; multiply by the mask for per-token advantages).
    A role's advantages read only its own rows (``where``, not a product), so other roles' rewards,
    finite or not, leave them bit-identical.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting: expected one of {list(WEIGHTINGS)}, got {weighting!r}")
    rewards = jnp.asarray(rewards, jnp.float32)
    chex.assert_rank(rewards, 1)
    batch = rewards.shape[0]
    try:
        chex.assert_shape(mask, (batch, None))
        chex.assert_shape(roles, (batch,))
    except AssertionError:
        raise ValueError(f"mask / roles: expected [B, T] and [B] with B = {batch} (the rewards' length), got "
                         f"{list(jnp.shape(mask))} and {list(jnp.shape(roles))}") from None
    mask = jnp.asarray(mask, jnp.float32)
    tokens = jnp.sum(mask, axis=1)
    weights = tokens if weighting == "token" else (tokens > 0).astype(jnp.float32)
    advantages = jnp.zeros((batch,), jnp.float32)
    for role in range(num_roles):
        mine = (roles == role) & (weights > 0)
        w = jnp.where(mine, weights, 0.0)
        r = jnp.where(mine, rewards, 0.0)
        total = jnp.maximum(jnp.sum(w), 1e-12)
        mean = jnp.sum(w * r) / total
        std = jnp.sqrt(jnp.sum(w * jnp.square(r - mean) * mine) / total)
        advantages = jnp.where(mine, (r - mean) / (std + eps), advantages)
    return advantages


# ----------------------------------------------------------------------------------------------------
# The policy loss of one role batch


def role_loss(logp: jax.Array, entropy: jax.Array, advantages: jax.Array, mask: jax.Array,
              entropy_coef: jax.Array, normaliser: jax.Array, *, clip_eps: float = 0.2,
              logp_old: jax.Array | None = None):
    """One role batch's contribution to the single MAE update (PPO-clip, gamma 1, no KL, entropy bonus).

    logp, entropy: [B, T] float32 from :func:`~jaxstack.rl.engine.masked_token_logprobs` (differentiable);
    advantages: [B] (per sequence, :func:`task_relative_advantages`); mask: [B, T]; entropy_coef: [B]
    (the row's role coefficient); normaliser: scalar, the valid-token count of the whole concatenated
    update (so the role losses sum to the concatenated batch's token mean, and so do their gradients).
    logp_old: [B, T] log pi_old; None = the stop-gradient of logp (one on-policy minibatch: ratio 1).

    Per token: ``max(-A r, -A clip(r, 1 - eps, 1 + eps)) - c_b H_t``; loss = masked sum / normaliser.
    Returns (loss, aux) with sums (not means) that add up over role batches: ``clipped`` (clipped
    tokens), ``entropy_sum``, ``tokens``.
    """
    batch = logp.shape[0]
    try:
        chex.assert_equal_shape([logp, entropy, mask])
        chex.assert_shape(advantages, (batch,))
        chex.assert_shape(entropy_coef, (batch,))
    except AssertionError:
        raise ValueError(f"role_loss: expected logp / entropy / mask [B, T] alike and advantages / entropy_coef [B], "
                         f"got {list(logp.shape)}, {list(entropy.shape)}, {list(mask.shape)}, "
                         f"{list(jnp.shape(advantages))}, {list(jnp.shape(entropy_coef))}") from None
    mask = mask.astype(jnp.float32)
    old = jax.lax.stop_gradient(logp if logp_old is None else logp_old.astype(jnp.float32))
    ratio = jnp.exp((logp - old) * mask)
    adv = advantages.astype(jnp.float32)[:, None]
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_token = jnp.maximum(unclipped, clipped) - entropy_coef.astype(jnp.float32)[:, None] * entropy
    loss = jnp.sum(per_token * mask) / normaliser
    aux = {"clipped": jnp.sum((clipped > unclipped) * mask), "entropy_sum": jnp.sum(entropy * mask),
           "tokens": jnp.sum(mask)}
    return loss, aux

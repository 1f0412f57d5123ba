"""Training-vs-rollout mismatch metrics, computed on every RL step (pure jnp, jit-able).

Inputs are the training engine's log-probs ``logp_train`` = log pi(y_t) and the rollout engine's
``logp_rollout`` = log mu(y_t) of the *same* sampled tokens (drawn from mu), both [B, G], and the
response mask [B, G]. With log r_t = log pi - log mu (so samples come from mu):

* ``abs_diff_mean`` / ``abs_diff_p99`` / ``abs_diff_max``: |log pi - log mu| over response tokens;
* per-token KL(mu || pi) estimators: k1 = -log r, k2 = (log r)^2 / 2, k3 = (r - 1) - log r;
* sequence KL(mu || pi) estimates (the paper's offline "sequence-level KL"): ``seq_kl_k1`` = mean over
  sequences of -sum_t log r_t, ``seq_kl_k3`` = mean of sum_t k3_t (non-negative);
* ``seq_log_ratio_mean`` / ``seq_log_ratio_abs_mean``: sum_t log r_t per sequence, and its least-squares
  ``seq_log_ratio_slope`` against response length (nats per token);
* ``prob_diff_max`` / ``prob_diff_min`` / ``prob_diff_abs_mean``: pi - mu in probability space;
* ``chi2_token`` = E_mu[(r - 1)^2]; ``chi2_seq`` = mean(rho_seq^2) - 1 with rho_seq = prod_t r_t;
* ``ess``: normalised effective sample size of the sequence weights, (sum rho)^2 / (N sum rho^2);
* ``phantom_clip_fraction``: tokens with exp(log pi_old - log mu) outside [1 - eps, 1 + eps] -- what PPO
  would clip at the first minibatch (where pi_theta == pi_old) if pi_old were mu: clipping caused by
  the precision gap alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _masked(x, mask):
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_quantile(x: jax.Array, mask: jax.Array, q: float) -> jax.Array:
    """The q-quantile of x over mask == 1 (linear interpolation, as ``np.quantile``)."""
    return jnp.nanquantile(jnp.where(mask > 0, x, jnp.nan), q)


def phantom_clip_fraction(logp_old, logp_rollout, mask, eps_low: float = 0.2, eps_high: float | None = None):
    """Fraction of response tokens with pi_old / mu outside [1 - eps_low, 1 + eps_high]."""
    eps_high = eps_low if eps_high is None else eps_high
    ratio = jnp.exp(logp_old - logp_rollout)
    outside = ((ratio < 1.0 - eps_low) | (ratio > 1.0 + eps_high)).astype(jnp.float32)
    return _masked(outside, mask)


def mismatch_metrics(logp_train: jax.Array, logp_rollout: jax.Array, mask: jax.Array,
                     clip_eps: float = 0.2) -> dict[str, jax.Array]:
    """All mismatch metrics above (float32 scalars). logp_*: [B, G]; mask: [B, G] 0/1."""
    mask = mask.astype(jnp.float32)
    log_r = (logp_train.astype(jnp.float32) - logp_rollout.astype(jnp.float32)) * mask
    abs_diff = jnp.abs(log_r)
    r_minus_1 = jnp.expm1(log_r)  # expm1: (r - 1) without cancellation when log r ~ 1e-4
    k3 = r_minus_1 - log_r
    lengths = jnp.sum(mask, axis=1)
    valid = (lengths > 0).astype(jnp.float32)
    n_seq = jnp.maximum(jnp.sum(valid), 1.0)
    seq = jnp.sum(log_r, axis=1)
    # least-squares slope of the sequence log-ratio on the response length
    mean_len = jnp.sum(lengths * valid) / n_seq
    mean_seq = jnp.sum(seq * valid) / n_seq
    cov = jnp.sum((lengths - mean_len) * (seq - mean_seq) * valid)
    var = jnp.sum(jnp.square(lengths - mean_len) * valid)
    slope = jnp.where(var > 0, cov / jnp.maximum(var, 1e-12), 0.0)
    prob_diff = (jnp.exp(logp_train) - jnp.exp(logp_rollout)) * mask
    big = jnp.finfo(jnp.float32).max
    # sequence weights in log space, clamped so exp() stays finite
    log_rho = jnp.clip(seq, -40.0, 40.0)
    log_rho_valid = jnp.where(valid > 0, log_rho, -jnp.inf)
    log_sum = jax.nn.logsumexp(log_rho_valid)
    log_sum_sq = jax.nn.logsumexp(2 * log_rho_valid)
    ess = jnp.exp(2 * log_sum - log_sum_sq) / n_seq
    chi2_seq = jnp.exp(log_sum_sq - jnp.log(n_seq)) - 1.0
    return {
        "abs_diff_mean": _masked(abs_diff, mask),
        "abs_diff_p99": masked_quantile(abs_diff, mask, 0.99),
        "abs_diff_max": jnp.max(abs_diff),
        "k1": _masked(-log_r, mask),
        "k2": _masked(0.5 * jnp.square(log_r), mask),
        "k3": _masked(k3, mask),
        "seq_log_ratio_mean": mean_seq,
        "seq_kl_k1": -mean_seq,
        "seq_kl_k3": jnp.sum(jnp.sum(k3 * mask, axis=1) * valid) / n_seq,
        "seq_log_ratio_abs_mean": jnp.sum(jnp.abs(seq) * valid) / n_seq,
        "seq_log_ratio_slope": slope,
        "prob_diff_max": jnp.max(jnp.where(mask > 0, prob_diff, -big)),
        "prob_diff_min": jnp.min(jnp.where(mask > 0, prob_diff, big)),
        "prob_diff_abs_mean": _masked(jnp.abs(prob_diff), mask),
        "chi2_token": _masked(jnp.square(r_minus_1), mask),
        "chi2_seq": chi2_seq,
        "ess": ess,
        "phantom_clip_fraction": phantom_clip_fraction(logp_train, logp_rollout, mask, clip_eps),
    }


def reference_mismatch(logp_train, logp_rollout, mask, clip_eps: float = 0.2) -> dict[str, float]:
    """Plain numpy (float64) reference of ``mismatch_metrics`` for tests."""
    a, b, m = (np.asarray(x, np.float64) for x in (logp_train, logp_rollout, mask))
    sel = m > 0
    d = (a - b)[sel]
    seqs = [(a[i] - b[i])[m[i] > 0] for i in range(a.shape[0]) if m[i].sum() > 0]
    seq = np.array([s.sum() for s in seqs])
    lengths = np.array([len(s) for s in seqs], np.float64)
    slope = np.polyfit(lengths, seq, 1)[0] if lengths.std() > 0 else 0.0
    rho = np.exp(np.clip(seq, -40, 40))
    pd = (np.exp(a) - np.exp(b))[sel]
    ratio = np.exp(d)
    return {
        "abs_diff_mean": np.abs(d).mean(), "abs_diff_p99": np.quantile(np.abs(d), 0.99),
        "abs_diff_max": np.abs(d).max(), "k1": (-d).mean(), "k2": (0.5 * d**2).mean(),
        "k3": (np.expm1(d) - d).mean(), "seq_log_ratio_mean": seq.mean(), "seq_kl_k1": -seq.mean(),
        "seq_kl_k3": np.mean([(np.expm1(s) - s).sum() for s in seqs]),
        "seq_log_ratio_abs_mean": np.abs(seq).mean(), "seq_log_ratio_slope": slope,
        "prob_diff_max": pd.max(), "prob_diff_min": pd.min(), "prob_diff_abs_mean": np.abs(pd).mean(),
        "chi2_token": ((ratio - 1) ** 2).mean(), "chi2_seq": (rho**2).mean() - 1,
        "ess": rho.sum() ** 2 / (len(rho) * (rho**2).sum()),
        "phantom_clip_fraction": ((ratio < 1 - clip_eps) | (ratio > 1 + clip_eps)).mean(),
    }

"""Task-Relative REINFORCE++: per-role whitening, token- or sequence-weighted."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxstack.rl.mae import task_relative_advantages

B, T, ROLES = 60, 14, 3


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=B).astype(np.float32) * rng.uniform(0.1, 3.0)
    lengths = rng.integers(1, T + 1, size=B)
    lengths[5] = 0  # a row with no response token
    starts = rng.integers(0, T - lengths + 1)
    mask = np.zeros((B, T), np.float32)
    for b in range(B):
        mask[b, starts[b]:starts[b] + lengths[b]] = 1.0
    roles = rng.integers(0, ROLES, size=B)
    return rewards, mask, roles


def numpy_masked_whiten(rewards, mask, roles, weighting, eps=1e-6):
    """A float64 reference: per role, broadcast the outcome reward over the response tokens and
    whiten over the valid tokens (token) or over the responses (sequence)."""
    out = np.zeros(len(rewards))
    for role in np.unique(roles):
        rows = (roles == role) & (mask.sum(1) > 0)
        if weighting == "token":
            values = np.broadcast_to(rewards[rows, None].astype(np.float64), mask[rows].shape)[mask[rows] > 0]
        else:
            values = rewards[rows].astype(np.float64)
        mean, std = values.mean(), values.std()
        out[rows] = (rewards[rows] - mean) / (std + eps)
    return out


def _weighted_moments(adv, weights):
    mean = np.sum(adv * weights) / weights.sum()
    return mean, np.sqrt(np.sum(weights * (adv - mean) ** 2) / weights.sum())


@pytest.mark.parametrize("weighting", ["token", "sequence"])
def test_per_role_mean_zero_std_one_and_numpy_reference(weighting):
    rewards, mask, roles = _batch()
    adv = np.asarray(task_relative_advantages(rewards, mask, roles, ROLES, weighting=weighting))
    tokens = mask.sum(1)
    for role in range(ROLES):
        rows = (roles == role) & (tokens > 0)
        weights = tokens[rows] if weighting == "token" else np.ones(rows.sum())
        mean, std = _weighted_moments(adv[rows].astype(np.float64), weights)
        assert abs(mean) < 1e-6, (role, mean)
        assert abs(std - 1.0) < 1e-4, (role, std)
    assert adv[5] == 0.0  # no response token, no advantage
    np.testing.assert_allclose(adv, numpy_masked_whiten(rewards, mask, roles, weighting), atol=1e-6, rtol=0)


@pytest.mark.parametrize("weighting", ["token", "sequence"])
def test_other_roles_leave_a_role_bit_identical(weighting):
    rewards, mask, roles = _batch(1)
    before = np.asarray(task_relative_advantages(rewards, mask, roles, ROLES, weighting=weighting))
    changed = rewards.copy()
    changed[roles != 1] = np.random.default_rng(9).normal(size=(roles != 1).sum()) * 100
    changed[np.flatnonzero(roles == 0)[0]] = np.inf  # not even a non-finite reward leaks across roles
    after = np.asarray(task_relative_advantages(changed, mask, roles, ROLES, weighting=weighting))
    assert np.array_equal(before[roles == 1], after[roles == 1])
    # changing the role's own lengths changes token weighting only
    assert not np.array_equal(before[roles == 0], after[roles == 0])


def test_weightings_differ_when_lengths_differ_and_agree_when_equal():
    rewards = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    roles = np.zeros(4, np.int32)
    uneven = np.array([[1, 1, 1, 1], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]], np.float32)
    token = np.asarray(task_relative_advantages(rewards, uneven, roles, 1, weighting="token"))
    sequence = np.asarray(task_relative_advantages(rewards, uneven, roles, 1, weighting="sequence"))
    # token: mu = 4/7 (the long response weighs 4); sequence: mu = 1/4
    assert token[0] == pytest.approx((1 - 4 / 7) / np.sqrt(4 / 7 * 3 / 7), abs=1e-5)
    assert sequence[0] == pytest.approx((1 - 0.25) / np.sqrt(0.25 * 0.75), abs=1e-5)
    even = np.ones((4, 4), np.float32)
    np.testing.assert_allclose(task_relative_advantages(rewards, even, roles, 1, weighting="token"),
                               task_relative_advantages(rewards, even, roles, 1, weighting="sequence"), atol=1e-6)


def test_bad_input_names_the_field():
    rewards, mask, roles = _batch()
    with pytest.raises(ValueError, match="weighting"):
        task_relative_advantages(rewards, mask, roles, ROLES, weighting="tokens")
    with pytest.raises(ValueError, match="mask / roles"):
        task_relative_advantages(rewards, mask[:-1], roles, ROLES)
    with pytest.raises(ValueError, match="mask / roles"):
        task_relative_advantages(rewards, mask, jnp.asarray(roles[:-1]), ROLES)

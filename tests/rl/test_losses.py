"""Every estimator against a plain numpy reference (float64). float32 vs float64 on O(1) values:
rtol 1e-5 is ~100 float32 ulps, far below any formula mistake (which moves results by O(0.1))."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstack.rl.losses import LossConfig, group_advantages, k3_kl, rl_loss
from jaxstack.rl.metrics import phantom_clip_fraction

B, G = 4, 6
RTOL = 1e-5


def _inputs(seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    new = rng.normal(-1.5, 0.5, (B, G))
    old = new + rng.normal(0, spread, (B, G))
    mu = old + rng.normal(0, spread, (B, G))
    adv = rng.normal(0, 1, B)
    mask = np.ones((B, G))
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    return new, old, mu, adv, mask


def _run(cfg, new, old, mu, adv, mask, **kw):
    loss, aux = rl_loss(*(jnp.asarray(x, jnp.float32) for x in (new, old, mu, adv, mask)), cfg, **kw)
    return float(loss), {k: float(v) for k, v in aux.items()}


def _ppo_np(log_ratio, adv, low, high):
    r = np.exp(log_ratio)
    a = adv[:, None]
    return np.maximum(-a * r, -a * np.clip(r, 1 - low, 1 + high))


def test_grpo_is_ppo_clip_token_mean():
    new, old, mu, adv, mask = _inputs()
    loss, aux = _run(LossConfig("grpo"), new, old, mu, adv, mask)
    per = _ppo_np(new - old, adv, 0.2, 0.2)
    np.testing.assert_allclose(loss, (per * mask).sum() / mask.sum(), rtol=RTOL)
    r = np.exp(new - old)
    a = adv[:, None]
    clipped = (-a * np.clip(r, 0.8, 1.2)) > (-a * r)
    np.testing.assert_allclose(aux["clip_fraction"], (clipped * mask).sum() / mask.sum(), rtol=RTOL)


def test_drgrpo_uses_a_constant_normaliser():
    new, old, mu, adv, mask = _inputs()
    cfg = LossConfig("drgrpo", constant_length=10)
    loss, _ = _run(cfg, new, old, mu, adv, mask)
    per = _ppo_np(new - old, adv, 0.2, 0.2)
    np.testing.assert_allclose(loss, (per * mask).sum() / (B * 10), rtol=RTOL)
    # masking out tokens does not change the normaliser (a token mean would change it)
    mask2 = mask.copy()
    mask2[0, 3:] = 0
    loss2, _ = _run(cfg, new, old, mu, adv, mask2)
    np.testing.assert_allclose(loss2, (per * mask2).sum() / (B * 10), rtol=RTOL)
    with pytest.raises(ValueError, match="constant_length"):
        LossConfig("drgrpo")


def test_sequence_is_is_the_product_of_token_ratios():
    new, old, mu, adv, mask = _inputs(spread=0.1)
    for cap in (None, 1.1):
        loss, aux = _run(LossConfig("pg_seq_is", seq_is_cap=cap), new, old, mu, adv, mask)
        rho = np.array([np.prod(np.exp(new[i] - mu[i])[mask[i] > 0]) for i in range(B)])
        weight = rho if cap is None else np.minimum(rho, cap)
        expected = (-(weight * adv)[:, None] * new * mask).sum() / mask.sum()
        np.testing.assert_allclose(loss, expected, rtol=RTOL)
        if cap is not None:
            np.testing.assert_allclose(aux["is_truncation_fraction"], (rho > cap).mean(), rtol=RTOL)
    # the IS weight is a constant: the gradient is -rho A / N per token
    grad = jax.grad(lambda n: rl_loss(n, jnp.asarray(old), jnp.asarray(mu), jnp.asarray(adv), jnp.asarray(mask),
                                      LossConfig("pg_seq_is"))[0])(jnp.asarray(new, jnp.float32))
    rho = np.array([np.prod(np.exp(new[i] - mu[i])[mask[i] > 0]) for i in range(B)])
    np.testing.assert_allclose(grad, -(rho * adv)[:, None] * mask / mask.sum(), rtol=1e-4, atol=1e-7)


def test_token_tis_clamps():
    new, old, mu, adv, mask = _inputs(spread=0.6)
    loss, aux = _run(LossConfig("grpo_token_tis", tis_cap=1.5), new, old, mu, adv, mask)
    raw = np.exp(old - mu)
    weight = np.minimum(raw, 1.5)
    assert (raw > 1.5)[mask > 0].any()  # the cap is exercised
    per = _ppo_np(new - old, adv, 0.2, 0.2) * weight
    np.testing.assert_allclose(loss, (per * mask).sum() / mask.sum(), rtol=RTOL)
    np.testing.assert_allclose(aux["is_truncation_fraction"], ((raw > 1.5) * mask).sum() / mask.sum(), rtol=RTOL)


def test_sequence_mis_masks():
    new, old, mu, adv, mask = _inputs(spread=0.6)
    rho = np.array([np.exp(((old[i] - mu[i]) * mask[i]).sum()) for i in range(B)])
    cap = float(np.median(rho))  # half the sequences above the cap
    loss, aux = _run(LossConfig("grpo_seq_mis", mis_cap=cap), new, old, mu, adv, mask)
    keep = rho <= cap
    per = _ppo_np(new - old, adv, 0.2, 0.2) * (rho * keep)[:, None]
    np.testing.assert_allclose(loss, (per * mask).sum() / mask.sum(), rtol=RTOL)
    np.testing.assert_allclose(aux["is_mask_fraction"], 1 - keep.mean(), rtol=RTOL)
    # a masked sequence gets no gradient at all (masking, not clamping)
    grad = jax.grad(lambda n: rl_loss(n, jnp.asarray(old), jnp.asarray(mu), jnp.asarray(adv), jnp.asarray(mask),
                                      LossConfig("grpo_seq_mis", mis_cap=cap))[0])(jnp.asarray(new, jnp.float32))
    assert np.all(np.asarray(grad)[~keep] == 0) and np.any(np.asarray(grad)[keep] != 0)


def test_gspo_uses_the_geometric_mean():
    new, old, mu, adv, mask = _inputs(spread=0.0002)
    eps = (3e-4, 4e-4)
    loss, _ = _run(LossConfig("gspo"), new, old, mu, adv, mask)
    s = np.array([np.prod(np.exp(new[i] - old[i])[mask[i] > 0]) ** (1 / mask[i].sum()) for i in range(B)])
    per = np.maximum(-adv * s, -adv * np.clip(s, 1 - eps[0], 1 + eps[1]))[:, None] * np.ones((B, G))
    np.testing.assert_allclose(loss, (per * mask).sum() / mask.sum(), rtol=RTOL)
    # gradient of the sequence ratio flows through every token equally (s * d logp_t), unclipped rows
    grad = jax.grad(lambda n: rl_loss(n, jnp.asarray(old), jnp.asarray(mu), jnp.asarray(adv), jnp.asarray(mask),
                                      LossConfig("gspo", gspo_eps=(1.0, 1.0)))[0])(jnp.asarray(new, jnp.float32))
    np.testing.assert_allclose(grad, (-adv * s)[:, None] * mask / mask.sum(), rtol=1e-4, atol=1e-8)


def test_token_is_pg_clamps():
    new, old, mu, adv, mask = _inputs(spread=0.6)
    loss, _ = _run(LossConfig("pg_token_is", token_is_cap=1.3), new, old, mu, adv, mask)
    w = np.minimum(np.exp(new - mu), 1.3)
    np.testing.assert_allclose(loss, (-w * adv[:, None] * new * mask).sum() / mask.sum(), rtol=RTOL)


def test_phantom_clip_counted():
    """First minibatch: pi_theta == pi_old. Learner mode clips nothing; bypass mode (pi_old := mu)
    clips exactly the tokens whose precision gap pi_old/mu leaves [0.8, 1.2]: phantom clipping."""
    new, _, mu, adv, mask = _inputs(spread=0.3)
    old = new.copy()
    _, learner = _run(LossConfig("grpo"), new, old, mu, adv, mask)
    assert learner["clip_fraction"] == 0.0
    _, bypass = _run(LossConfig("grpo", old_logp_source="rollout"), new, old, mu, adv, mask)
    r = np.exp(old - mu)
    a = adv[:, None]
    clipped = (-a * np.clip(r, 0.8, 1.2)) > (-a * r)  # outside the range on the side that binds
    outside = (r < 0.8) | (r > 1.2)
    assert outside[mask > 0].sum() > 0
    np.testing.assert_allclose(bypass["clip_fraction"], (clipped * mask).sum() / mask.sum(), rtol=RTOL)
    phantom = float(phantom_clip_fraction(jnp.asarray(old), jnp.asarray(mu), jnp.asarray(mask)))
    np.testing.assert_allclose(phantom, (outside * mask).sum() / mask.sum(), rtol=RTOL)
    assert bypass["clip_fraction"] <= phantom


def test_k3_kl_and_kl_term():
    new, old, mu, adv, mask = _inputs()
    ref = new + 0.1
    lr = np.clip(ref - new, -40, 40)
    np.testing.assert_allclose(k3_kl(jnp.asarray(new), jnp.asarray(ref)), np.expm1(lr) - lr, rtol=RTOL)
    base, _ = _run(LossConfig("grpo"), new, old, mu, adv, mask)
    with_kl, aux = _run(LossConfig("grpo", kl_coef=0.5), new, old, mu, adv, mask, logp_ref=jnp.asarray(ref))
    np.testing.assert_allclose(with_kl - base, 0.5 * aux["kl"], rtol=1e-4)
    with pytest.raises(ValueError, match="logp_ref"):
        _run(LossConfig("grpo", kl_coef=0.5), new, old, mu, adv, mask)


def test_group_advantages():
    rewards = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    adv = np.asarray(group_advantages(jnp.asarray(rewards), 4))
    g = rewards.reshape(2, 4)
    expected = ((g - g.mean(1, keepdims=True)) / (g.std(1, keepdims=True) + 1e-6)).reshape(-1)
    np.testing.assert_allclose(adv, expected, rtol=RTOL)
    np.testing.assert_allclose(group_advantages(jnp.asarray(rewards), 4, scale=False),
                               (g - g.mean(1, keepdims=True)).reshape(-1), rtol=RTOL)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(jnp.ones(6), 4)


def test_bad_config():
    with pytest.raises(ValueError, match="unknown loss"):
        LossConfig("ppo2")
    with pytest.raises(ValueError, match="old_logp_source"):
        LossConfig("grpo", old_logp_source="vllm")

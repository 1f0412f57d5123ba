"""Dynamic loss scaler, mismatch metrics (vs a numpy reference) and the task verifiers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstack.precision import (
    LossScaleConfig,
    all_finite,
    init_loss_scale,
    loss_scale_for,
    scale_loss,
    select_tree,
    unscale_grads,
    update_loss_scale,
)
from jaxstack.rl.metrics import mismatch_metrics, reference_mismatch
from jaxstack.rl.tasks import (
    EOS,
    ArithmeticTask,
    LengthTask,
    SortTask,
    decode,
    demonstrations,
    encode,
)

CFG = LossScaleConfig(enabled=True, growth_interval=3)


@jax.jit
def _step(params, state, grads):
    """A jitted optimizer step with the scaler: skip + back off on non-finite gradients."""
    grads = unscale_grads(state, grads)
    finite = all_finite(grads)
    new = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    return select_tree(finite, new, params), update_loss_scale(state, finite, CFG)


def test_scaler_halves_and_skips_on_inf_inside_jit():
    state = init_loss_scale(CFG)
    assert state.scale.dtype == jnp.float32 and float(state.scale) == 2.0**16
    params = {"w": jnp.ones(3)}
    bad = {"w": jnp.array([1.0, jnp.inf, 0.0])}
    new_params, state = _step(params, state, bad)
    np.testing.assert_array_equal(new_params["w"], params["w"])  # skipped
    assert float(state.scale) == 2.0**15 and int(state.skipped) == 1 and int(state.good_steps) == 0
    _, state = _step(params, state, {"w": jnp.array([jnp.nan, 0.0, 0.0])})
    assert float(state.scale) == 2.0**14 and int(state.skipped) == 2


def test_scaler_grows_after_n_finite_steps():
    state = init_loss_scale(CFG)
    params = {"w": jnp.ones(3)}
    good = {"w": jnp.full(3, 2.0**16)}  # scaled gradient of 1.0
    for i in range(1, 3):
        params, state = _step(params, state, good)
        assert float(state.scale) == 2.0**16 and int(state.good_steps) == i
    np.testing.assert_allclose(params["w"], 1.0 - 0.2)  # unscaled gradient 1.0, lr 0.1, two steps
    params, state = _step(params, state, good)
    assert float(state.scale) == 2.0**17 and int(state.good_steps) == 0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_scaler_is_a_noop_for_f32_and_bf16(dtype):
    config = loss_scale_for(dtype)
    assert not config.enabled and loss_scale_for(jnp.float16).enabled
    state = init_loss_scale(config)
    loss = jnp.asarray(3.5, dtype)
    assert scale_loss(state, loss) is loss
    grads = {"w": jnp.arange(3.0, dtype=dtype)}
    assert unscale_grads(state, grads) is grads
    state = jax.jit(update_loss_scale, static_argnums=2)(state, jnp.asarray(True), config)
    assert float(state.scale) == 1.0


def test_scaler_rescues_float16_gradients():
    """A float16 backward: without a scale the cotangents underflow (gradient exactly 0); with a loss
    100x larger, 2^16 overflows float16 and the scaler skips and halves until the gradient is finite."""
    x = jnp.full((64,), 1e-5, jnp.float16)

    def loss(w, x):  # cotangent of the float16 sum = 1e-3 * S; times x = 1e-8 * S in float16
        return jnp.sum(x * w.astype(jnp.float16)).astype(jnp.float32) * 1e-3

    w = jnp.ones(64, jnp.float32)
    assert float(jnp.max(jnp.abs(jax.jit(jax.grad(loss))(w, x)))) == 0.0  # 1e-8 < float16's min subnormal
    config = LossScaleConfig()

    @jax.jit
    def scaled_grad(w, x, state, factor):
        g = unscale_grads(state, jax.grad(lambda w: scale_loss(state, loss(w, x) * factor))(w))
        finite = all_finite(g)
        return g, finite, update_loss_scale(state, finite, config)

    g, finite, state = scaled_grad(w, x, init_loss_scale(config), 1.0)
    assert bool(finite) and int(state.skipped) == 0
    np.testing.assert_allclose(g, 1e-8, rtol=2e-3)  # float16 rounding of 1e-5 and of 65.5: 2e-3 relative
    # 1e5 x the loss: cotangent 100 * S overflows float16 (65504) until S <= 2^9: 7 skipped halvings.
    state = init_loss_scale(config)
    for _ in range(12):
        g, finite, state = scaled_grad(w, x, state, 1e5)
        if bool(finite):
            break
    assert bool(finite) and int(state.skipped) == 7 and float(state.scale) == 2.0**9
    np.testing.assert_allclose(g, 1e-3, rtol=2e-3)


def test_loss_scale_config_validates():
    with pytest.raises(ValueError, match="growth_interval"):
        LossScaleConfig(growth_interval=0)
    with pytest.raises(ValueError, match="backoff_factor"):
        LossScaleConfig(backoff_factor=2.0)


def test_mismatch_metrics_match_numpy_reference():
    rng = np.random.default_rng(0)
    train = rng.normal(-2, 1, (6, 10)).astype(np.float32)
    rollout = (train + rng.normal(0, 0.2, (6, 10))).astype(np.float32)
    mask = np.ones((6, 10), np.float32)
    mask[0, 7:] = 0
    mask[2, 3:] = 0
    mask[4, 5:] = 0
    got = jax.jit(mismatch_metrics)(train, rollout, mask)
    expected = reference_mismatch(train, rollout, mask)
    assert set(got) == set(expected)
    for name, value in expected.items():
        # float32 sums of ~50 terms vs float64: 1e-4 relative, 1e-6 absolute near zero.
        np.testing.assert_allclose(float(got[name]), value, rtol=1e-4, atol=1e-6, err_msg=name)


def test_identical_engines_have_zero_mismatch():
    train = np.log(np.full((6, 10), 0.25, np.float32))
    got = jax.jit(mismatch_metrics)(train, train, np.ones((6, 10), np.float32))  # same shapes: compiled once
    assert float(got["abs_diff_max"]) == 0 and float(got["k3"]) == 0 and float(got["ess"]) == pytest.approx(1.0)


def test_tasks_verify_their_demonstrations():
    rng = np.random.default_rng(0)
    for task in (ArithmeticTask(digits=3), SortTask(length=5), LengthTask()):
        problems = task.sample(rng, 16)
        assert problems.prompts.shape == (16, task.prompt_length)
        tokens, mask = demonstrations(task, problems, task.max_new_tokens, rng)
        rewards = task.reward(problems, tokens[:, task.prompt_length:], mask)
        assert task.success(rewards).all(), (task.name, rewards)
    task = ArithmeticTask(digits=2)
    problems = task.sample(rng, 1)
    demo = task.demonstration(problems.data[0])
    assert decode(demo).endswith("<eos>") and len(demo) == task.response_length
    wrong = list(demo)
    wrong[-2] = encode(str((int(decode([demo[-2]])) + 1) % 10))[0]
    pad = task.max_new_tokens - len(demo)
    assert task.reward(problems, np.array([wrong + [0] * pad]), np.array([[1] * len(demo) + [0] * pad]))[0] == 0
    no_eos = demo[:-1] + [encode("1")[0]]
    assert task.reward(problems, np.array([no_eos + [0] * pad]), np.array([[1] * len(demo) + [0] * pad]))[0] == 0
    length = LengthTask(max_new_tokens=4)
    lp = length.sample(rng, 2)
    r = length.reward(lp, np.array([[5, 5, EOS, 0], [5, 5, 5, 5]]), np.array([[1, 1, 1, 0], [1, 1, 1, 1]]))
    np.testing.assert_allclose(r, [-0.5, -1.0])
    with pytest.raises(ValueError, match="unknown token"):
        encode(["<bos>", "x"])
    with pytest.raises(ValueError, match="responses/mask"):
        length.reward(lp, np.zeros((3, 4)), np.zeros((3, 4)))


def test_demonstration_noise():
    task = ArithmeticTask(digits=2)
    rng = np.random.default_rng(0)
    problems = task.sample(rng, 200)
    tokens, mask = demonstrations(task, problems, task.max_new_tokens, rng, error_rate=0.5, distractor_rate=0.05)
    rewards = task.reward(problems, tokens[:, task.prompt_length:], mask)
    assert 0.2 < rewards.mean() < 0.9  # noisy demonstrations are partly wrong
    assert (tokens >= encode("a")[0]).any()  # distractors present

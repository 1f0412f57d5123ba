"""Engine support for several roles sharing one policy: mixed-length rollouts (each row equals
itself alone), response-mask log-probs, the gradient / apply split (one update on concatenated role
batches = the sum of the per-role gradient contributions), precision policies; three MAE steps on it.

Compile time dominates on CPU, so the fast tests share programs: one rollout shape ([4, P], the MAE
steps' ``rollout_rows``), one gradient shape ([12, P + G], their ``micro_rows``), one model. The
slow ones (``make test-all``) repeat the properties at other shapes and precisions.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstack.models.configs import LlamaConfig
from jaxstack.precision import LossScaleConfig, init_loss_scale
from jaxstack.rl.engine import (
    get_knobs,
    masked_token_logprobs,
    mixed_rollout,
    token_logprobs,
)
from jaxstack.rl.loop import apply_gradients, init_masters
from jaxstack.rl.mae import (
    TOY_TEMPLATES,
    TOY_VOCAB,
    ArithmeticDomain,
    MAEConfig,
    RoleSetup,
    TagTokenizer,
    default_seed_file,
    init_state,
    judge_agreement,
    judge_probes,
    load_seed_questions,
    mae_step,
    role_loss,
    task_relative_advantages,
)
from jaxstack.rl.mae.selfplay import adam, role_gradients
from jaxstack.rl.policy import engine_policy

# the toy's tag vocabulary (EOS = 2), so the MAE steps below run on this model
TINY = LlamaConfig(vocab_size=len(TOY_VOCAB), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                   max_position_embeddings=64)
P, G, EOS = 20, 16, 2
LENGTHS = np.array([20, 3, 11, 1])
ROWS = len(LENGTHS)
KNOBS = get_knobs("kv_cache")
logprobs_of = jax.jit(masked_token_logprobs, static_argnames=("config", "policy", "with_entropy"))


@pytest.fixture(scope="module")
def masters():
    # one compiled program instead of the eager initialisation's many small ones (~2x faster on CPU)
    return jax.jit(init_masters, static_argnums=(0, 1))(TINY, 0)


@pytest.fixture(scope="module")
def prompts():
    return jax.random.randint(jax.random.key(1), (len(LENGTHS), P), 3, TINY.vocab_size)


@pytest.mark.parametrize("knobs", ["kv_cache", pytest.param("none", marks=pytest.mark.slow)])
def test_each_row_equals_that_row_alone(masters, prompts, knobs):
    """f32: a row of a mixed-length batch samples the same tokens with log-probs within 1e-6 of the
    row rolled out alone with its own key: in a batch of one whose padding holds other tokens, and
    (the shortest row) with a prompt exactly its length."""
    policy, knob_set = engine_policy("fp32"), get_knobs(knobs)
    keys = jax.random.split(jax.random.key(2), len(LENGTHS))
    common = {"config": TINY, "policy": policy, "knobs": knob_set, "max_new_tokens": G, "eos_id": EOS}
    batch = mixed_rollout(masters, prompts, jnp.asarray(LENGTHS), keys, **common)
    garbage = jax.random.randint(jax.random.key(5), (1, P), 3, TINY.vocab_size)
    for row, length in enumerate(LENGTHS):
        alone_prompt = jnp.where(jnp.arange(P) < length, prompts[row], garbage)
        alone = mixed_rollout(masters, alone_prompt, jnp.asarray(LENGTHS[row:row + 1]), keys[row:row + 1], **common)
        np.testing.assert_array_equal(batch.response[row], alone.response[0])
        np.testing.assert_allclose(batch.response_logprobs[row], alone.response_logprobs[0], atol=1e-6, rtol=0)
        # the [B, P + G] layout: prompt, then the response right after it
        np.testing.assert_array_equal(batch.tokens[row, :length], prompts[row, :length])
        np.testing.assert_array_equal(batch.tokens[row, length:length + G], batch.response[row])
        n = int(batch.lengths[row])
        assert float(batch.response_mask[row, length:length + n].sum()) == n == float(batch.response_mask[row].sum())


@pytest.mark.slow  # one more compile; the padding independence is kept fast by the garbage padding above
def test_a_row_equals_the_row_with_an_unpadded_prompt(masters, prompts):
    policy = engine_policy("fp32")
    keys = jax.random.split(jax.random.key(2), len(LENGTHS))
    common = {"config": TINY, "policy": policy, "knobs": KNOBS, "max_new_tokens": G, "eos_id": EOS}
    batch = mixed_rollout(masters, prompts, jnp.asarray(LENGTHS), keys, **common)
    row = int(np.argmin(LENGTHS))
    exact = mixed_rollout(masters, prompts[row:row + 1, :LENGTHS[row]], jnp.asarray(LENGTHS[row:row + 1]),
                          keys[row:row + 1], **common)
    np.testing.assert_array_equal(batch.response[row], exact.response[0])
    np.testing.assert_allclose(batch.response_logprobs[row], exact.response_logprobs[0], atol=1e-6, rtol=0)


# slow: two more programs; the fast gradient test below checks the same re-scoring (aux["logp"] = the
# rollout's log-probs within 1e-6, 0 off the mask) through role_gradients
@pytest.mark.slow
def test_response_mask_logprobs(masters, prompts):
    policy = engine_policy("fp32")
    keys = jax.random.split(jax.random.key(3), len(LENGTHS))
    result = mixed_rollout(masters, prompts, jnp.asarray(LENGTHS), keys, config=TINY, policy=policy, knobs=KNOBS,
                           max_new_tokens=G, eos_id=EOS)
    logp = logprobs_of(masters, result.tokens, result.response_mask, config=TINY, policy=policy)
    # the training engine re-scores the rollout's own tokens: same kernels in f32
    np.testing.assert_allclose(logp, result.logprobs, atol=1e-6, rtol=0)
    assert np.all(np.asarray(logp)[np.asarray(result.response_mask) == 0] == 0)
    # with one prompt length for every row it is token_logprobs at columns P..
    same = mixed_rollout(masters, prompts, jnp.full((len(LENGTHS),), P), keys, config=TINY, policy=policy,
                         knobs=KNOBS, max_new_tokens=G, eos_id=EOS)
    full = logprobs_of(masters, same.tokens, same.response_mask, config=TINY, policy=policy)
    plain = jax.jit(token_logprobs, static_argnames=("prompt_length", "config", "policy"))(
        masters, same.tokens, prompt_length=P, config=TINY, policy=policy)
    np.testing.assert_allclose(full[:, P:], plain * same.mask, atol=1e-6, rtol=0)


def test_mixed_rollout_rejects_bad_input(masters, prompts):
    policy = engine_policy("fp32")
    keys = jax.random.split(jax.random.key(0), len(LENGTHS))
    common = {"config": TINY, "policy": policy, "max_new_tokens": G, "eos_id": EOS}
    with pytest.raises(ValueError, match="prompt_lengths"):
        mixed_rollout(masters, prompts, jnp.array([P, 3, 0, 1]), keys, **common)
    with pytest.raises(ValueError, match="prompt_lengths"):
        mixed_rollout(masters, prompts, jnp.array([P + 1, 3, 2, 1]), keys, **common)
    with pytest.raises(ValueError, match="prompt_lengths"):
        mixed_rollout(masters, prompts, jnp.array([P, 3]), keys, **common)
    with pytest.raises(ValueError, match="keys"):
        mixed_rollout(masters, prompts, jnp.asarray(LENGTHS), keys[:2], **common)
    with pytest.raises(ValueError, match="response_mask"):
        masked_token_logprobs(masters, prompts, jnp.ones((len(LENGTHS), P - 1)), config=TINY, policy=policy)


def _role_batches(masters, policy_name="fp32"):
    """Three role batches (different prompt lengths) from mixed rollouts [4, P] (the fast tests' one
    rollout program), with rewards."""
    policy = engine_policy(policy_name)
    batches = []
    rows = ROWS
    for role in range(3):
        lengths = jax.random.randint(jax.random.key(10 + role), (rows,), 1, P + 1)
        prompts = jax.random.randint(jax.random.key(20 + role), (rows, P), 3, TINY.vocab_size)
        result = mixed_rollout(masters, prompts, lengths, jax.random.split(jax.random.key(30 + role), rows),
                               config=TINY, policy=policy, knobs=KNOBS, max_new_tokens=G, eos_id=EOS)
        rewards = jax.random.uniform(jax.random.key(40 + role), (rows,))
        batches.append((role, result, rewards))
    return batches


def _contributions(batches, coefs):
    """The concatenated update's inputs [12, P + G] (the three role batches, each whitened on its own)
    and each role's contribution at that shape: its own rows, the others' masks zeroed (one program,
    as the MAE loop's zero-mask padding of a micro-batch)."""
    pieces = []
    for role, result, rewards in batches:
        adv = task_relative_advantages(rewards, result.response_mask, jnp.full(rewards.shape, role), 3)
        coef = jnp.full(rewards.shape, coefs[role], jnp.float32)  # strongly typed, as the MAE loop's
        pieces.append((result.tokens, result.response_mask, adv, coef, result.logprobs))
    tokens, mask, adv, coef, mu = (jnp.concatenate(x) for x in zip(*pieces))
    roles = jnp.repeat(jnp.arange(3), ROWS)
    return (tokens, mask, adv, coef, mu), [mask * (roles == r)[:, None] for r in range(3)]


def test_update_equals_sum_of_role_gradients_and_rescores_the_rollout(masters):
    """The gradient of the concatenated role batches = the sum of the three per-role contributions
    (1e-6); the training engine re-scores the rollout's tokens to within 1e-6 (f32, same kernels)."""
    policy = engine_policy("fp32")
    batches = _role_batches(masters)
    (tokens, mask, adv, coef, mu), role_masks = _contributions(batches, (0.005, 0.001, 0.003))
    scaler = init_loss_scale(LossScaleConfig(enabled=False))
    normaliser = jnp.float32(float(mask.sum()))
    common = {"config": TINY, "policy": policy, "clip_eps": 0.2}
    _, aux, single = role_gradients(masters, scaler, tokens, mask, adv, coef, normaliser, mu, **common)
    total, mismatch = None, 0.0
    for role_mask in role_masks:
        _, role_aux, grads = role_gradients(masters, scaler, tokens, role_mask, adv, coef, normaliser, mu, **common)
        total = grads if total is None else jax.tree.map(jnp.add, total, grads)
        mismatch += float(role_aux["abs_diff_sum"])
    for a, b in zip(jax.tree.leaves(total), jax.tree.leaves(single)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(single)) > 1e-4  # not trivially zero
    # response-mask log-probs: the rollout's own, 0 off the mask; the per-role mismatch sums add up
    np.testing.assert_allclose(aux["logp"], mu, atol=1e-6, rtol=0)
    assert np.all(np.asarray(aux["logp"])[np.asarray(mask) == 0] == 0)
    assert mismatch == pytest.approx(float(aux["abs_diff_sum"]), abs=1e-5) and mismatch < 1e-4


@pytest.mark.slow  # separate programs per role-batch shape and the apply; the fast test above: one shape
def test_concatenated_update_equals_sum_of_role_gradients(masters):
    policy = engine_policy("fp32")
    batches = _role_batches(masters)
    coefs = (0.005, 0.001, 0.003)  # per-role entropy coefficients
    scaler = init_loss_scale(LossScaleConfig(enabled=False))
    normaliser = jnp.float32(sum(float(r.response_mask.sum()) for _, r, _ in batches))
    pieces, total = [], None
    for role, result, rewards in batches:
        # each role batch whitened on its own
        adv = task_relative_advantages(rewards, result.response_mask, jnp.full(rewards.shape, role), 3)
        coef = jnp.full(rewards.shape, coefs[role])
        pieces.append((result.tokens, result.response_mask, adv, coef))
        _, _, grads = role_gradients(masters, scaler, result.tokens, result.response_mask, adv, coef, normaliser,
                                     config=TINY, policy=policy, clip_eps=0.2)
        total = grads if total is None else jax.tree.map(jnp.add, total, grads)
    tokens, mask, adv, coef = (jnp.concatenate(x) for x in zip(*pieces))
    _, _, single = role_gradients(masters, scaler, tokens, mask, adv, coef, normaliser, config=TINY, policy=policy,
                                  clip_eps=0.2)
    for a, b in zip(jax.tree.leaves(total), jax.tree.leaves(single)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(single)) > 1e-4  # not trivially zero
    # one apply of the summed gradient = one apply of the concatenated gradient
    tx = adam(1e-3, 1.0, masters)
    opt = tx.init(masters)
    one = apply_gradients(masters, opt, scaler, total, tx=tx)[0]
    two = apply_gradients(masters, opt, scaler, single, tx=tx)[0]
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_role_loss_is_a_token_sum_over_the_global_normaliser():
    logp = jnp.log(jnp.array([[0.5, 0.25, 1.0]]))
    entropy = jnp.array([[1.0, 2.0, 3.0]])
    mask = jnp.array([[1.0, 1.0, 0.0]])
    loss, aux = role_loss(logp, entropy, jnp.array([2.0]), mask, jnp.array([0.1]), jnp.float32(4.0))
    # ratio 1 (on-policy): per token -A - c H; sum over the 2 valid tokens / 4
    assert float(loss) == pytest.approx((-2 - 0.1 * 1.0 - 2 - 0.1 * 2.0) / 4, abs=1e-6)
    assert float(aux["tokens"]) == 2 and float(aux["entropy_sum"]) == 3.0
    with pytest.raises(ValueError, match="role_loss"):
        role_loss(logp, entropy, jnp.array([2.0, 1.0]), mask, jnp.array([0.1]), jnp.float32(4.0))


# slow: half-precision rollout and gradient programs (~20 s); the fp16 loss-scaled RL path stays fast in
# tests/rl/test_rl_smoke.py (fp16-mixed), the gradient / apply split in the fp32 tests here
@pytest.mark.slow
@pytest.mark.parametrize("policy_name", ["fp16-mixed", "bf16-mixed"])
def test_precision_policies_keep_working(masters, policy_name):
    """Mixed-length rollouts and role gradients run in bf16 / fp16 engines (fp16: through the loss scaler)."""
    policy = engine_policy(policy_name)
    batches = _role_batches(masters, policy_name)
    enabled = policy_name == "fp16-mixed"
    ls_cfg = LossScaleConfig(enabled=enabled, initial_scale=2.0**10)
    scaler = init_loss_scale(ls_cfg)
    normaliser = jnp.float32(sum(float(r.response_mask.sum()) for _, r, _ in batches))
    total = None
    for role, result, rewards in batches:
        adv = task_relative_advantages(rewards, result.response_mask, jnp.full(rewards.shape, role), 3)
        _, aux, grads = role_gradients(masters, scaler, result.tokens, result.response_mask, adv,
                                       jnp.full(rewards.shape, 0.001), normaliser, config=TINY, policy=policy,
                                       clip_eps=0.2)
        # the training engine re-scores the rollout's tokens in the same half-precision dtype
        diff = float(jnp.max(jnp.abs(aux["logp"] - result.logprobs)))
        assert diff < 0.1  # (bit-exact on XLA:CPU with these knobs; a GPU shows the gap)
        total = grads if total is None else jax.tree.map(jnp.add, total, grads)
    tx = adam(1e-3, 1.0, masters)
    new, _, new_scaler, finite = apply_gradients(masters, tx.init(masters), scaler, total, tx=tx, loss_scale=ls_cfg)
    assert bool(finite) and int(new_scaler.skipped) == 0
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(new))
    # a non-finite gradient sum is skipped: parameters unchanged, the scale backed off
    bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.inf), total)
    kept, _, backed, finite = apply_gradients(masters, tx.init(masters), scaler, bad, tx=tx, loss_scale=ls_cfg)
    assert not bool(finite) and int(backed.skipped) == 1
    for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(masters)):
        np.testing.assert_array_equal(a, b)
    if enabled:
        assert float(backed.scale) == 2.0**9


# ----------------------------------------------------------------------------------------------------
# Three MAE steps on this model (the fast variant of tests/experiments/test_mae_experiment.py's three
# steps of the tiny preset): the same rollout and gradient programs as the tests above

#: every per-step metric of an MAE step, the ground-truth ones included (none may be missing)
MAE_METRICS = {
    "proposer/reward", "proposer/format", "proposer/has_question", "proposer/gate_pass", "proposer/quality",
    "proposer/judged_difficulty", "proposer/reference_share", "proposer/well_formed", "proposer/true_difficulty",
    "proposer/digits", "proposer/carries", "proposer/kept_well_formed", "solver/reward", "solver/format",
    "solver/true_accuracy", "judge/reward", "judge/accept_rate", "judge/agreement", "judge/false_accept",
    "judge/false_reject", "judge/question_agreement", "buffer/size", "buffer/evolved", "loss", "grad_norm", "finite",
    "loss_scale", "skipped_steps", "wall_s",
    *(f"{role}/{m}" for role in ("proposer", "solver", "judge")
      for m in ("entropy", "length", "adv_mean", "rows", "abs_diff_mean", "k3")),
}


def _setup_and_config(**changes):
    setup = RoleSetup(TINY, TagTokenizer(TOY_VOCAB), TOY_TEMPLATES, ArithmeticDomain())
    cfg = MAEConfig(steps=3, proposer_prompts=4, solver_prompts=8, quality_samples=2, difficulty_samples=2,
                    rollout_rows=ROWS, micro_rows=12, prompt_width=P, max_new_tokens=G, **changes)
    return setup, cfg


def test_three_mae_steps_log_every_metric_and_update_once(masters):
    setup, cfg = _setup_and_config()
    state = init_state(masters, load_seed_questions(default_seed_file()), cfg)
    records = [mae_step(state, setup, cfg) for _ in range(cfg.steps)]
    for index, record in enumerate(records, start=1):
        assert MAE_METRICS <= set(record), MAE_METRICS - set(record)
        assert record["step"] == index and record["finite"] and record["skipped_steps"] == 0
        assert record["proposer/rows"] == 4 and record["solver/rows"] == 8
        assert record["proposer/reference_share"] == 0.5  # include_references 0.5 of 4 prompts
        assert abs(record["solver/adv_mean"]) < 1e-5 and record["solver/abs_diff_mean"] < 1e-5  # f32 engines
    assert state.step == 3
    moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(state.masters), jax.tree.leaves(masters))]
    assert max(moved) > 0  # one update per step changed the weights


def test_a_judge_that_scores_at_random_agrees_with_truth_at_chance(masters):
    """The can-fail control of the judge-agreement metric (fast variant; the study-level one is in
    tests/experiments/test_mae_experiment.py): judge_noise 1 replaces every score by a uniform 1-10
    draw, so on 256 balanced probes agreement must sit at chance whatever the model says."""
    setup, cfg = _setup_and_config(judge_noise=1.0)
    probes = judge_probes(setup.domain, np.random.default_rng(0), 256)
    result = judge_agreement(masters, setup, cfg, probes, jax.random.key(0), rng=np.random.default_rng(1))
    assert abs(result["agreement"] - 0.5) < 0.1, result  # +- ~3 SE of 256 coin flips
    assert abs(result["accept_rate"] - 0.5) < 0.1, result  # scores 6-10 accept: half of 1-10

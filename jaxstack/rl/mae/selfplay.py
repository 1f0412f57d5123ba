"""The Multi-Agent Evolve loop on the RL engines: one policy, three roles, one update per step.

One MAE step (:func:`mae_step`) is three mixed-length rollouts (``engine.mixed_rollout``: the rows of
several roles and templates in one batch, each with its own prompt length):

1. the proposer's prompts (``include_references`` of them with a reference question from the
   evolving dataset) and the solver's prompts on dataset questions;
2. for each proposed question: ``quality_samples`` ``judge_question`` prompts and
   ``difficulty_samples`` solver prompts (the N answers of s_bar);
3. ``judge_answer`` prompts for every solver answer of rollouts 1 and 2.

Rewards follow :mod:`.rewards` (gate, difficulty, format); questions that pass the gate enter the
dataset. Three role batches are trained: the proposer's rows of rollout 1, the solver's rows of
rollout 1 (the difficulty samples of rollout 2 only serve the proposer's reward), and every judge
row (rollouts 2 and 3). Each role batch is whitened on its own (Task-Relative REINFORCE++), each
gives a gradient (``loop.loss_gradients``) normalised by the token count of the whole concatenated
update, and the sum is applied once (``loop.apply_gradients``): the same update as one step on the
concatenated batch. One on-policy minibatch per step: pi_old is the training engine's log-prob at
the start of the step (its stop-gradient), so the PPO ratio is 1 and the clip inactive.

Two controls share the machinery: ``freeze_proposer`` (the proposer's rollouts come from the frozen
starting weights and it is not trained) and ``judge_noise`` (each judge score is replaced, with this
probability, by a uniform draw from 1-10 before any reward is computed; 1.0 is a judge that scores
at random, the can-fail control). :func:`grpo_step` is the upper bound: solver-only GRPO on the true
checker.

Ground truth (``domain``) is read only for the logged metrics and by :func:`grpo_step`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxstack.models.configs import LlamaConfig
from jaxstack.precision import LossScaleConfig, LossScaleState, init_loss_scale
from jaxstack.rl import engine as engine_lib
from jaxstack.rl.loop import apply_gradients, loss_gradients
from jaxstack.rl.losses import group_advantages
from jaxstack.rl.mae.buffer import QuestionBuffer
from jaxstack.rl.mae.domain import (
    DEMO_SHARES,
    ArithmeticDomain,
    DemoNoise,
    answer_of,
    role_demos,
)
from jaxstack.rl.mae.protocol import (
    ROLE_ID,
    ROLES,
    TagTokenizer,
    Templates,
    first_tag,
    format_score,
    normalise_score,
    parse_score,
)
from jaxstack.rl.mae.rewards import (
    QUALITY_GATE,
    WEIGHTINGS,
    judge_reward,
    proposer_reward,
    role_loss,
    solver_reward,
    task_relative_advantages,
)
from jaxstack.rl.metrics import mismatch_metrics
from jaxstack.rl.policy import engine_policy
from jaxstack.train.optimizers import OptimizerConfig, make_optimizer

MODES = ("mae", "grpo")
#: a judge accepts an answer when its normalised score is at least this (score >= 5.5 of 1-10)
ACCEPT_THRESHOLD = 0.5


@dataclasses.dataclass(frozen=True)
class MAEConfig:
    """One self-play (or GRPO) run.

    proposer_prompts / solver_prompts: rows of rollout 1; quality_samples: ``judge_question`` samples
    per question (q); difficulty_samples: solver answers per question (N, s_bar); include_references:
    share of proposer prompts with a reference (0 / 0.5 / 1); proposer_with_answer: the answer-
    generation proposer variants; entropy_coef: (proposer, solver, judge) coefficients; weighting:
    ``"token"`` or ``"sequence"`` whitening; train_policy / rollout_policy / knobs / loss_scale: the
    engines (``rl.loop.RLConfig``'s meaning); rollout_rows: rows per rollout call (phases are
    chunked and padded to it, so every call has one shape); prompt_width / max_new_tokens: P and G;
    max_question_tokens / max_answer_tokens: a generated question / answer is cut to this many
    tokens before it enters another role's prompt; grpo_group: GRPO group size (``mode="grpo"``);
    judge_noise: probability that a judge score is replaced by a uniform 1-10 draw (1.0 = random
    judge); micro_rows: rows per gradient call (a role batch is split and its gradients summed; None
    = one call per role batch).
    """

    mode: str = "mae"
    steps: int = 30
    proposer_prompts: int = 16
    solver_prompts: int = 48
    quality_samples: int = 2
    difficulty_samples: int = 2
    include_references: float = 0.5
    proposer_with_answer: bool = False
    quality_gate: float = QUALITY_GATE
    weighting: str = "token"
    entropy_coef: tuple[float, float, float] = (0.001, 0.001, 0.001)
    freeze_proposer: bool = False
    judge_noise: float = 0.0
    micro_rows: int | None = None
    grpo_group: int = 4
    learning_rate: float = 1e-3
    grad_clip: float | None = 1.0
    clip_eps: float = 0.2
    train_policy: str = "fp32"
    rollout_policy: str | None = None
    knobs: str = "kv_cache"
    loss_scale: bool | None = None
    rollout_rows: int = 32
    prompt_width: int = 20
    max_new_tokens: int = 16
    max_question_tokens: int = 7
    max_answer_tokens: int = 5
    max_evolved: int | None = 512
    seed: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mae.mode: expected one of {list(MODES)}, got {self.mode!r}")
        if not 0.0 <= self.judge_noise <= 1.0:
            raise ValueError(f"mae.judge_noise: expected a probability in [0, 1], got {self.judge_noise}")
        if self.micro_rows is not None and self.micro_rows <= 0:
            raise ValueError(f"mae.micro_rows: expected a positive integer or None, got {self.micro_rows}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"mae.weighting: expected one of {list(WEIGHTINGS)}, got {self.weighting!r}")
        for name in ("steps", "proposer_prompts", "solver_prompts", "quality_samples", "difficulty_samples",
                     "rollout_rows", "prompt_width", "max_new_tokens", "max_question_tokens", "max_answer_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"mae.{name}: expected a positive integer, got {getattr(self, name)!r}")
        if not 0.0 <= self.include_references <= 1.0:
            raise ValueError(f"mae.include_references: expected a fraction in [0, 1], got {self.include_references}")
        if not 0.0 <= self.quality_gate <= 1.0:
            raise ValueError(f"mae.quality_gate: expected a value in [0, 1], got {self.quality_gate}")
        if len(self.entropy_coef) != len(ROLES) or any(c < 0 for c in self.entropy_coef):
            raise ValueError(f"mae.entropy_coef: expected {len(ROLES)} non-negative coefficients "
                             f"{ROLES}, got {self.entropy_coef}")
        if self.mode == "grpo" and (self.grpo_group < 2 or self.solver_prompts % self.grpo_group):
            raise ValueError(f"mae.grpo_group: expected >= 2 and dividing solver_prompts={self.solver_prompts}, "
                             f"got {self.grpo_group}")
        if self.learning_rate <= 0:
            raise ValueError(f"mae.learning_rate: expected > 0, got {self.learning_rate}")
        engine_lib.get_knobs(self.knobs)
        self.policies()

    def policies(self):
        return engine_policy(self.train_policy), engine_policy(self.rollout_policy or self.train_policy)

    def loss_scale_config(self) -> LossScaleConfig:
        train, _ = self.policies()
        enabled = (train.compute_dtype == jnp.float16) if self.loss_scale is None else self.loss_scale
        return LossScaleConfig(enabled=bool(enabled))


@dataclasses.dataclass(frozen=True)
class RoleSetup:
    """What the roles are played with: the model's config, a tokenizer (``protocol.TagTokenizer`` or
    ``TextTokenizer``), the prompt templates and, for the toy, the verifiable domain (None: no ground
    truth, e.g. open-ended seed questions; then the ground-truth metrics are absent)."""

    model: LlamaConfig
    tokenizer: Any
    templates: Templates
    domain: ArithmeticDomain | None = None

    def __post_init__(self):
        # a sampled id the tag tokenizer cannot name would decode to text it cannot encode again
        if isinstance(self.tokenizer, TagTokenizer) and self.model.vocab_size != self.tokenizer.vocab_size:
            raise ValueError(f"setup.model.vocab_size: expected the tag tokenizer's {self.tokenizer.vocab_size} "
                             f"tokens, got {self.model.vocab_size}")


@dataclasses.dataclass
class MAEState:
    """What changes during a run: float32 master Params, optimizer and loss-scaler state, the evolving
    dataset, the frozen proposer's weights (``freeze_proposer``), the host RNG and the PRNG key."""

    masters: nnx.State
    tx: optax.GradientTransformation
    opt_state: Any
    scaler: LossScaleState
    buffer: QuestionBuffer
    frozen: nnx.State | None
    rng: np.random.Generator
    key: jax.Array
    step: int = 0


def adam(learning_rate: float, clip_norm: float | None, params) -> optax.GradientTransformation:
    """Adam at a constant learning rate (no warmup, no weight decay), optionally after global-norm
    clipping (the RL loop's optimizer: ``train.optimizers.make_optimizer`` with those settings)."""
    config = OptimizerConfig(learning_rate=learning_rate, schedule="constant", warmup_steps=0, b2=0.999,
                             weight_decay=0.0, clip_norm=clip_norm)
    return make_optimizer(config, 1, params)


def init_state(masters: nnx.State, seeds: Sequence[str], cfg: MAEConfig) -> MAEState:
    """The state at step 0 from float32 ``masters`` and the seed questions."""
    tx = adam(cfg.learning_rate, cfg.grad_clip, masters)
    return MAEState(masters=masters, tx=tx, opt_state=tx.init(masters), scaler=init_loss_scale(cfg.loss_scale_config()),
                    buffer=QuestionBuffer(seeds, max_evolved=cfg.max_evolved),
                    frozen=masters if cfg.freeze_proposer else None, rng=np.random.default_rng(cfg.seed),
                    key=jax.random.key(cfg.seed))


# ----------------------------------------------------------------------------------------------------
# Generation


@dataclasses.dataclass
class Generated:
    """Decoded responses of one phase and the arrays the update needs (numpy). texts: n strings;
    tokens, response_mask, logprobs (log mu): [n, P + G]; lengths: [n] response tokens."""

    texts: list[str]
    tokens: np.ndarray
    response_mask: np.ndarray
    logprobs: np.ndarray
    lengths: np.ndarray

    def rows(self, start: int, stop: int) -> Generated:
        return Generated(self.texts[start:stop], self.tokens[start:stop], self.response_mask[start:stop],
                         self.logprobs[start:stop], self.lengths[start:stop])


def clip_text(tokenizer, text: str, max_tokens: int) -> str:
    """``text`` cut to its first ``max_tokens`` tokens (a generated question or answer entering another
    role's prompt)."""
    ids = tokenizer.encode(text)
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


def encode_prompts(tokenizer, texts: Sequence[str], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded prompt ids [n, width] int32 and lengths [n]. Raises ValueError (naming
    ``prompt_width``) for a prompt longer than ``width``."""
    ids = np.full((len(texts), width), tokenizer.pad_id, np.int32)
    lengths = np.zeros((len(texts),), np.int32)
    for i, text in enumerate(texts):
        encoded = tokenizer.encode(text)
        if not 0 < len(encoded) <= width:
            raise ValueError(f"prompt_width: a prompt of {len(encoded)} tokens does not fit P = {width}: {text!r}")
        ids[i, :len(encoded)] = encoded
        lengths[i] = len(encoded)
    return ids, lengths


@functools.partial(jax.jit, static_argnames=("rows",))
def _row_keys(key, start, *, rows: int):
    return jax.random.split(jax.random.fold_in(key, start), rows)


def generate(masters, setup: RoleSetup, cfg: MAEConfig, texts: Sequence[str], key: jax.Array, *,
             policy=None) -> Generated:
    """Rolls ``texts`` out in chunks of ``cfg.rollout_rows`` (the last padded with copies of the first
    prompt, dropped after), each row with its own key. Returns the decoded responses and arrays."""
    if not texts:
        raise ValueError("texts: nothing to generate")
    _, rollout_policy = cfg.policies()
    policy = rollout_policy if policy is None else policy
    knobs = engine_lib.get_knobs(cfg.knobs)
    n, rows = len(texts), cfg.rollout_rows
    padded = list(texts) + [texts[0]] * (-n % rows)
    prompts, lengths = encode_prompts(setup.tokenizer, padded, cfg.prompt_width)
    parts = []
    for start in range(0, len(padded), rows):
        keys = _row_keys(key, start, rows=rows)  # row keys of this chunk: one compile per chunk size
        result = engine_lib.mixed_rollout(masters, jnp.asarray(prompts[start:start + rows]),
                                          jnp.asarray(lengths[start:start + rows]), keys,
                                          config=setup.model, policy=policy, knobs=knobs,
                                          max_new_tokens=cfg.max_new_tokens, eos_id=setup.tokenizer.eos_id)
        parts.append(jax.device_get((result.tokens, result.response_mask, result.logprobs, result.response,
                                     result.lengths)))
    tokens, mask, logprobs, response, out_lengths = (np.concatenate(x)[:n] for x in zip(*parts))
    decoded = [setup.tokenizer.decode(response[i, :out_lengths[i]]) for i in range(n)]
    return Generated(decoded, tokens, mask, logprobs, out_lengths)


# ----------------------------------------------------------------------------------------------------
# The update: one gradient per role batch, one apply


@functools.partial(jax.jit, static_argnames=("config", "policy", "clip_eps"))
def role_gradients(masters, scaler, tokens, mask, advantages, entropy_coef, normaliser, rollout_logprobs=None, *,
                   config, policy, clip_eps):
    """One role batch's loss, aux and unscaled gradient. tokens, mask: [B, T]; advantages,
    entropy_coef: [B]; normaliser: the concatenated update's token count; rollout_logprobs: [B, T]
    log mu of the rollout engine (optional). aux also holds the stop-gradient log-probs ``logp``
    [B, T] (log pi_old of the step) and, with ``rollout_logprobs``, the training-vs-rollout mismatch
    as token sums that add up over batches (``abs_diff_sum``, ``k3_sum``; ``rl.metrics``' per-token
    mean |log pi - log mu| and k3 times the token count)."""

    def loss_of(params):
        logp, entropy = engine_lib.masked_token_logprobs(params, tokens, mask, config=config, policy=policy,
                                                         with_entropy=True)
        loss, aux = role_loss(logp, entropy, advantages, mask, entropy_coef, normaliser, clip_eps=clip_eps)
        aux = {**aux, "logp": jax.lax.stop_gradient(logp)}
        if rollout_logprobs is not None:
            mismatch = mismatch_metrics(aux["logp"], rollout_logprobs, mask, clip_eps)
            count = jnp.maximum(jnp.sum(mask), 1.0)
            aux["abs_diff_sum"] = mismatch["abs_diff_mean"] * count
            aux["k3_sum"] = mismatch["k3"] * count
        return loss, aux

    return loss_gradients(loss_of, masters, scaler)


@jax.jit
def _add_trees(a, b):
    return jax.tree.map(jnp.add, a, b)


@functools.partial(jax.jit, static_argnames=("num_roles", "weighting"))
def _advantages(rewards, mask, roles, *, num_roles, weighting):
    return task_relative_advantages(rewards, mask, roles, num_roles, weighting=weighting)


@functools.partial(jax.jit, static_argnames=("tx", "loss_scale"))
def _apply(masters, opt_state, scaler, grads, *, tx, loss_scale):
    return (*apply_gradients(masters, opt_state, scaler, grads, tx=tx, loss_scale=loss_scale),
            optax.tree.norm(grads))


@dataclasses.dataclass
class RoleBatch:
    """One role's training rows: tokens / response_mask / logprobs (mu) [B, T], rewards [B]."""

    role: str
    tokens: np.ndarray
    response_mask: np.ndarray
    logprobs: np.ndarray
    rewards: np.ndarray
    advantages: np.ndarray | None = None


def _batch(role: str, generated: Generated, rewards, valid=None) -> RoleBatch:
    mask = generated.response_mask.astype(np.float32)
    if valid is not None:
        mask = mask * np.asarray(valid, np.float32)[:, None]
    return RoleBatch(role, generated.tokens, mask, generated.logprobs * mask, np.asarray(rewards, np.float32))


def update(state: MAEState, setup: RoleSetup, cfg: MAEConfig, batches: Sequence[RoleBatch], *,
           advantages: str = "task_relative") -> dict[str, float]:
    """Whitens each role batch on its own (or takes ``batch.advantages`` as given when ``advantages`` is
    "given"), takes one gradient per batch and applies their sum once. Returns the metrics."""
    train_policy, _ = cfg.policies()
    ls_cfg = cfg.loss_scale_config()
    batches = [b for b in batches if b.response_mask.sum() > 0]
    if not batches:
        return {"loss": 0.0, "grad_norm": 0.0, "finite": True}
    if advantages == "task_relative":
        rewards = np.concatenate([b.rewards for b in batches])
        masks = np.concatenate([b.response_mask for b in batches])
        roles = np.concatenate([np.full(len(b.rewards), ROLE_ID[b.role]) for b in batches])
        adv = np.asarray(_advantages(rewards, masks, roles, num_roles=len(ROLES), weighting=cfg.weighting))
        offset = 0
        for b in batches:
            b.advantages = adv[offset:offset + len(b.rewards)]
            offset += len(b.rewards)
    normaliser = jnp.float32(max(sum(float(b.response_mask.sum()) for b in batches), 1.0))
    total, metrics, loss = None, {}, 0.0
    for b in batches:
        coef = np.full(len(b.rewards), cfg.entropy_coef[ROLE_ID[b.role]], np.float32)
        rows = len(b.rewards) if cfg.micro_rows is None else cfg.micro_rows
        pad = -len(b.rewards) % rows  # zero-mask rows: one shape per gradient call, no contribution
        arrays = [np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
                  for x in (b.tokens, b.response_mask, np.asarray(b.advantages, np.float32), coef,
                            b.logprobs.astype(np.float32))]
        sums = {"entropy_sum": 0.0, "abs_diff_sum": 0.0, "k3_sum": 0.0}
        for start in range(0, len(arrays[0]), rows):
            tokens, mask, adv, c, mu = (jnp.asarray(x[start:start + rows]) for x in arrays)
            part_loss, aux, grads = role_gradients(state.masters, state.scaler, tokens, mask, adv, c, normaliser, mu,
                                                   config=setup.model, policy=train_policy, clip_eps=cfg.clip_eps)
            total = grads if total is None else _add_trees(total, grads)
            loss += float(part_loss)
            for name in sums:
                sums[name] += float(aux[name])
        mask = b.response_mask
        tokens = max(float(mask.sum()), 1.0)
        valid = mask.sum(1) > 0
        metrics.update({
            f"{b.role}/entropy": sums["entropy_sum"] / tokens,
            f"{b.role}/length": float(mask.sum(1)[valid].mean()),
            f"{b.role}/adv_mean": float(np.sum(b.advantages * mask.sum(1)) / tokens) if cfg.weighting == "token"
            else float(b.advantages[valid].mean()),
            f"{b.role}/rows": int(valid.sum()),
            f"{b.role}/abs_diff_mean": sums["abs_diff_sum"] / tokens,
            f"{b.role}/k3": sums["k3_sum"] / tokens,
        })
    masters, opt_state, scaler, finite, grad_norm = _apply(state.masters, state.opt_state, state.scaler, total,
                                                           tx=state.tx, loss_scale=ls_cfg)
    state.masters, state.opt_state, state.scaler = masters, opt_state, scaler
    metrics.update({"loss": loss, "grad_norm": float(grad_norm), "finite": bool(finite),
                    "loss_scale": float(scaler.scale), "skipped_steps": int(scaler.skipped)})
    return metrics


# ----------------------------------------------------------------------------------------------------
# One MAE step


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def mae_step(state: MAEState, setup: RoleSetup, cfg: MAEConfig) -> dict[str, Any]:
    """One self-play step (module docstring): three rollouts, the rewards, one update. Returns the
    step's metrics (ground-truth ones only when ``setup.domain`` is set)."""
    if cfg.mode != "mae":
        raise ValueError(f"mae.mode: mae_step runs mode 'mae', got {cfg.mode!r}")
    start = time.perf_counter()
    tok, templates, domain, rng = setup.tokenizer, setup.templates, setup.domain, state.rng
    n_prop, n_solve = cfg.proposer_prompts, cfg.solver_prompts
    n_q, n_d = cfg.quality_samples, cfg.difficulty_samples
    state.key, k1, k2, k3, k_frozen = jax.random.split(state.key, 5)

    # 1: proposer and solver
    references = state.buffer.references(rng, n_prop, cfg.include_references)
    proposer_texts = [templates.proposer_prompt(None if r is None else clip_text(tok, r, cfg.max_question_tokens),
                                                with_answer=cfg.proposer_with_answer) for r in references]
    solve_questions = [clip_text(tok, q, cfg.max_question_tokens) for q in state.buffer.sample(rng, n_solve)]
    solver_texts = [templates.solver_prompt(q) for q in solve_questions]
    if state.frozen is not None:
        proposed = generate(state.frozen, setup, cfg, proposer_texts, k_frozen)
        solved = generate(state.masters, setup, cfg, solver_texts, k1)
    else:
        both = generate(state.masters, setup, cfg, proposer_texts + solver_texts, k1)
        proposed, solved = both.rows(0, n_prop), both.rows(n_prop, n_prop + n_solve)
    questions = [first_tag(text, "question") for text in proposed.texts]
    questions = [None if q is None else clip_text(tok, q, cfg.max_question_tokens) for q in questions]

    # 2: the judge on each question's quality, N solver answers to it
    quality_texts = [templates.judge_question_prompt(q or "") for q in questions for _ in range(n_q)]
    difficulty_texts = [templates.solver_prompt(q or "") for q in questions for _ in range(n_d)]
    second = generate(state.masters, setup, cfg, quality_texts + difficulty_texts, k2)
    quality_out, difficulty_out = second.rows(0, n_prop * n_q), second.rows(n_prop * n_q, len(second.texts))
    has_question = np.array([q is not None for q in questions])

    # 3: the judge on every answer
    solve_answers = [clip_text(tok, answer_of(t), cfg.max_answer_tokens) for t in solved.texts]
    difficulty_answers = [clip_text(tok, answer_of(t), cfg.max_answer_tokens) for t in difficulty_out.texts]
    difficulty_questions = [q or "" for q in questions for _ in range(n_d)]
    answer_texts = ([templates.judge_answer_prompt(q, a) for q, a in zip(solve_questions, solve_answers)]
                    + [templates.judge_answer_prompt(q, a) for q, a in zip(difficulty_questions, difficulty_answers)])
    judged = generate(state.masters, setup, cfg, answer_texts, k3)

    # scores (raw 1-10 or None); with judge_noise some are replaced by uniform draws (the controls)
    quality_scores = corrupt_scores([parse_score(t) for t in quality_out.texts], cfg.judge_noise, rng)
    answer_scores = corrupt_scores([parse_score(t) for t in judged.texts], cfg.judge_noise, rng)
    solve_scores, difficulty_scores = answer_scores[:n_solve], answer_scores[n_solve:]

    # rewards
    proposals = [proposer_reward(proposed.texts[i], quality_scores[i * n_q:(i + 1) * n_q],
                                 difficulty_scores[i * n_d:(i + 1) * n_d], gate=cfg.quality_gate)
                 for i in range(n_prop)]
    for p in proposals:
        if p.keep:
            state.buffer.add(p.question, state.step)
    solver_rewards = [solver_reward(t, s) for t, s in zip(solved.texts, solve_scores)]
    quality_valid = np.repeat(has_question, n_q)
    answer_valid = np.concatenate([np.ones(n_solve, bool), np.repeat(has_question, n_d)])
    judge_rows = Generated(quality_out.texts + judged.texts, np.concatenate([quality_out.tokens, judged.tokens]),
                           np.concatenate([quality_out.response_mask, judged.response_mask]),
                           np.concatenate([quality_out.logprobs, judged.logprobs]),
                           np.concatenate([quality_out.lengths, judged.lengths]))
    judge_rewards = [judge_reward(t) for t in judge_rows.texts]

    batches = [_batch("solver", solved, solver_rewards),
               _batch("judge", judge_rows, judge_rewards, np.concatenate([quality_valid, answer_valid]))]
    if state.frozen is None:
        batches.insert(0, _batch("proposer", proposed, [p.reward for p in proposals]))
    metrics = update(state, setup, cfg, batches)
    state.step += 1

    record: dict[str, Any] = {"step": state.step}
    record.update({
        "proposer/reward": float(np.mean([p.reward for p in proposals])),
        "proposer/format": float(np.mean([p.format for p in proposals])),
        "proposer/has_question": float(has_question.mean()),
        "proposer/gate_pass": float(np.mean([p.keep for p in proposals])),
        "proposer/quality": _mean(p.quality for p in proposals if p.question is not None),
        "proposer/judged_difficulty": _mean(p.difficulty for p in proposals),
        "proposer/reference_share": float(np.mean([r is not None for r in references])),
        "solver/reward": float(np.mean(solver_rewards)),
        "solver/format": float(np.mean([format_score(t, "answer") for t in solved.texts])),
        "judge/reward": float(np.mean([r for r, v in zip(judge_rewards, np.concatenate([quality_valid, answer_valid]))
                                       if v])),
        "judge/accept_rate": float(np.mean([_accepts(s) for s in solve_scores])),
        "buffer/size": len(state.buffer),
        "buffer/evolved": len(state.buffer.evolved),
    })
    if domain is not None:
        record.update(_truth_metrics(domain, questions, proposals, solve_questions, solve_answers, solve_scores,
                                     difficulty_answers, n_d, quality_scores, n_q, cfg))
    record.update(metrics)
    record["wall_s"] = time.perf_counter() - start
    return record


def corrupt_scores(scores: Sequence[int | None], noise: float, rng: np.random.Generator) -> list[int | None]:
    """Each score replaced, with probability ``noise``, by a uniform draw from 1-10 (1.0: a judge that
    scores at random). ``noise = 0`` returns the scores unchanged and draws nothing."""
    if noise <= 0:
        return list(scores)
    draws = rng.integers(1, 11, size=len(scores))
    replace = rng.random(len(scores)) < noise
    return [int(d) if r else s for s, d, r in zip(scores, draws, replace)]


def _accepts(score: int | None) -> bool:
    return normalise_score(score) >= ACCEPT_THRESHOLD


def _truth_metrics(domain, questions, proposals, solve_questions, solve_answers, solve_scores, difficulty_answers,
                   n_d, quality_scores, n_q, cfg) -> dict[str, Any]:
    """Ground-truth diagnostics of one step (never fed back to the learner)."""
    correct = np.array([domain.is_correct(q, a) for q, a in zip(solve_questions, solve_answers)])
    accepts = np.array([_accepts(s) for s in solve_scores])
    well = [domain.is_well_formed(q) for q in questions]
    true_solve = []
    digits, carries = [], []
    for i, q in enumerate(questions):
        if well[i]:
            answers = difficulty_answers[i * n_d:(i + 1) * n_d]
            true_solve.append(np.mean([domain.is_correct(q, a) for a in answers]))
            features = domain.difficulty(q)
            digits.append(features["digits"])
            carries.append(features["carries"])
    passed = [p.keep for p in proposals]
    gate_decisions = [np.mean([_accepts_quality(s, cfg) for s in quality_scores[i * n_q:(i + 1) * n_q]])
                      for i in range(len(questions))]
    has = [q is not None for q in questions]
    quality_agree = [(g >= 0.5) == w for g, w, h in zip(gate_decisions, well, has) if h]
    return {
        "solver/true_accuracy": float(correct.mean()),
        "judge/agreement": float(np.mean(accepts == correct)),
        "judge/false_accept": float(np.mean(accepts & ~correct)),
        "judge/false_reject": float(np.mean(~accepts & correct)),
        "judge/question_agreement": _mean(quality_agree),
        "proposer/well_formed": float(np.mean(well)),
        "proposer/true_difficulty": None if not true_solve else float(1.0 - np.mean(true_solve)),
        "proposer/digits": _mean(digits),
        "proposer/carries": _mean(carries),
        "proposer/kept_well_formed": _mean(w for w, p in zip(well, passed) if p),
    }


def _accepts_quality(score, cfg: MAEConfig) -> bool:
    return normalise_score(score) >= cfg.quality_gate


# ----------------------------------------------------------------------------------------------------
# The upper bound: solver GRPO on the true checker


def grpo_step(state: MAEState, setup: RoleSetup, cfg: MAEConfig) -> dict[str, Any]:
    """One solver-only GRPO step with the *true* checker's reward (1 = correct): fresh ID training
    questions from the domain (the labels an upper bound may use), ``grpo_group`` samples each,
    group-relative advantages, the same loss and update path as MAE."""
    if setup.domain is None:
        raise ValueError("setup.domain: GRPO on the true checker needs a verifiable domain")
    start = time.perf_counter()
    domain, rng = setup.domain, state.rng
    state.key, key = jax.random.split(state.key)
    questions = np.repeat(domain.questions(rng, cfg.solver_prompts // cfg.grpo_group), cfg.grpo_group).tolist()
    solved = generate(state.masters, setup, cfg, [setup.templates.solver_prompt(q) for q in questions], key)
    answers = [answer_of(t) for t in solved.texts]
    rewards = np.array([float(domain.is_correct(q, a)) for q, a in zip(questions, answers)], np.float32)
    batch = _batch("solver", solved, rewards)
    batch.advantages = np.asarray(group_advantages(rewards, cfg.grpo_group))
    metrics = update(state, setup, cfg, [batch], advantages="given")
    state.step += 1
    return {"step": state.step, "solver/reward": float(rewards.mean()), "solver/true_accuracy": float(rewards.mean()),
            **metrics, "wall_s": time.perf_counter() - start}


def step(state: MAEState, setup: RoleSetup, cfg: MAEConfig) -> dict[str, Any]:
    """One step of ``cfg.mode``."""
    return mae_step(state, setup, cfg) if cfg.mode == "mae" else grpo_step(state, setup, cfg)


# ----------------------------------------------------------------------------------------------------
# SFT on noisy role demonstrations, and evaluation against ground truth


def demo_batch(setup: RoleSetup, demos: Sequence[tuple[str, str]], width: int,
               max_new_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forcing rows [n, width + max_new_tokens] (prompt, response + EOS, right after it) and the
    response mask (1 on the response and its EOS)."""
    tok = setup.tokenizer
    total = width + max_new_tokens
    tokens = np.full((len(demos), total), tok.pad_id, np.int32)
    mask = np.zeros((len(demos), total), np.float32)
    for i, (prompt, response) in enumerate(demos):
        p, r = tok.encode(prompt), tok.encode(response) + [tok.eos_id]
        if len(p) > width or len(r) > max_new_tokens:
            raise ValueError(f"demos: prompt {len(p)} / response {len(r)} tokens exceed P = {width} / "
                             f"G = {max_new_tokens}: {prompt!r} -> {response!r}")
        tokens[i, :len(p)] = p
        tokens[i, len(p):len(p) + len(r)] = r
        mask[i, len(p):len(p) + len(r)] = 1.0
    return tokens, mask


@functools.partial(jax.jit, static_argnames=("config", "policy", "tx"))
def _sft_update(masters, opt_state, tokens, mask, *, config, policy, tx):
    def loss_of(params):
        logp = engine_lib.masked_token_logprobs(params, tokens, mask, config=config, policy=policy)
        return -jnp.sum(logp * mask) / jnp.maximum(jnp.sum(mask), 1.0), None

    scaler = init_loss_scale(LossScaleConfig(enabled=False))
    loss, _, grads = loss_gradients(loss_of, masters, scaler)
    masters, opt_state, _, _ = apply_gradients(masters, opt_state, scaler, grads, tx=tx)
    return masters, opt_state, loss


def sft_roles(masters, setup: RoleSetup, cfg: MAEConfig, *, steps: int, batch_size: int, learning_rate: float,
              noise: DemoNoise, seed: int, eval_every: int = 0, eval_questions: Sequence[str] = (),
              target: tuple[float, float] | None = None, progress=None) -> tuple[nnx.State, list[dict]]:
    """Teaches the three roles from noisy demonstrations (float32, Adam). With ``eval_every`` and
    ``eval_questions``, evaluates the solver every ``eval_every`` steps and stops at the first
    evaluation whose accuracy lies in ``target`` (the base should be able to improve). Returns
    (masters, log of {step, loss[, accuracy]})."""
    if setup.domain is None:
        raise ValueError("setup.domain: role demonstrations need the toy domain")
    tx = adam(learning_rate, None, masters)
    opt_state = tx.init(masters)
    rng = np.random.default_rng(seed)
    policy = engine_policy("fp32")
    log = []
    shares = dict(DEMO_SHARES)
    if not cfg.proposer_with_answer:  # the answer-generation variants only when the run uses them
        shares.pop("proposer_answer")
    for index in range(1, steps + 1):
        demos = role_demos(setup.domain, rng, batch_size, noise, setup.templates, shares)
        tokens, mask = demo_batch(setup, demos, cfg.prompt_width, cfg.max_new_tokens)
        masters, opt_state, loss = _sft_update(masters, opt_state, jnp.asarray(tokens), jnp.asarray(mask),
                                               config=setup.model, policy=policy, tx=tx)
        if eval_every and eval_questions and (index % eval_every == 0 or index == steps):
            accuracy = solver_accuracy(masters, setup, cfg, eval_questions, jax.random.key(seed + index))["accuracy"]
            log.append({"step": index, "loss": float(loss), "accuracy": accuracy})
            if progress is not None:
                progress(log[-1])
            if target is not None and target[0] <= accuracy <= target[1]:
                break
        elif index == steps:
            log.append({"step": index, "loss": float(loss)})
    return masters, log


def solver_accuracy(masters, setup: RoleSetup, cfg: MAEConfig, questions: Sequence[str], key) -> dict[str, Any]:
    """Ground-truth accuracy of one T = 1 sample per question (fp32 rollout). Returns {accuracy,
    format (share with an <answer> pair), correct: per-question bools}."""
    out = generate(masters, setup, cfg, [setup.templates.solver_prompt(q) for q in questions], key,
                   policy=engine_policy("fp32"))
    correct = [setup.domain.is_correct(q, answer_of(t)) for q, t in zip(questions, out.texts)]
    return {"accuracy": float(np.mean(correct)), "format": float(np.mean([first_tag(t, "answer") is not None
                                                                           for t in out.texts])),
            "correct": correct}


def judge_agreement(masters, setup: RoleSetup, cfg: MAEConfig, probes: Sequence[tuple[str, str, bool]], key, *,
                    rng: np.random.Generator | None = None) -> dict[str, float]:
    """The judge's agreement with ground truth on (question, answer, answer is correct) probes: it
    accepts an answer when its normalised score is >= 0.5. The scores go through ``cfg.judge_noise``
    as in training (``rng`` draws the replacements). Returns {agreement, accept_rate, false_accept,
    false_reject}."""
    out = generate(masters, setup, cfg, [setup.templates.judge_answer_prompt(q, a) for q, a, _ in probes], key,
                   policy=engine_policy("fp32"))
    rng = np.random.default_rng(0) if rng is None else rng
    scores = corrupt_scores([parse_score(t) for t in out.texts], cfg.judge_noise, rng)
    accepts = np.array([_accepts(s) for s in scores])
    truth = np.array([c for _, _, c in probes])
    return {"agreement": float(np.mean(accepts == truth)), "accept_rate": float(accepts.mean()),
            "false_accept": float(np.mean(accepts & ~truth)), "false_reject": float(np.mean(~accepts & truth))}


def judge_probes(domain: ArithmeticDomain, rng: np.random.Generator, n: int) -> list[tuple[str, str, bool]]:
    """n balanced probes on held-out ID questions: half with the true answer, half with a wrong one."""
    out = []
    for i, q in enumerate(domain.questions(rng, n, held_out=True)):
        truth = domain.truth(q)
        right = i % 2 == 0
        out.append((q, truth if right else domain.wrong_answer(rng, truth), right))
    return out

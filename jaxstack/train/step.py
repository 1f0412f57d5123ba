"""The training step: a pure function of ``(graphdef, state, batch)``.

``TrainState`` holds everything that changes during training (parameters, optimizer state, step,
RNG key data) as one pytree, so the step can be jitted, sharded and checkpointed as a unit. The
model's graph definition and the optax transformation are static (closed over, not traced).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from jaxstack.precision import (
    LossScaleConfig,
    LossScaleState,
    all_finite,
    init_loss_scale,
    scale_loss,
    select_tree,
    unscale_grads,
    update_loss_scale,
)


@struct.dataclass
class TrainState:
    """step: int32 scalar; params: nnx.State of Params; opt_state: optax state; rng: uint32 key data [2];
    loss_scale: the dynamic loss scaler's state (enabled for float16 compute, else a no-op with S = 1)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    loss_scale: LossScaleState


def split_model(model: nnx.Module):
    """(graphdef, params). Raises if the model holds state other than Params (not supported here)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError(
            "model: holds non-Param state (e.g. BatchStat or RNG counters); the train step expects "
            "parameters only"
        )
    return graphdef, params


def init_train_state(params, tx: optax.GradientTransformation, seed: int,
                     loss_scale: LossScaleConfig | None = None) -> TrainState:
    """loss_scale: the scaler's config (``precision.loss_scale_for(policy.compute_dtype)``); None = off."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
        loss_scale=init_loss_scale(loss_scale or LossScaleConfig(enabled=False)),
    )


def token_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Masked mean next-token cross entropy in float32.

    logits: [B, T, V] (any float dtype); targets: [B, T] int; mask: [B, T] (bool or 0/1).
    Returns (mean loss over unmasked tokens, number of unmasked tokens).
    """
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    mask = mask.astype(jnp.float32)
    count = jnp.sum(mask)
    return jnp.sum(losses * mask) / jnp.maximum(count, 1.0), count


def loss_fn(params, graphdef, batch: dict[str, jax.Array]):
    """batch: inputs [B, T], targets [B, T], loss_mask [B, T]; optional positions, segment_ids [B, T]."""
    model = nnx.merge(graphdef, params)
    output = model(batch["inputs"], batch.get("positions"), segment_ids=batch.get("segment_ids"))
    loss, count = token_cross_entropy(output.logits, batch["targets"], batch["loss_mask"])
    return loss, count


def loss_scaled_update(
    loss_of: Callable[[Any], tuple[jax.Array, Any]],
    params,
    opt_state,
    scaler: LossScaleState,
    *,
    tx: optax.GradientTransformation,
    loss_scale: LossScaleConfig | None = None,
    skip_nonfinite: bool = False,
):
    """One optimizer step on ``loss_of(params) -> (loss, aux)`` through the dynamic loss scaler.

    With an enabled scaler (float16 compute) the loss is multiplied by the float32 scale before the
    backward pass and the gradients divided by it in float32; a step whose gradients are not all finite
    leaves params and optimizer state unchanged and backs the scale off. ``skip_nonfinite`` skips
    non-finite steps with a disabled scaler too (the RL loop and the trainer). ``finite``: the loss and
    every gradient are finite (a bool scalar).
    Returns ((params, opt_state, scaler), (loss, aux, grads, finite)); grads are the unscaled gradients.
    """
    if scaler.enabled and loss_scale is None:
        raise ValueError("loss_scale: the loss scaler is enabled; pass its LossScaleConfig")

    def scaled_loss(params):
        loss, aux = loss_of(params)
        return scale_loss(scaler, loss), (loss, aux)

    grads, (loss, aux) = jax.grad(scaled_loss, has_aux=True)(params)
    grads = unscale_grads(scaler, grads)
    finite = all_finite((loss, grads))
    updates, new_opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    if scaler.enabled or skip_nonfinite:
        new_params = select_tree(finite, new_params, params)
        new_opt_state = select_tree(finite, new_opt_state, opt_state)
        scaler = update_loss_scale(scaler, finite, loss_scale)  # disabled: only counts skipped steps
    return (new_params, new_opt_state, scaler), (loss, aux, grads, finite)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    graphdef,
    tx: optax.GradientTransformation,
    schedule: Callable[[jax.Array], jax.Array] | None = None,
    loss_scale: LossScaleConfig | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step. Returns (new state, metrics: loss, grad_norm, tokens, finite, skipped_steps,
    longest_nonfinite_streak[, lr][, loss_scale]).

    The loss-scaled update is :func:`loss_scaled_update` with ``skip_nonfinite``: a step whose loss or
    gradients are not all finite leaves params and optimizer state unchanged (the step counter still
    advances; with an enabled scaler, float16 compute, the scale is halved too). ``finite`` (bool) says
    whether this step was applied; ``skipped_steps`` (int32) counts the skipped steps of the run so far,
    ``longest_nonfinite_streak`` (int32) its longest run of skipped steps in a row.
    """
    scaler = state.loss_scale
    (params, opt_state, new_scaler), (loss, count, grads, finite) = loss_scaled_update(
        lambda params: loss_fn(params, graphdef, batch), state.params, state.opt_state, scaler, tx=tx,
        loss_scale=loss_scale, skip_nonfinite=True)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "tokens": count,
        "finite": finite,
        "skipped_steps": new_scaler.skipped,
        "longest_nonfinite_streak": new_scaler.longest_streak,
        **({"loss_scale": scaler.scale} if scaler.enabled else {}),
    }
    if schedule is not None:
        metrics["lr"] = schedule(state.step)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, loss_scale=new_scaler)
    return new_state, metrics


def make_train_step(graphdef, tx, schedule=None, *, state_sharding=None, batch_sharding=None, donate: bool = True,
                    loss_scale: LossScaleConfig | None = None):
    """A jitted ``step(state, batch) -> (state, metrics)`` with graphdef, tx and the loss-scale config closed over."""
    step = functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule, loss_scale=loss_scale)
    kwargs = {}
    if state_sharding is not None:
        kwargs["in_shardings"] = (state_sharding, batch_sharding)
        kwargs["out_shardings"] = (state_sharding, None)
    return jax.jit(step, donate_argnums=(0,) if donate else (), **kwargs)


def make_batch(
    tokens: jax.Array,
    loss_mask: jax.Array | None = None,
    *,
    segment_ids: jax.Array | None = None,
    positions: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Next-token batch from windows [B, T+1]: inputs = tokens[:, :-1], targets = tokens[:, 1:].

    loss_mask [B, T+1] marks the tokens to *predict* (so it is shifted like the targets; SFT masks
    select assistant tokens). segment_ids / positions [B, T+1] describe packed sequences; a target in
    another segment than its input (a document boundary) is masked out.
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    mask = jnp.ones(targets.shape, jnp.float32) if loss_mask is None else loss_mask[:, 1:].astype(jnp.float32)
    batch = {"inputs": inputs, "targets": targets}
    if segment_ids is not None:
        mask = mask * (segment_ids[:, 1:] == segment_ids[:, :-1]).astype(jnp.float32)
        batch["segment_ids"] = segment_ids[:, :-1]
    if positions is not None:
        batch["positions"] = positions[:, :-1]
    batch["loss_mask"] = mask
    return batch

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


@struct.dataclass
class TrainState:
    """step: int32 scalar; params: nnx.State of Params; opt_state: optax state; rng: uint32 key data [2]."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def split_model(model: nnx.Module):
    """(graphdef, params). Raises if the model holds state other than Params (not supported here)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError(
            "model: holds non-Param state (e.g. BatchStat or RNG counters); the train step expects "
            "parameters only"
        )
    return graphdef, params


def init_train_state(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
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


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    graphdef,
    tx: optax.GradientTransformation,
    schedule: Callable[[jax.Array], jax.Array] | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step. Returns (new state, metrics: loss, grad_norm, lr, tokens)."""
    (loss, count), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, graphdef, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "tokens": count,
    }
    if schedule is not None:
        metrics["lr"] = schedule(state.step)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics


def make_train_step(graphdef, tx, schedule=None, *, state_sharding=None, batch_sharding=None, donate: bool = True):
    """A jitted ``step(state, batch) -> (state, metrics)`` with graphdef and tx closed over."""
    step = functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule)
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

"""Explicit precision: one place that says which dtype every kind of tensor uses.

A :class:`DtypePolicy` is passed down into layers and models (never read from a global). Three dtypes
describe a model run:

* ``param_dtype``  -- what parameters are stored in (the "master" copy for mixed precision);
* ``compute_dtype`` -- what matmuls and activations run in;
* ``output_dtype`` -- what the model returns (logits).

The float32 islands are policy fields too, so no layer hard-codes ``jnp.float32``:

* ``accum_dtype`` -- numerically sensitive reductions: RMSNorm statistics, RoPE angles, gate cumsums,
  routing scores, logits-to-loss (layers call :meth:`DtypePolicy.accum`);
* ``softmax_dtype`` -- softmax statistics (the vocabulary log-softmax of the RL engines, the running
  max / sum of the online-softmax attention kernel);
* ``state_dtype`` -- recurrent states carried across tokens (the KDA delta-rule state);
* ``kept_param_dtype`` -- parameters stored at this precision whatever ``param_dtype`` (what Hugging
  Face's ``_keep_in_fp32_modules`` keeps in float32: the MoE router, KDA's ``A_log`` / ``dt_bias``);
* ``lm_head_dtype`` / ``kv_cache_dtype`` -- the LM-head matmul and the KV-cache storage (default: the
  compute dtype; an "f32 LM head" sets the first to float32).

All default to float32 (the last two to the compute dtype).

Preset names say what is stored: ``"fp16"`` stores parameters in float16; ``"fp16-mixed"`` keeps float32
(master) parameters and computes in float16. The RL engines (``jaxstack.rl``) use the ``-mixed`` presets.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

_DTYPE_NAMES = {
    "float32": jnp.float32,
    "f32": jnp.float32,
    "fp32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "bf16": jnp.bfloat16,
    "float16": jnp.float16,
    "f16": jnp.float16,
    "fp16": jnp.float16,
    # float64 for exactness tests (needs jax x64 enabled).
    "float64": jnp.float64,
    "f64": jnp.float64,
}


def as_dtype(value: Any, *, field: str = "dtype") -> jnp.dtype:
    """Turns a dtype or a dtype name (``"bf16"``, ``"float32"``, ...) into a floating ``jnp.dtype``."""
    if isinstance(value, str):
        if value not in _DTYPE_NAMES:
            raise ValueError(
                f"{field}: unknown dtype name {value!r}; expected one of {sorted(_DTYPE_NAMES)}"
            )
        return jnp.dtype(_DTYPE_NAMES[value])
    try:
        dtype = jnp.dtype(value)
    except TypeError as error:
        raise ValueError(f"{field}: expected a floating dtype or its name, got {value!r}") from error
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{field}: expected a floating dtype, got {dtype}")
    return dtype


@dataclasses.dataclass(frozen=True)
class DtypePolicy:
    """Dtypes of parameters, computation, outputs and sensitive accumulations. Hashable (jit-static).

    Attributes:
      param_dtype: storage dtype of parameters (the master weights of a mixed-precision run).
      compute_dtype: dtype of activations and matmul inputs.
      output_dtype: dtype of the returned logits.
      accum_dtype: dtype of norm statistics, RoPE angles, cumsums and routing scores.
      softmax_dtype: dtype of softmax statistics (vocabulary log-softmax, online-softmax attention).
      state_dtype: dtype of recurrent states (KDA).
      kept_param_dtype: storage dtype of the parameters kept at high precision (router, A_log, dt_bias).
      lm_head_dtype: dtype of the LM-head matmul inputs (None = compute_dtype).
      kv_cache_dtype: dtype the RL rollout stores its KV cache in (None = compute_dtype).
    """

    param_dtype: Any = jnp.float32
    compute_dtype: Any = jnp.float32
    output_dtype: Any = jnp.float32
    accum_dtype: Any = jnp.float32
    softmax_dtype: Any = jnp.float32
    state_dtype: Any = jnp.float32
    kept_param_dtype: Any = jnp.float32
    lm_head_dtype: Any = None
    kv_cache_dtype: Any = None

    def __post_init__(self):
        for field in ("param_dtype", "compute_dtype", "output_dtype", "accum_dtype", "softmax_dtype", "state_dtype",
                      "kept_param_dtype"):
            object.__setattr__(self, field, as_dtype(getattr(self, field), field=field))
        # None = the compute dtype, resolved here so equal policies compare (and hash) equal
        for field in ("lm_head_dtype", "kv_cache_dtype"):
            value = getattr(self, field)
            object.__setattr__(self, field, self.compute_dtype if value is None else as_dtype(value, field=field))

    # Casting helpers. Integer arrays (token ids, positions) are never touched.
    def _cast(self, tree, dtype):
        def cast(x):
            if isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(x.dtype, jnp.floating):
                return x.astype(dtype)
            return x

        return jax.tree.map(cast, tree)

    def cast_to_param(self, tree):
        return self._cast(tree, self.param_dtype)

    def cast_to_compute(self, tree):
        return self._cast(tree, self.compute_dtype)

    def cast_to_output(self, tree):
        return self._cast(tree, self.output_dtype)

    def replace(self, **changes: Any) -> DtypePolicy:
        """A copy with ``changes``. ``lm_head_dtype`` / ``kv_cache_dtype`` keep their resolved values
        unless changed too (pass them as None to follow a new compute dtype)."""
        return dataclasses.replace(self, **changes)

    def accum(self, x):
        """Casts ``x`` to the accumulation dtype (float32 by default) for a sensitive reduction."""
        return x.astype(self.accum_dtype)

    @property
    def name(self) -> str:
        for name, policy in POLICIES.items():
            if policy == self:
                return name
        return "custom(" + ", ".join(f"{k.removesuffix('_dtype')}={v}" for k, v in self.to_dict().items()) + ")"

    def to_dict(self) -> dict[str, str]:
        return {f.name: jnp.dtype(getattr(self, f.name)).name for f in dataclasses.fields(self)}


POLICIES: dict[str, DtypePolicy] = {
    # Everything in float32: the reference and the CPU default.
    "fp32": DtypePolicy(jnp.float32, jnp.float32, jnp.float32),
    # Pure half precision: parameters, activations and logits in half (accumulations still f32).
    "bf16": DtypePolicy(jnp.bfloat16, jnp.bfloat16, jnp.bfloat16),
    "fp16": DtypePolicy(jnp.float16, jnp.float16, jnp.float16),
    # Mixed: float32 master parameters, half-precision compute, float32 logits.
    "bf16-mixed": DtypePolicy(jnp.float32, jnp.bfloat16, jnp.float32),
    "fp16-mixed": DtypePolicy(jnp.float32, jnp.float16, jnp.float32),
}


def get_policy(policy: str | DtypePolicy | None) -> DtypePolicy:
    """Returns a policy from a preset name, a policy, or ``None`` (= ``"fp32"``)."""
    if policy is None:
        return POLICIES["fp32"]
    if isinstance(policy, DtypePolicy):
        return policy
    if policy not in POLICIES:
        raise ValueError(f"policy: unknown preset {policy!r}; expected one of {sorted(POLICIES)}")
    return POLICIES[policy]


# ----------------------------------------------------------------------------------------------------
# Dynamic loss scaling (float16 training)
#
# Dynamic loss scaling for float16 training, as pure functions of a small state pytree (all jit-able).
#
# Recipe (PyTorch ``GradScaler`` / DeepSpeed / the Precision-RL VeRL patch): multiply the loss by a
# float32 scale S before the backward pass, divide the gradients by S in float32, and if any gradient is
# non-finite skip the update and back off (S <- S * 0.5); after ``growth_interval`` consecutive finite
# steps grow it (S <- S * 2). Initial S = 2^16. For float32 / bfloat16 training the scaler is disabled:
# S stays 1 and the gradients are returned unchanged (bfloat16 has float32's exponent range).
#
# The scale is float32 on purpose: jmp's ``DynamicLossScale`` breaks with a half-precision scale (jmp
# issue #47), and a float16 scale cannot even hold 2^16.
#
# Usage inside a jitted step::
#
#     scaled = scale_loss(state, loss)                       # in the function you differentiate
#     grads = unscale_grads(state, grads)                    # float32
#     finite = all_finite(grads)
#     params = select_tree(finite, new_params, params)       # skip the step if not finite
#     state = update_loss_scale(state, finite, config)
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LossScaleConfig:
    """enabled: dynamic scaling on (float16) or off (S = 1). growth_interval: finite steps before x2
    (the paper's VeRL patch used 400; DeepSpeed's default window is 1000)."""

    enabled: bool = True
    initial_scale: float = 2.0**16
    growth_interval: int = 400
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    min_scale: float = 1.0
    max_scale: float = 2.0**24

    def __post_init__(self):
        if self.growth_interval <= 0:
            raise ValueError(f"loss_scale.growth_interval: expected a positive integer, got {self.growth_interval}")
        if not self.growth_factor > 1.0:
            raise ValueError(f"loss_scale.growth_factor: expected > 1, got {self.growth_factor}")
        if not 0.0 < self.backoff_factor < 1.0:
            raise ValueError(f"loss_scale.backoff_factor: expected in (0, 1), got {self.backoff_factor}")
        if not 0.0 < self.min_scale <= self.initial_scale <= self.max_scale:
            raise ValueError(
                "loss_scale: expected 0 < min_scale <= initial_scale <= max_scale, got "
                f"{self.min_scale}, {self.initial_scale}, {self.max_scale}"
            )


def loss_scale_for(compute_dtype, **overrides) -> LossScaleConfig:
    """Enabled for float16 compute, disabled (a no-op) for float32 / bfloat16."""
    return LossScaleConfig(enabled=jnp.dtype(compute_dtype) == jnp.float16, **overrides)


@struct.dataclass
class LossScaleState:
    """scale: float32 []; good_steps: int32 [] consecutive finite steps; skipped: int32 [] total skipped
    (non-finite) steps; streak: int32 [] skipped steps in a row up to now; longest_streak: int32 [] the
    longest such run so far (kept on device, so a trainer can check a limit at its log steps without a
    host read per step); enabled: a static bool."""

    scale: jax.Array
    good_steps: jax.Array
    skipped: jax.Array
    streak: jax.Array
    longest_streak: jax.Array
    enabled: bool = struct.field(pytree_node=False, default=True)


def init_loss_scale(config: LossScaleConfig) -> LossScaleState:
    return LossScaleState(
        scale=jnp.asarray(config.initial_scale if config.enabled else 1.0, jnp.float32),
        good_steps=jnp.zeros((), jnp.int32),
        skipped=jnp.zeros((), jnp.int32),
        streak=jnp.zeros((), jnp.int32),
        longest_streak=jnp.zeros((), jnp.int32),
        enabled=config.enabled,
    )


def scale_loss(state: LossScaleState, loss: jax.Array) -> jax.Array:
    """loss * S in float32 (identity when disabled)."""
    if not state.enabled:
        return loss
    return loss.astype(jnp.float32) * state.scale


def unscale_grads(state: LossScaleState, grads):
    """grads / S, in float32 (identity when disabled)."""
    if not state.enabled:
        return grads
    inverse = 1.0 / state.scale
    return jax.tree.map(lambda g: g.astype(jnp.float32) * inverse, grads)


def all_finite(tree) -> jax.Array:
    """True iff every element of every leaf is finite (a bool scalar)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def select_tree(pred: jax.Array, on_true, on_false):
    """Leafwise ``where(pred, a, b)``: keeps the old parameters / optimizer state on a skipped step."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def update_loss_scale(state: LossScaleState, finite: jax.Array, config: LossScaleConfig) -> LossScaleState:
    """One scaler update after a step whose unscaled gradients were ``finite``.

    Non-finite: S <- max(S * backoff, min_scale), good_steps <- 0, skipped += 1. Finite: good_steps += 1,
    and when it reaches ``growth_interval``, S <- min(S * growth, max_scale) and good_steps <- 0.
    Disabled: only the skip counters move (S stays 1). Either way ``streak`` counts skipped steps in a
    row (0 after a finite step) and ``longest_streak`` keeps its maximum.
    """
    skipped = state.skipped + jnp.where(finite, 0, 1).astype(jnp.int32)
    streak = jnp.where(finite, 0, state.streak + 1).astype(jnp.int32)
    state = state.replace(skipped=skipped, streak=streak, longest_streak=jnp.maximum(state.longest_streak, streak))
    if not state.enabled:
        return state
    good = jnp.where(finite, state.good_steps + 1, 0)
    grow = good >= config.growth_interval
    scale = jnp.where(
        finite,
        jnp.where(grow, jnp.minimum(state.scale * config.growth_factor, config.max_scale), state.scale),
        jnp.maximum(state.scale * config.backoff_factor, config.min_scale),
    ).astype(jnp.float32)
    return state.replace(scale=scale, good_steps=jnp.where(grow, 0, good).astype(jnp.int32))

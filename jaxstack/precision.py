"""Explicit precision: one place that says which dtype every kind of tensor uses.

A :class:`DtypePolicy` is passed down into layers and models (never read from a global). Three dtypes
describe a model run:

* ``param_dtype``  -- what parameters are stored in (the "master" copy for mixed precision);
* ``compute_dtype`` -- what matmuls and activations run in;
* ``output_dtype`` -- what the model returns (logits).

Numerically sensitive reductions -- RMSNorm statistics, softmax, RoPE angles, gate cumsums, recurrent
states and logits-to-loss -- run in ``accum_dtype`` (float32 unless a policy says otherwise). Layers
call :meth:`DtypePolicy.accum` for those instead of hard-coding ``jnp.float32`` so the rule lives here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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
      param_dtype: storage dtype of parameters.
      compute_dtype: dtype of activations and matmul inputs.
      output_dtype: dtype of the returned logits.
      accum_dtype: dtype of norms, softmax, RoPE angles, cumsums and recurrent states.
    """

    param_dtype: Any = jnp.float32
    compute_dtype: Any = jnp.float32
    output_dtype: Any = jnp.float32
    accum_dtype: Any = jnp.float32

    def __post_init__(self):
        for field in ("param_dtype", "compute_dtype", "output_dtype", "accum_dtype"):
            object.__setattr__(self, field, as_dtype(getattr(self, field), field=field))

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

    def accum(self, x):
        """Casts ``x`` to the accumulation dtype (float32 by default) for a sensitive reduction."""
        return x.astype(self.accum_dtype)

    @property
    def name(self) -> str:
        for name, policy in POLICIES.items():
            if policy == self:
                return name
        return (
            f"custom(param={self.param_dtype.name}, compute={self.compute_dtype.name}, "
            f"output={self.output_dtype.name}, accum={self.accum_dtype.name})"
        )

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

"""Feed-forward layers."""

from __future__ import annotations

import jax
from flax import nnx

from jaxstack.layers.attention import param
from jaxstack.precision import DtypePolicy, get_policy


def swiglu(x: jax.Array, gate_proj: jax.Array, up_proj: jax.Array, down_proj: jax.Array, *, compute_dtype) -> jax.Array:
    """``down(silu(x @ gate) * (x @ up))`` with inputs and weights cast to ``compute_dtype``.

    x: [..., D]; gate_proj, up_proj: [D, F]; down_proj: [F, D]. Returns [..., D] in ``compute_dtype``.
    """
    x = x.astype(compute_dtype)
    gate = x @ gate_proj.astype(compute_dtype)
    up = x @ up_proj.astype(compute_dtype)
    return (jax.nn.silu(gate) * up) @ down_proj.astype(compute_dtype)


class SwiGLU(nnx.Module):
    """``down(silu(x @ gate) * (x @ up))``. gate_proj/up_proj [D, F], down_proj [F, D]."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        *,
        init_std: float = 0.02,
        policy: DtypePolicy | str | None = None,
        rngs: nnx.Rngs,
    ):
        self.policy = get_policy(policy)
        dtype = self.policy.param_dtype
        self.gate_proj = param(rngs, (hidden_size, intermediate_size), ("embed", "mlp"), std=init_std, dtype=dtype)
        self.up_proj = param(rngs, (hidden_size, intermediate_size), ("embed", "mlp"), std=init_std, dtype=dtype)
        self.down_proj = param(rngs, (intermediate_size, hidden_size), ("mlp", "embed"), std=init_std, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., D] -> [..., D] in the compute dtype."""
        return swiglu(x, self.gate_proj[...], self.up_proj[...], self.down_proj[...],
                      compute_dtype=self.policy.compute_dtype)

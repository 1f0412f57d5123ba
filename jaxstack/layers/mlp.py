"""Feed-forward layers."""

from __future__ import annotations

import jax
from flax import nnx

from jaxstack.layers.attention import param
from jaxstack.precision import DtypePolicy, get_policy


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
        compute = self.policy.compute_dtype
        x = x.astype(compute)
        gate = x @ self.gate_proj[...].astype(compute)
        up = x @ self.up_proj[...].astype(compute)
        return (jax.nn.silu(gate) * up) @ self.down_proj[...].astype(compute)

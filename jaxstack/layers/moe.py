"""Mixture of experts with a DeepSeek-V3 / Kimi Linear router, in Flax NNX.

Routing per token (``x [d]``, E routed experts, top-k)::

    scores   = sigmoid(x W_router)                     # [E], accum dtype (router weight in kept_param_dtype)
    choice   = scores + e_score_correction_bias        # the bias only *selects* experts
    (group-limited: keep the topk_group groups with the largest sum of their top-2 choices)
    idx      = top_k(choice)
    w        = scores[idx]                             # weights come from the unbiased scores
    w        = w / (sum(w) + 1e-20)   if renormalize
    w        = w * routed_scaling_factor
    y        = sum_j w_j * Expert_{idx_j}(x) + SharedExperts(x)

Experts are SwiGLU (``down(silu(x gate) * (x up))``). ``e_score_correction_bias`` is a
:class:`RouterBias`, an ``nnx.Param`` subclass with ``weight_decay=False``: it only picks indices, so
its gradient is exactly zero and AdamW leaves it unchanged; the aux-loss-free balancing rule (DeepSeek-V3)
updates it outside the optimizer and can find it by type. Being a Param keeps the model trainable by
the parameter-only train step (``jaxstack.train.step.split_model``).

Two implementations with identical results (tested against a per-token loop):
* ``"dense"``: every expert on every token, combined with a ``[N, E]`` weight matrix (zeros off
  the top-k). Simple and fast for small models / few experts;
* ``"ragged"``: tokens sorted by expert and run through ``jax.lax.ragged_dot`` (grouped GEMM), so
  compute scales with top-k, not E.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from jaxstack.layers.attention import param
from jaxstack.layers.mlp import SwiGLU
from jaxstack.precision import DtypePolicy, get_policy

Implementation = Literal["auto", "dense", "ragged"]


class RouterBias(nnx.Param):
    """Selection-only expert bias (``e_score_correction_bias``): zero gradient, no weight decay."""


def route(
    x: jax.Array,
    router_weight: jax.Array,
    bias: jax.Array | None,
    *,
    top_k: int,
    accum_dtype,
    renormalize: bool = True,
    routed_scaling_factor: float = 1.0,
    num_groups: int = 1,
    topk_groups: int = 1,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Sigmoid top-k routing. x: ``[N, d]``; router_weight: ``[d, E]``; bias: ``[E]`` or None.

    accum_dtype: the routing scores' dtype (at least; the policy's ``accum_dtype``, float32).
    Returns ``(weights [N, k], indices [N, k] int32, scores [N, E])``, weights and scores in that dtype.
    """
    num_experts = router_weight.shape[-1]
    acc = jnp.promote_types(x.dtype, accum_dtype)
    logits = jnp.dot(x.astype(acc), router_weight.astype(acc))
    scores = jax.nn.sigmoid(logits)
    choice = scores if bias is None else scores + bias.astype(acc)
    if num_groups > 1:
        grouped = choice.reshape(choice.shape[0], num_groups, num_experts // num_groups)
        group_scores = jax.lax.top_k(grouped, 2)[0].sum(-1)  # [N, G]
        _, keep = jax.lax.top_k(group_scores, topk_groups)
        group_mask = jnp.zeros_like(group_scores, dtype=bool).at[jnp.arange(choice.shape[0])[:, None], keep].set(True)
        choice = jnp.where(jnp.repeat(group_mask, num_experts // num_groups, axis=-1), choice, -jnp.inf)
    _, indices = jax.lax.top_k(choice, top_k)
    weights = jnp.take_along_axis(scores, indices, axis=-1)
    if renormalize:
        weights = weights / (weights.sum(-1, keepdims=True) + 1e-20)
    return weights * routed_scaling_factor, indices.astype(jnp.int32), scores


class MoE(nnx.Module):
    """Routed SwiGLU experts + shared experts. Weights: router ``[d, E]`` and
    e_score_correction_bias ``[E]`` (RouterBias) in ``policy.kept_param_dtype`` (float32),
    gate_proj / up_proj ``[E, d, I]``,
    down_proj ``[E, I, d]``, shared_experts (SwiGLU ``d -> I * num_shared_experts``).
    """

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        num_experts: int,
        num_experts_per_token: int,
        *,
        num_shared_experts: int = 0,
        routed_scaling_factor: float = 1.0,
        renormalize: bool = True,
        num_groups: int = 1,
        topk_groups: int = 1,
        implementation: Implementation = "auto",
        init_std: float = 0.02,
        policy: DtypePolicy | str | None = None,
        rngs: nnx.Rngs,
    ):
        for name, value in (("hidden_size", hidden_size), ("intermediate_size", intermediate_size),
                            ("num_experts", num_experts), ("num_experts_per_token", num_experts_per_token),
                            ("num_groups", num_groups), ("topk_groups", topk_groups)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"MoE: {name} must be a positive integer, got {value!r}")
        if num_experts_per_token > num_experts:
            raise ValueError(f"MoE: num_experts_per_token={num_experts_per_token} exceeds num_experts={num_experts}")
        if num_experts % num_groups or topk_groups > num_groups:
            raise ValueError(f"MoE: num_groups={num_groups} must divide num_experts={num_experts} and be >= "
                             f"topk_groups={topk_groups}")
        if implementation not in ("auto", "dense", "ragged"):
            raise ValueError(f"MoE: implementation must be 'auto', 'dense' or 'ragged', got {implementation!r}")
        self.policy = policy = get_policy(policy)
        self.num_experts, self.top_k = num_experts, num_experts_per_token
        self.routed_scaling_factor, self.renormalize = float(routed_scaling_factor), renormalize
        self.num_groups, self.topk_groups = num_groups, topk_groups
        self.implementation = implementation
        d, f, e, dtype = hidden_size, intermediate_size, num_experts, policy.param_dtype
        kept = policy.kept_param_dtype  # HF keeps the router in float32 whatever the model dtype
        self.router = param(rngs, (d, e), ("embed", None), std=init_std, dtype=kept)
        self.e_score_correction_bias = RouterBias(jnp.zeros((e,), kept), out_sharding=(None,),
                                                  eager_sharding=False, weight_decay=False)
        self.gate_proj = param(rngs, (e, d, f), ("expert", "embed", "mlp"), std=init_std, dtype=dtype)
        self.up_proj = param(rngs, (e, d, f), ("expert", "embed", "mlp"), std=init_std, dtype=dtype)
        self.down_proj = param(rngs, (e, f, d), ("expert", "mlp", "embed"), std=init_std, dtype=dtype)
        self.shared_experts = (
            SwiGLU(d, f * num_shared_experts, init_std=init_std, policy=policy, rngs=rngs) if num_shared_experts else None
        )

    def route(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x: ``[N, d]`` -> (weights [N, k], indices [N, k], scores [N, E]); see :func:`route`."""
        return route(x, self.router[...], self.e_score_correction_bias[...], top_k=self.top_k,
                     accum_dtype=self.policy.accum_dtype, renormalize=self.renormalize, routed_scaling_factor=self.routed_scaling_factor,
                     num_groups=self.num_groups, topk_groups=self.topk_groups)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: ``[..., d]`` -> ``[..., d]`` in the compute dtype."""
        compute = self.policy.compute_dtype
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).astype(compute)
        weights, indices, _ = self.route(flat)
        implementation = self.implementation
        if implementation == "auto":
            implementation = "dense" if self.num_experts <= 16 else "ragged"
        if implementation == "dense":
            routed = self._dense(flat, weights, indices)
        else:
            routed = self._ragged(flat, weights, indices)
        if self.shared_experts is not None:
            routed = routed + self.shared_experts(flat)
        return routed.reshape(shape).astype(compute)

    def _weights(self):
        compute = self.policy.compute_dtype
        return (self.gate_proj[...].astype(compute), self.up_proj[...].astype(compute),
                self.down_proj[...].astype(compute))

    def _dense(self, x, weights, indices):
        """All experts on all tokens; combine [N, E] is zero off the top-k."""
        gate, up, down = self._weights()
        combine = jnp.zeros((x.shape[0], self.num_experts), weights.dtype)
        combine = combine.at[jnp.arange(x.shape[0])[:, None], indices].add(weights)
        hidden = jax.nn.silu(jnp.einsum("nd,edf->nef", x, gate)) * jnp.einsum("nd,edf->nef", x, up)
        out = jnp.einsum("nef,efd->ned", hidden, down)
        return jnp.einsum("ned,ne->nd", out, combine.astype(out.dtype))

    def _ragged(self, x, weights, indices):
        """Sort (token, expert) pairs by expert and run grouped GEMMs with ``lax.ragged_dot``."""
        gate, up, down = self._weights()
        _n, k = indices.shape
        flat_experts = indices.reshape(-1)
        order = jnp.argsort(flat_experts, stable=True)
        token_of = order // k
        xs = x[token_of]  # [N*k, d]
        group_sizes = jnp.bincount(flat_experts, length=self.num_experts).astype(jnp.int32)
        hidden = jax.nn.silu(jax.lax.ragged_dot(xs, gate, group_sizes)) * jax.lax.ragged_dot(xs, up, group_sizes)
        out = jax.lax.ragged_dot(hidden, down, group_sizes)  # [N*k, d]
        out = out * weights.reshape(-1)[order][:, None].astype(out.dtype)
        return jnp.zeros_like(x).at[token_of].add(out)

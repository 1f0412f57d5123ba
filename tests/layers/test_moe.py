"""MoE: routing and outputs against a plain per-token loop (float64 NumPy), dense == ragged paths,
selection-only bias, group-limited routing.

Tolerance 1e-5 max-abs on outputs of O(0.1..1) (float32, matmul precision "highest"). A routing bug
(bias used in the weights, no renormalisation, missing scaling factor) changes outputs by O(1).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxstack.layers.moe import MoE, RouterBias, route

ATOL = 1e-5
D, F, E, K = 12, 8, 6, 2


def _make(implementation="dense", groups=1, topk_groups=1, shared=1):
    moe = MoE(D, F, E, K, num_shared_experts=shared, routed_scaling_factor=2.5, num_groups=groups,
              topk_groups=topk_groups, implementation=implementation, init_std=0.4, rngs=nnx.Rngs(0))
    moe.e_score_correction_bias[...] = 0.3 * jax.random.normal(jax.random.key(5), (E,))
    return moe


def loop_reference(moe, x, groups=1, topk_groups=1):
    """Per token: sigmoid scores, biased choice, (group filter), top-k, renormalise, scale, experts."""
    f = lambda v: np.asarray(v[...], np.float64)
    w_r, bias = f(moe.router), f(moe.e_score_correction_bias)
    gate, up, down = f(moe.gate_proj), f(moe.up_proj), f(moe.down_proj)
    silu = lambda z: z / (1 + np.exp(-z))
    x = np.asarray(x, np.float64)
    out, chosen = np.zeros_like(x), []
    for n, xn in enumerate(x):
        scores = 1 / (1 + np.exp(-(xn @ w_r)))
        choice = scores + bias
        if groups > 1:
            per = choice.reshape(groups, -1)
            group_score = np.sort(per, -1)[:, -2:].sum(-1)
            keep = np.argsort(-group_score)[:topk_groups]
            choice = np.where(np.isin(np.arange(E) // (E // groups), keep), choice, -np.inf)
        idx = np.argsort(-choice)[:K]
        weights = scores[idx] / scores[idx].sum() * 2.5
        chosen.append(sorted(idx.tolist()))
        for wgt, e in zip(weights, idx):
            out[n] += wgt * (silu(xn @ gate[e]) * (xn @ up[e])) @ down[e]
        if moe.shared_experts is not None:
            s = moe.shared_experts
            out[n] += (silu(xn @ f(s.gate_proj)) * (xn @ f(s.up_proj))) @ f(s.down_proj)
    return out, chosen


@pytest.mark.parametrize("implementation,groups", [("dense", 1), ("ragged", 1), ("dense", 3)],
                         ids=["dense", "ragged", "dense-grouped"])
def test_matches_loop(implementation, groups):
    moe = _make(implementation, groups=groups, topk_groups=2 if groups > 1 else 1)
    x = jax.random.normal(jax.random.key(1), (3, 5, D), jnp.float32)
    y = nnx.jit(lambda m, v: m(v))(moe, x)
    ref, chosen = loop_reference(moe, x.reshape(-1, D), groups, 2 if groups > 1 else 1)
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(np.asarray(y).reshape(-1, D), ref, atol=ATOL, rtol=0)
    _, idx, _ = moe.route(x.reshape(-1, D))
    assert [sorted(r) for r in np.asarray(idx).tolist()] == chosen


def test_bias_selects_but_does_not_weight():
    x = jax.random.normal(jax.random.key(2), (64, D))
    w = 0.4 * jax.random.normal(jax.random.key(3), (D, E))
    big = jnp.zeros((E,)).at[0].set(10.0)  # forces expert 0 into every top-k
    weights, idx, scores = route(x, w, big, top_k=K, accum_dtype=jnp.float32, renormalize=False)
    assert bool((idx == 0).any(-1).all())
    np.testing.assert_allclose(np.asarray(weights), np.take_along_axis(np.asarray(scores), np.asarray(idx), -1))
    weights, _, _ = route(x, w, None, top_k=K, accum_dtype=jnp.float32, routed_scaling_factor=2.0)
    np.testing.assert_allclose(np.asarray(weights.sum(-1)), 2.0, rtol=1e-6)


def test_bias_selection_only_zero_gradient():
    moe = _make()
    assert isinstance(moe.e_score_correction_bias, RouterBias) and isinstance(moe.e_score_correction_bias, nnx.Param)
    assert moe.e_score_correction_bias.get_metadata()["weight_decay"] is False
    assert moe.router.dtype == jnp.float32
    x = jax.random.normal(jax.random.key(7), (4, D))
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(moe)
    assert float(jnp.abs(grads.e_score_correction_bias[...]).max()) == 0.0
    assert float(jnp.abs(grads.router[...]).max()) > 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="num_experts_per_token"):
        MoE(D, F, 2, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_groups"):
        MoE(D, F, 6, 2, num_groups=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="implementation"):
        MoE(D, F, 6, 2, implementation="sparse", rngs=nnx.Rngs(0))

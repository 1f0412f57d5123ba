"""Kimi Delta Attention layer (paper section 4, Eq. 10; HF ``KimiDeltaAttention``), in Flax NNX.

Per token, with d = hidden size, H heads of size K (= V, the head dim)::

    q, k, v = SiLU(ShortConv(x W_q)), SiLU(ShortConv(x W_k)), SiLU(ShortConv(x W_v))   # [B, T, H, K]
    q, k    = L2Norm(q), L2Norm(k)                                   # float32, eps 1e-6 inside the sqrt
    g       = -exp(A_log[h]) * softplus(f_b(f_a(x)) + dt_bias[h])   # low-rank gate d -> K -> H*K, float32
    beta    = sigmoid(x W_b)                                         # [B, T, H]
    o       = KDA(q, k, v, g, beta)                                  # jaxstack.pallas_kernels.kda
    o       = RMSNorm_head(o) * o_norm.weight * sigmoid(g_b(g_a(x)))   # head-wise gated norm, float32
    y       = o W_o

``A_log [H]`` and ``dt_bias [H, K]`` are stored in ``policy.kept_param_dtype`` (float32) whatever the
parameter dtype (HF keeps them in fp32, ``_keep_in_fp32_modules_strict``) and carry
``weight_decay=False``, as do the norm weight. The recurrent state is ``policy.state_dtype`` (float32).

Two paths, chosen by ``mode`` (not only by length: fla's PR #636 fixed a layer that picked the
recurrent kernel for short training batches):

* ``"chunk"``: the chunkwise kernel (training and prefill), ``kda(..., backend=self.backend)``;
* ``"recurrent"``: token-by-token ``kda_decode_step`` (decode), scanned when T > 1.

Decode state per layer: ``KDAState(conv [B, W-1, 3*H*K], recurrent [B, H, K, V] policy.state_dtype)``.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxstack.layers.attention import param
from jaxstack.layers.short_conv import ShortConvolution
from jaxstack.pallas_kernels.kda import kda, kda_decode_step, kda_gate_softplus
from jaxstack.precision import DtypePolicy, get_policy

Mode = Literal["chunk", "recurrent"]
L2NORM_EPS = 1e-6  # fla / HF l2norm: x / sqrt(sum x^2 + eps)


@struct.dataclass
class KDAState:
    """Decode state of one KDA layer (an explicit pytree).

    conv: ``[B, W-1, 3*H*K]`` the last W-1 pre-conv inputs of q, k, v (concatenated in that order).
    recurrent: ``[B, H, K, V]`` delta-rule state ``S`` (o_t = S_t^T q_t) in the policy's state dtype.
    """

    conv: jax.Array
    recurrent: jax.Array


def l2_normalize(x: jax.Array, *, policy: DtypePolicy, eps: float = L2NORM_EPS) -> jax.Array:
    """``x / sqrt(sum(x^2) + eps)`` over the last axis in the accum dtype (at least; fla's ``l2norm``
    runs it in float32). Returns that dtype."""
    x32 = x.astype(jnp.promote_types(x.dtype, policy.accum_dtype))
    return x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)


def gated_rms_norm(x: jax.Array, gate: jax.Array, weight: jax.Array, *, eps: float, policy: DtypePolicy) -> jax.Array:
    """Head-wise ``rms_norm(x) * weight * sigmoid(gate)`` over the last axis, all in the accum dtype.

    x, gate: ``[..., K]``; weight: ``[K]``. Matches HF ``KimiLinearRMSNormGated`` / fla
    ``FusedRMSNormGated(activation='sigmoid')`` (plain ``weight * x_hat``, not ``1 + weight``).
    Returns x's dtype.
    """
    x32 = policy.accum(x)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    out = normed * policy.accum(weight) * jax.nn.sigmoid(policy.accum(gate))
    return out.astype(x.dtype)


def _init_A_log(key, num_heads, dtype):
    """A_log = log(U(1, 16)) (fla / HF init), in ``dtype``."""
    return jnp.log(jax.random.uniform(key, (num_heads,), dtype, 1.0, 16.0))


def _init_dt_bias(key, shape, dtype, dt_min=1e-3, dt_max=1e-1, dt_floor=1e-4):
    """dt_bias = softplus^-1(dt), dt = exp(U(log dt_min, log dt_max)) clamped at dt_floor (fla / HF)."""
    dt = jnp.exp(jax.random.uniform(key, shape, dtype, math.log(dt_min), math.log(dt_max)))
    dt = jnp.maximum(dt, dt_floor)
    return dt + jnp.log(-jnp.expm1(-dt))


class KimiDeltaAttention(nnx.Module):
    """KDA token mixer. Weights (jaxstack layout, ``[in, out...]``):

    q_proj, k_proj, v_proj ``[d, H, K]``; q_conv1d, k_conv1d, v_conv1d (ShortConvolution ``[W, H*K]``);
    f_a_proj ``[d, K]``, f_b_proj ``[K, H, K]``; A_log ``[H]``, dt_bias ``[H, K]`` (kept_param_dtype);
    b_proj ``[d, H]``; g_a_proj ``[d, K]``, g_b_proj ``[K, H, K]``; o_norm ``[K]``; o_proj ``[H, K, d]``.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        *,
        conv_kernel_size: int = 4,
        norm_eps: float = 1e-5,
        backend: str = "auto",
        chunk_size: int | None = None,
        init_std: float = 0.02,
        policy: DtypePolicy | str | None = None,
        rngs: nnx.Rngs,
    ):
        for name, value in (("hidden_size", hidden_size), ("num_heads", num_heads), ("head_dim", head_dim),
                            ("conv_kernel_size", conv_kernel_size)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"KimiDeltaAttention: {name} must be a positive integer, got {value!r}")
        self.policy = policy = get_policy(policy)
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_heads, head_dim
        self.conv_kernel_size, self.norm_eps = conv_kernel_size, norm_eps
        self.backend, self.chunk_size = backend, chunk_size
        d, h, k = hidden_size, num_heads, head_dim
        dtype = policy.param_dtype
        heads_dims = ("heads", "head_dim")
        self.q_proj = param(rngs, (d, h, k), ("embed",) + heads_dims, std=init_std, dtype=dtype)
        self.k_proj = param(rngs, (d, h, k), ("embed",) + heads_dims, std=init_std, dtype=dtype)
        self.v_proj = param(rngs, (d, h, k), ("embed",) + heads_dims, std=init_std, dtype=dtype)
        conv = {"kernel_size": conv_kernel_size, "activation": "silu", "init_std": init_std, "policy": policy, "rngs": rngs}
        self.q_conv1d = ShortConvolution(h * k, **conv)
        self.k_conv1d = ShortConvolution(h * k, **conv)
        self.v_conv1d = ShortConvolution(h * k, **conv)
        # Low-rank forget gate (rank = head_dim) and its kept-precision (float32), no-decay parameters.
        self.f_a_proj = param(rngs, (d, k), ("embed", None), std=init_std, dtype=dtype)
        self.f_b_proj = param(rngs, (k, h, k), (None,) + heads_dims, std=init_std, dtype=dtype)
        kept = policy.kept_param_dtype
        self.A_log = nnx.Param(_init_A_log(rngs.params(), h, kept), out_sharding=("heads",), eager_sharding=False,
                               weight_decay=False)
        self.dt_bias = nnx.Param(_init_dt_bias(rngs.params(), (h, k), kept), out_sharding=heads_dims, eager_sharding=False,
                                 weight_decay=False)
        self.b_proj = param(rngs, (d, h), ("embed", "heads"), std=init_std, dtype=dtype)
        # Low-rank output gate and the head-wise gated RMSNorm.
        self.g_a_proj = param(rngs, (d, k), ("embed", None), std=init_std, dtype=dtype)
        self.g_b_proj = param(rngs, (k, h, k), (None,) + heads_dims, std=init_std, dtype=dtype)
        self.o_norm = nnx.Param(jnp.ones((k,), dtype), out_sharding=("head_dim",), eager_sharding=False,
                                weight_decay=False)
        self.o_proj = param(rngs, (h, k, d), heads_dims + ("embed",), std=init_std, dtype=dtype)

    # ------------------------------------------------------------------------------------------------

    def init_state(self, batch_size: int, dtype=None) -> KDAState:
        """Zero decode state for ``batch_size`` rows (conv in ``dtype``, default compute dtype)."""
        hk = self.num_heads * self.head_dim
        return KDAState(
            conv=jnp.zeros((batch_size, self.conv_kernel_size - 1, 3 * hk), dtype or self.policy.compute_dtype),
            recurrent=jnp.zeros((batch_size, self.num_heads, self.head_dim, self.head_dim), self.policy.state_dtype),
        )

    def __call__(
        self,
        x: jax.Array,
        *,
        state: KDAState | None = None,
        mode: Mode | None = None,
    ) -> tuple[jax.Array, KDAState | None]:
        """x: ``[B, T, d]``. state: a KDAState to continue from (decode / chunked prefill) or None.

        mode: ``"chunk"`` or ``"recurrent"``; default ``"recurrent"`` for a single token with a state,
        else ``"chunk"``. Returns ``(y [B, T, d] compute dtype, new KDAState or None)``; the new state
        is returned only when a state was given.
        """
        if x.ndim != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"KimiDeltaAttention: x must be [B, T, {self.hidden_size}], got shape {tuple(x.shape)}")
        if mode is None:
            mode = "recurrent" if (state is not None and x.shape[1] == 1) else "chunk"
        if mode not in ("chunk", "recurrent"):
            raise ValueError(f"KimiDeltaAttention: mode must be 'chunk' or 'recurrent', got {mode!r}")
        batch, length, _ = x.shape
        h, k = self.num_heads, self.head_dim
        hk = h * k
        if state is not None:
            expected = (batch, self.conv_kernel_size - 1, 3 * hk)
            if state.conv.shape != expected or state.recurrent.shape != (batch, h, k, k):
                raise ValueError(
                    f"KimiDeltaAttention: state must have conv {list(expected)} and recurrent {[batch, h, k, k]}, "
                    f"got {list(state.conv.shape)} and {list(state.recurrent.shape)}"
                )
        policy = self.policy
        compute = policy.compute_dtype
        x = x.astype(compute)

        def project(w):  # [B, T, H*K]
            return jnp.einsum("btd,dhk->bthk", x, w[...].astype(compute)).reshape(batch, length, hk)

        conv_states = (None, None, None) if state is None else jnp.split(state.conv, 3, axis=-1)
        q, q_conv = self.q_conv1d(project(self.q_proj), conv_states[0])
        kk, k_conv = self.k_conv1d(project(self.k_proj), conv_states[1])
        v, v_conv = self.v_conv1d(project(self.v_proj), conv_states[2])
        shape4 = (batch, length, h, k)
        q = l2_normalize(q.reshape(shape4), policy=policy).astype(compute)
        kk = l2_normalize(kk.reshape(shape4), policy=policy).astype(compute)
        v = v.reshape(shape4)

        g_raw = jnp.einsum("btd,dr->btr", x, self.f_a_proj[...].astype(compute))
        g_raw = jnp.einsum("btr,rhk->bthk", g_raw, self.f_b_proj[...].astype(compute))
        g = kda_gate_softplus(g_raw, self.A_log[...], self.dt_bias[...])  # float32 [B, T, H, K]
        beta = jax.nn.sigmoid(policy.accum(jnp.einsum("btd,dh->bth", x, self.b_proj[...].astype(compute))))

        initial = None if state is None else state.recurrent
        if mode == "chunk":
            o, final = kda(q, kk, v, g, beta, initial_state=initial, output_final_state=state is not None,
                           backend=self.backend, chunk_size=self.chunk_size)
        else:
            s0 = jnp.zeros((batch, h, k, k), policy.state_dtype) if initial is None else initial

            def step(s, inputs):
                o_t, s = kda_decode_step(*inputs[:5], s)
                return s, o_t

            inputs = tuple(jnp.moveaxis(a, 1, 0) for a in (q, kk, v, g, beta))
            final, o = jax.lax.scan(step, s0, inputs)
            o = jnp.moveaxis(o, 0, 1)
        gate = jnp.einsum("btd,dr->btr", x, self.g_a_proj[...].astype(compute))
        gate = jnp.einsum("btr,rhk->bthk", gate, self.g_b_proj[...].astype(compute))
        o = gated_rms_norm(o, gate, self.o_norm[...], eps=self.norm_eps, policy=policy).astype(compute)
        y = jnp.einsum("bthk,hkd->btd", o, self.o_proj[...].astype(compute))
        new_state = None
        if state is not None:
            conv = jnp.concatenate([q_conv, k_conv, v_conv], axis=-1).astype(state.conv.dtype)
            new_state = KDAState(conv=conv, recurrent=final.astype(policy.state_dtype))
        return y, new_state

"""Multi-head latent attention against a naive float64 NumPy reference (expanded per-head keys, causal
softmax), with and without NoPE and q_lora_rank; the latent cache (absorbed form) equals the full pass.

Tolerance 1e-5 max-abs on outputs of O(0.1..1) in float32 (matmul precision "highest" in conftest):
rounding is ~1e-6; a wrong scale (e.g. nope-only instead of (nope + rope)^-1/2), a missing
kv_a_layernorm or rope on the wrong slice moves outputs by >= 1e-2.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxstack.layers.mla import MultiHeadLatentAttention
from jaxstack.layers.rotary import rope_angles

ATOL = 1e-5
D, H, KVL, NOPE, ROPE, VD = 24, 3, 12, 8, 6, 10


def _make(use_nope=True, q_lora_rank=None):
    mla = MultiHeadLatentAttention(D, H, kv_lora_rank=KVL, qk_nope_head_dim=NOPE, qk_rope_head_dim=ROPE,
                                   v_head_dim=VD, q_lora_rank=q_lora_rank, use_nope=use_nope, init_std=0.3,
                                   rngs=nnx.Rngs(3))
    # Non-trivial norm weights so a skipped norm cannot pass.
    mla.kv_a_layernorm.scale[...] = 1 + 0.3 * jax.random.normal(jax.random.key(9), (KVL,))
    return mla


def _rms(x, w, eps=1e-6):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _rope(x, positions):  # x [T, N, r], rotate-half, theta 1e4
    r = x.shape[-1]
    inv = 1.0 / (10000.0 ** (np.arange(0, r, 2) / r))
    f = positions[:, None] * inv
    emb = np.concatenate([f, f], -1)[:, None, :]
    rot = np.concatenate([-x[..., r // 2 :], x[..., : r // 2]], -1)
    return x * np.cos(emb) + rot * np.sin(emb)


def naive_mla(mla, x, use_nope=True):
    """x: [B, T, D] -> [B, T, D], float64, one batch row and head at a time."""
    p = {k: np.asarray(v[...], np.float64) for k, v in nnx.to_flat_state(nnx.state(mla, nnx.Param))
         for k in ["/".join(map(str, k))]}
    x = np.asarray(x, np.float64)
    out = np.zeros(x.shape)
    T = x.shape[1]
    pos = np.arange(T, dtype=np.float64)
    for b in range(x.shape[0]):
        xb = x[b]
        if "q_proj" in p:
            q = np.einsum("td,dhq->thq", xb, p["q_proj"])
        else:
            q = np.einsum("tr,rhq->thq", _rms(xb @ p["q_a_proj"], p["q_a_layernorm/scale"]), p["q_b_proj"])
        ckv = xb @ p["kv_a_proj_with_mqa"]
        c, k_rot = _rms(ckv[:, :KVL], p["kv_a_layernorm/scale"]), ckv[:, KVL:]
        q_nope, q_rot = q[..., :NOPE], q[..., NOPE:]
        if not use_nope:
            q_rot, k_rot = _rope(q_rot, pos), _rope(k_rot[:, None, :], pos)[:, 0]
        kv = np.einsum("tc,chn->thn", c, p["kv_b_proj"])
        k_nope, v = kv[..., :NOPE], kv[..., NOPE:]
        heads = []
        for h in range(H):
            k = np.concatenate([k_nope[:, h], k_rot], -1)
            qh = np.concatenate([q_nope[:, h], q_rot[:, h]], -1)
            s = qh @ k.T / np.sqrt(NOPE + ROPE)
            s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
            s = np.exp(s - s.max(-1, keepdims=True))
            heads.append((s / s.sum(-1, keepdims=True)) @ v[:, h])
        out[b] = np.einsum("thv,hvd->td", np.stack(heads, 1), p["o_proj"])
    return out


@nnx.jit
def _call(mla, x, rope, cache):
    return mla(x, rope, cache=cache)


# nope without q_lora is in make test-all; nope-q_lora covers the no-rope path in make test
@pytest.mark.parametrize("use_nope,q_lora_rank", [pytest.param(True, None, marks=pytest.mark.slow), (False, None), (True, 7)],
                         ids=["nope", "rope", "nope-q_lora"])
def test_matches_naive_and_latent_cache(use_nope, q_lora_rank):
    mla = _make(use_nope, q_lora_rank)
    x = jax.random.normal(jax.random.key(1), (2, 9, D), jnp.float32)
    positions = jnp.broadcast_to(jnp.arange(9), (2, 9))
    rope = rope_angles(positions, ROPE, 10000.0)
    full, _ = _call(mla, x, rope, None)
    ref = naive_mla(mla, x, use_nope)
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(np.asarray(full), ref, atol=ATOL, rtol=0)
    # Latent cache: prefill 6 tokens then 3 single-token steps, absorbed form.
    latent = jnp.zeros((2, 12, KVL + ROPE))
    lengths = jnp.zeros((2,), jnp.int32)
    outs = []
    for lo, hi in ((0, 6), (6, 7), (7, 8), (8, 9)):
        r = (rope[0][:, lo:hi], rope[1][:, lo:hi])
        y, latent = _call(mla, x[:, lo:hi], r, (latent, lengths))
        lengths = lengths + (hi - lo)
        outs.append(y)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1)), ref, atol=ATOL, rtol=0)
    assert latent.shape[-1] == mla.latent_dim == KVL + ROPE
    np.testing.assert_array_equal(np.asarray(latent[:, 9:]), 0)  # unfilled slots untouched


def test_bad_inputs():
    mla = _make()
    with pytest.raises(ValueError, match=r"x must be \[B, T, 24\]"):
        mla(jnp.ones((1, 2, 5)))
    with pytest.raises(ValueError, match="cache latent"):
        mla(jnp.ones((1, 2, D)), cache=(jnp.zeros((1, 4, KVL)), jnp.zeros((1,), jnp.int32)))
    with pytest.raises(ValueError, match="rope"):
        _make(use_nope=False)(jnp.ones((1, 2, D)))
    with pytest.raises(ValueError, match="kv_lora_rank"):
        MultiHeadLatentAttention(D, H, kv_lora_rank=0, qk_nope_head_dim=8, qk_rope_head_dim=0, v_head_dim=8,
                                 rngs=nnx.Rngs(0))

"""The KDA oracle (``reference.py``) against fla's ``naive_recurrent_kda`` fixtures, plus the
recurrence properties every backend must share: state carry, decode = prefill, input validation."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstack.pallas_kernels.kda import kda, kda_decode_step, kda_reference
from jaxstack.testing import TOLERANCES, assert_close
from kda_testutil import forward, make_inputs, x64

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "kda"
FIXTURE_NAMES = ["basic", "no_h0_scale", "strong_gate", "odd_kv"]


def _load(name):
    d = np.load(FIXTURES / f"{name}.npz")
    scale = float(d["scale"])
    return d, (None if np.isnan(scale) else scale)


# `make test` runs the xla chunk path on the two hard fixtures (strong gate, odd K/V); `make test-all` on all.
@pytest.mark.parametrize("name, backend", [
    pytest.param(n, b, marks=pytest.mark.slow) if b == "xla" and n in ("basic", "no_h0_scale") else (n, b)
    for n in FIXTURE_NAMES for b in ("reference", "xla", "pallas")])
def test_matches_fla_naive_recurrent_fixture(name, backend):
    # fla computes in float32; float32 tolerance (1e-5 relative RMS) bounds our error plus theirs.
    d, scale = _load(name)
    h0 = d["h0"] if "h0" in d.files else None
    f = jax.jit(lambda q, k, v, g, beta, h0: kda(q, k, v, g, beta, initial_state=h0, scale=scale,
                                                  output_final_state=True, backend=backend))
    o, ht = f(*(jnp.asarray(d[n]) for n in ("q", "k", "v", "g", "beta")),
              None if h0 is None else jnp.asarray(h0))
    assert o.dtype == jnp.float32 and ht.dtype == jnp.float32
    assert_close(d["o"], o, dtype="float32", name=f"{name}/o")
    assert_close(d["ht"], ht, dtype="float32", name=f"{name}/ht")


def test_fixtures_are_small():
    total = sum(p.stat().st_size for p in FIXTURES.glob("*.npz"))
    assert 0 < total < 1_000_000


@pytest.mark.parametrize("backend, split", [pytest.param("xla", 1, marks=pytest.mark.slow), pytest.param("xla", 17, marks=pytest.mark.slow),
                                            pytest.param("xla", 40, marks=pytest.mark.slow), ("pallas", 21)])
def test_state_carry_across_split_equals_one_shot(backend, split):
    # Splits at a chunk's first token, mid-chunk and near the end (chunk 16 for pallas, 64 for xla).
    q, k, v, g, beta, h0 = make_inputs(2, 48, 2, 16, 8, seed=split)
    f = forward(backend)
    o, ht = f(q, k, v, g, beta, h0)
    s = slice(0, split), slice(split, None)
    o1, h1 = f(*(x[:, s[0]] for x in (q, k, v, g, beta)), h0)
    o2, h2 = f(*(x[:, s[1]] for x in (q, k, v, g, beta)), h1)
    assert_close(o, jnp.concatenate([o1, o2], axis=1), dtype="float32", name="o")
    assert_close(ht, h2, dtype="float32", name="ht")


# both slow (~24 s); decode after prefill stays fast in tests/layers/test_kda_layer.py and tests/models/test_kimi_linear.py
@pytest.mark.parametrize("prefill_backend", [pytest.param("reference", marks=pytest.mark.slow),
                                             pytest.param("xla", marks=pytest.mark.slow)])
def test_decode_steps_after_prefill_equal_longer_prefill(prefill_backend):
    T, n_dec = 37, 5
    q, k, v, g, beta, h0 = make_inputs(2, T + n_dec, 2, 16, 24, seed=3)
    o_full, ht_full = kda(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                          backend="reference")
    _, state = kda(q[:, :T], k[:, :T], v[:, :T], g[:, :T], beta[:, :T], initial_state=h0,
                   output_final_state=True, backend=prefill_backend)
    step = jax.jit(kda_decode_step)
    outs = []
    for t in range(T, T + n_dec):
        o_t, state = step(q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], state)
        outs.append(o_t)
    assert_close(o_full[:, T:], jnp.stack(outs, axis=1), dtype="float32", name="decoded o")
    assert_close(ht_full, state, dtype="float32", name="state after decode")


def test_decode_step_dtypes_and_errors():
    q, k, v, g, beta, h0 = make_inputs(1, 1, 2, 8, 4)
    o, s = kda_decode_step(jnp.asarray(q[:, 0], jnp.bfloat16), k[:, 0], jnp.asarray(v[:, 0], jnp.bfloat16),
                           g[:, 0], beta[:, 0], h0)
    assert o.dtype == jnp.bfloat16 and s.dtype == jnp.float32 and o.shape == (1, 2, 4)
    with pytest.raises(ValueError, match="state"):
        kda_decode_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], h0[:, :, :4])
    with pytest.raises(ValueError, match="beta"):
        kda_decode_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta, h0)


def test_reference_runs_in_float64_and_equals_explicit_matrix_form():
    # Independent spelling of the spec: S_t = (I - b k k^T) Diag(e^g) S + b k v^T with numpy matrices.
    q, k, v, g, beta, h0 = make_inputs(1, 9, 1, 5, 3, seed=11, dtype=np.float64)
    S = h0[0, 0].copy()
    outs = []
    for t in range(9):
        kt = k[0, t, 0][:, None]
        S = (np.eye(5) - beta[0, t, 0] * kt @ kt.T) @ np.diag(np.exp(g[0, t, 0])) @ S \
            + beta[0, t, 0] * kt @ v[0, t, 0][None, :]
        outs.append(S.T @ (q[0, t, 0] * 5 ** -0.5))
    with x64():
        o, ht = kda_reference(*(jnp.asarray(x) for x in (q, k, v, g, beta)),
                              initial_state=jnp.asarray(h0), output_final_state=True)
        assert o.dtype == jnp.float64 and ht.dtype == jnp.float64
        assert_close(np.stack(outs)[None, :, None], o, dtype="float64", name="o")
        assert_close(S[None, None], ht, dtype="float64", name="ht")


@pytest.mark.parametrize("bad, match", [
    (dict(q=np.zeros((1, 4, 2))), "q must be"),
    (dict(k=np.zeros((1, 4, 2, 7), np.float32)), "k has shape"),
    (dict(g=np.zeros((1, 4, 2, 7), np.float32)), "g has shape"),
    (dict(v=np.zeros((1, 5, 2, 4), np.float32)), "v must be"),
    (dict(beta=np.zeros((1, 4, 3), np.float32)), "beta must be"),
    (dict(q=np.zeros((1, 4, 2, 8), np.int32)), "q must have a floating dtype"),
    (dict(initial_state=np.zeros((1, 2, 8, 3), np.float32)), "initial_state must have shape"),
    (dict(cu_seqlens=np.array([0, 2, 9])), "cu_seqlens must start at 0"),
    (dict(cu_seqlens=np.array([0.0, 4.0])), "cu_seqlens must be an integer"),
    (dict(backend="cuda"), "backend must be one of"),
])
def test_bad_arguments_raise_value_error_naming_them(bad, match):
    args = dict(q=np.zeros((1, 4, 2, 8), np.float32), k=np.zeros((1, 4, 2, 8), np.float32),
                v=np.zeros((1, 4, 2, 4), np.float32), g=np.zeros((1, 4, 2, 8), np.float32),
                beta=np.zeros((1, 4, 2), np.float32))
    kw = {}
    for name, val in bad.items():
        (args if name in args else kw)[name] = val
    with pytest.raises(ValueError, match=match):
        kda(args["q"], args["k"], args["v"], args["g"], args["beta"], **kw)


def test_batch_must_be_one_with_cu_seqlens():
    q, k, v, g, beta, _ = make_inputs(2, 8, 1, 4, 4)
    with pytest.raises(ValueError, match="batch must be 1"):
        kda(q, k, v, g, beta, cu_seqlens=np.array([0, 3, 8]))

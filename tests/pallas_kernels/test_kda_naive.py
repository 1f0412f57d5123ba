"""``naive_chunk`` (the chunk algorithm written out plainly) against the token recurrence and against
the fast chunked XLA form, plus negative controls showing the comparison can fail."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstack.pallas_kernels.kda import reference
from jaxstack.pallas_kernels.kda.reference import naive_chunk
from jaxstack.testing import TOLERANCES, Tolerance, assert_close
from kda_testutil import forward, make_inputs, x64

# Odd shapes: T = 63 is a multiple of neither 16 nor 64 (the tail chunk is padded; 64 > T is a single
# padded chunk, 7 and 9 divide 63 exactly), K = 60 and V = 20 are not powers of two.
SHAPE = dict(B=2, T=63, H=2, K=60, V=20)
# Both sides compute the same quantity in float64 and differ by rounding only: sums of O(T) unit-scale
# terms plus a unit-lower triangular solve per chunk (beta < 1 and unit-norm keys keep I + Akk well
# conditioned), i.e. errors of at most T * C * 2^-53 ~ 1e-13 (measured: max-abs 2.5e-16). 1e-10 leaves
# >= 1000x headroom and is still 8 orders below an algorithmic slip (the negative controls below give
# relative RMS errors of 3e-2 without the WY solve and 7.6 without the decay).
FP64 = Tolerance(atol=1e-10, ratio=1e-10, max_abs=1e-10)


def _inputs(dtype, *, h0, seed=0):
    s = SHAPE
    return make_inputs(s["B"], s["T"], s["H"], s["K"], s["V"], seed=seed, gate=1.0, dtype=dtype, h0=h0)


def _arrays(args):
    return tuple(None if x is None else jnp.asarray(x) for x in args)


@functools.lru_cache(maxsize=None)
def _naive(chunk_size):
    return jax.jit(lambda q, k, v, g, beta, h0: naive_chunk(q, k, v, g, beta, initial_state=h0,
                                                         output_final_state=True, chunk_size=chunk_size))


def _ref(args):
    return forward("reference")(*_arrays(args))


def _fast(args, chunk_size):
    return forward("xla", chunk_size=chunk_size)(*_arrays(args))


def _chunked(args, chunk_size):
    return _naive(chunk_size)(*_arrays(args))


@pytest.mark.parametrize("chunk_size, h0", [(7, True), pytest.param(16, True, marks=pytest.mark.slow), (16, False),
                                            pytest.param(64, True, marks=pytest.mark.slow)])
def test_naive_chunk_equals_recurrence_fp64(chunk_size, h0):
    args = _inputs(np.float64, h0=h0)
    with x64():
        o_ref, s_ref = _ref(args)
        o, s = _chunked(args, chunk_size)
        assert o.dtype == jnp.float64 and s.dtype == jnp.float64
        assert o.shape == o_ref.shape and s.shape == s_ref.shape
        assert_close(o_ref, o, tol=FP64, name="o")
        assert_close(s_ref, s, tol=FP64, name="final_state")


def test_naive_chunk_equals_recurrence_fp32():
    # The project's float32 bound (relative RMS 1e-5, max-abs 1e-3): float32 rounding over T = 63
    # steps, in different orders on the two sides.
    args = _inputs(np.float32, h0=True, seed=1)
    o_ref, s_ref = _ref(args)
    o, s = _chunked(args, 9)
    assert o.dtype == jnp.float32 and s.dtype == jnp.float32
    assert_close(o_ref, o, dtype="float32", name="o")
    assert_close(s_ref, s, dtype="float32", name="final_state")


@pytest.mark.parametrize("chunk_size, h0", [pytest.param(16, True, marks=pytest.mark.slow), (16, False),
                                            pytest.param(64, True, marks=pytest.mark.slow)])
def test_naive_chunk_equals_fast_xla_chunk_fp64(chunk_size, h0):
    args = _inputs(np.float64, h0=h0, seed=2)
    with x64():
        o_fast, s_fast = _fast(args, chunk_size)
        o, s = _chunked(args, chunk_size)
        assert_close(o, o_fast, tol=FP64, name="o")
        assert_close(s, s_fast, tol=FP64, name="final_state")


def test_naive_chunk_equals_fast_xla_chunk_fp32():
    args32 = _inputs(np.float32, h0=True, seed=2)
    o_fast, s_fast = _fast(args32, 16)
    o, s = _chunked(args32, 16)
    assert_close(o, o_fast, tol=TOLERANCES["float32"], name="o fp32")
    assert_close(s, s_fast, tol=TOLERANCES["float32"], name="final_state fp32")


def test_negative_control_missing_decay_fails():
    # Dropping the decay (g -> 0) inside the chunk computation must be caught by the fp64 comparison.
    args = _inputs(np.float64, h0=True)
    with x64():
        o_ref, _ = _ref(args)
        q, k, v, g, beta, h0 = args
        o_bad, _ = _chunked((q, k, v, np.zeros_like(g), beta, h0), 16)
        with pytest.raises(AssertionError, match="relative RMS"):
            assert_close(o_ref, o_bad, tol=FP64, name="o")


def test_negative_control_missing_wy_solve_fails(monkeypatch):
    # Skipping the (I + Akk) solve (W = Diag(beta) K exp(G), U = Diag(beta) V) must be caught too;
    # at chunk_size 1 that solve is the identity, so the same patch must then still pass.
    args = _inputs(np.float64, h0=True)
    monkeypatch.setattr(reference, "solve_triangular", lambda a, b, **kw: b)
    with x64():
        o_ref, s_ref = _ref(args)
        # Not the cached jits: they were traced with the real solve.
        o_bad, s_bad = naive_chunk(*_arrays(args[:5]), initial_state=jnp.asarray(args[5]),
                                   output_final_state=True, chunk_size=16)
        with pytest.raises(AssertionError, match="relative RMS"):
            assert_close(o_ref, o_bad, tol=FP64, name="o")
        with pytest.raises(AssertionError, match="relative RMS"):
            assert_close(s_ref, s_bad, tol=FP64, name="final_state")
        o1, s1 = naive_chunk(*_arrays(args[:5]), initial_state=jnp.asarray(args[5]),
                             output_final_state=True, chunk_size=1)
        assert_close(o_ref, o1, tol=FP64, name="o (C=1)")
        assert_close(s_ref, s1, tol=FP64, name="final_state (C=1)")


def test_naive_chunk_rejects_bad_chunk_size():
    args = _inputs(np.float32, h0=False)
    with pytest.raises(ValueError, match="chunk_size"):
        naive_chunk(*_arrays(args[:5]), chunk_size=0)

"""The chunked XLA form (``chunk.py``) against the token recurrence: float64 exactness over chunk
boundaries, gradients, varlen packing, and strong-decay stress."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxstack.pallas_kernels.kda import kda, kda_chunk, kda_reference
from jaxstack.pallas_kernels.kda.chunk import decay_gram, intra_chunk, unit_lower_inverse
from jaxstack.testing import TOLERANCES, Tolerance, assert_close
from kda_testutil import GRAD_NAMES, forward, grads, make_inputs, x64

T_VALUES = [1, 15, 16, 17, 63, 64, 65, 200, 257]
FP64_EXACT = Tolerance(atol=1e-12, ratio=1e-12, max_abs=1e-12)  # the acceptance bound


@functools.lru_cache(maxsize=None)
def _fp64_case():
    # One reference run at the longest T; by causality its prefix of length T is the length-T answer,
    # and the per-step states give every prefix's final state (one compile instead of nine).
    Tmax = max(T_VALUES)
    inputs = make_inputs(2, Tmax, 2, 12, 10, seed=0, dtype=np.float64)
    with x64():
        def ref_states(q, k, v, g, beta, h0):
            def step(S, x):
                qt, kt, vt, gt, bt = x
                S = S * jnp.exp(gt)[..., None]
                S = S + jnp.einsum("bhk,bhv->bhkv", bt[..., None] * kt,
                                   vt - jnp.einsum("bhk,bhkv->bhv", kt, S))
                return S, (jnp.einsum("bhk,bhkv->bhv", qt * 12 ** -0.5, S), S)
            _, (o, S) = jax.lax.scan(step, h0, tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, g, beta)))
            return jnp.moveaxis(o, 0, 1), S
        o, states = jax.jit(ref_states)(*(jnp.asarray(x) for x in inputs))
        # Cross-check the test's own scan against the library oracle once (full length).
        o_lib, ht_lib = kda_reference(*(jnp.asarray(x) for x in inputs[:5]),
                                      initial_state=jnp.asarray(inputs[5]), output_final_state=True)
        assert_close(o, o_lib, tol=FP64_EXACT, name="oracle o")
        assert_close(states[-1], ht_lib, tol=FP64_EXACT, name="oracle ht")
        return inputs, np.asarray(o), np.asarray(states)


# Every (T, C) runs in `make test-all`; `make test` keeps the cases that cover each boundary: one token,
# C - 1, C and C + 1 tokens, several chunks with a remainder, at the smallest and the largest chunk.
FAST_T_C = {(1, 16), (15, 16), (16, 16), (17, 16), (257, 16), (65, 32), (63, 64), (64, 64), (65, 64), (200, 64)}


@pytest.mark.parametrize("T, C", [pytest.param(T, C, marks=() if (T, C) in FAST_T_C else pytest.mark.slow)
                                  for T in T_VALUES for C in (16, 32, 64)])
def test_chunk_fp64_equals_recurrence(T, C):
    inputs, o_ref, states = _fp64_case()
    with x64():
        args = [jnp.asarray(x[:, :T]) for x in inputs[:5]]
        f = jax.jit(functools.partial(kda_chunk, output_final_state=True, chunk_size=C))
        o, ht = f(*args, initial_state=jnp.asarray(inputs[5]))
        assert o.dtype == jnp.float64
        assert_close(o_ref[:, :T], o, tol=FP64_EXACT, name="o")
        assert_close(states[T - 1], ht, tol=FP64_EXACT, name="ht")


def test_chunk_fp64_gradients_equal_reference_gradients():
    args = make_inputs(1, 37, 2, 12, 8, seed=4, gate=3.0, dtype=np.float64)
    with x64():
        args = [jnp.asarray(x) for x in args]
        g_ref = grads(kda_reference, args)
        g_chk = grads(functools.partial(kda_chunk, chunk_size=16), args)
        for name, a, b in zip(GRAD_NAMES, g_ref, g_chk):
            assert_close(a, b, dtype="float64", name=name)


@pytest.mark.slow
def test_chunk_vjp_numerically_fp64():
    # Finite differences validate the reverse-mode rule itself (including unit_lower_inverse's VJP).
    args = make_inputs(1, 20, 1, 4, 3, seed=5, dtype=np.float64)
    with x64():
        args = [jnp.asarray(x) for x in args]
        f = jax.jit(lambda *a: kda_chunk(*a[:5], initial_state=a[5], output_final_state=True,
                                         chunk_size=16))
        check_grads(f, args, order=1, modes=["rev"], atol=1e-7, rtol=1e-7)


def test_unit_lower_inverse_and_its_vjp():
    rng = np.random.default_rng(0)
    with x64():
        L = jnp.asarray(np.tril(rng.standard_normal((3, 16, 16)) * 0.3, -1))
        X = unit_lower_inverse(L)
        assert_close(np.broadcast_to(np.eye(16), X.shape), (jnp.eye(16) + L) @ X, dtype="float64")
        # Upper-triangle entries of L are never read, so their gradient must be exactly zero.
        dL = jax.grad(lambda L: jnp.sum(jnp.sin(unit_lower_inverse(L))))(L + jnp.triu(jnp.ones((16, 16))))
        assert float(jnp.max(jnp.abs(jnp.triu(dL)))) == 0.0
        check_grads(lambda L: unit_lower_inverse(jnp.tril(L, -1)), (L,), order=1, modes=["rev"])


def test_intra_chunk_subchunk_factoring_equals_dense_masked_form():
    q, k, _, g, beta, _ = make_inputs(1, 64, 1, 8, 4, seed=6, gate=4.0, dtype=np.float64)
    with x64():
        q, k, g, beta = (jnp.asarray(x[0, :, 0]) for x in (q, k, g, beta))
        G, Aqk, Akk = intra_chunk(q, k, g, beta, sub_chunk=16)
        diff = G[:, None, :] - G[None, :, :]
        i, j = np.tril_indices(64)
        dense = np.zeros((64, 64))
        dense[i, j] = np.einsum("pk,pk,pk->p", q[i], k[j], np.exp(diff[i, j]))
        assert_close(dense, Aqk, dtype="float64", name="Aqk")
        dense_kk = np.zeros((64, 64))
        i, j = np.tril_indices(64, -1)
        dense_kk[i, j] = beta[i] * np.einsum("pk,pk,pk->p", k[i], k[j], np.exp(diff[i, j]))
        assert_close(dense_kk, Akk, dtype="float64", name="Akk")


@pytest.mark.parametrize("C, sub_chunk, gate", [pytest.param(64, 8, 30.0, marks=pytest.mark.slow), (24, 16, 1.0)],
                         ids=["ladder-C64-BC8-strong", "gcd-C24-BC8"])
def test_decay_gram_and_its_handwritten_vjp_equal_dense_masked_form(C, sub_chunk, gate):
    # decay_gram (reference-point factoring + hand-written VJP) against autodiff of the dense masked
    # [C, C, K] form; gate 30 puts in-chunk exponents far below -700, where any exp of a positive exponent
    # (an unmasked or wrongly factored pair) would overflow to inf and show up as NaN / mismatch.
    rng = np.random.default_rng(11)
    N, K = 2, 6
    with x64():
        x = jnp.asarray(rng.standard_normal((N, 2, C, K)))
        k = jnp.asarray(rng.standard_normal((N, C, K)))
        G = jnp.cumsum(-gate * jnp.logaddexp(0.0, jnp.asarray(rng.standard_normal((N, C, K)))), axis=1)
        W = jnp.asarray(rng.standard_normal((N, 2, C, C)))

        def dense(x, k, G):
            diff = G[:, :, None, :] - G[:, None, :, :]
            E = jnp.exp(jnp.where(jnp.tril(jnp.ones((C, C), bool))[..., None], diff, -jnp.inf))
            return jnp.einsum("nsik,njk,nijk->nsij", x, k, E)

        fast = functools.partial(decay_gram, sub_chunk=sub_chunk)
        assert_close(dense(x, k, G), fast(x, k, G), tol=FP64_EXACT, name="A")
        g_dense = jax.grad(lambda *a: jnp.sum(W * dense(*a)), argnums=(0, 1, 2))(x, k, G)
        g_fast = jax.grad(lambda *a: jnp.sum(W * fast(*a)), argnums=(0, 1, 2))(x, k, G)
        for name, a, b in zip(("dx", "dk", "dG"), g_dense, g_fast):
            assert np.all(np.isfinite(np.asarray(b))), name
            assert_close(a, b, dtype="float64", name=name)


@pytest.mark.parametrize("backend", ["reference", "xla"])
def test_varlen_equals_separate_runs(backend):
    lens = [1, 5, 0, 64, 65, 30]
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    T = int(cu[-1])
    q, k, v, g, beta, h0 = make_inputs(1, T, 2, 16, 8, seed=7, n_states=len(lens))
    f = jax.jit(lambda *a, cu: kda(*a[:5], initial_state=a[5], output_final_state=True,
                                   cu_seqlens=cu, backend=backend, chunk_size=16))
    o, ht = f(q, k, v, g, beta, h0, cu=jnp.asarray(cu))  # cu traced: the static-shape layout path
    sep = jax.jit(lambda *a: kda_reference(*a[:5], initial_state=a[5], output_final_state=True))
    for n, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
        if a == b:
            assert_close(h0[n], ht[n], dtype="float32", name="empty sequence keeps its state")
            continue
        o_n, ht_n = sep(*(x[:, a:b] for x in (q, k, v, g, beta)), h0[n:n + 1])
        assert_close(o_n, o[:, a:b], dtype="float32", name=f"o[{n}]")
        assert_close(ht_n[0], ht[n], dtype="float32", name=f"ht[{n}]")


def test_varlen_gradients_match_reference():
    cu = jnp.asarray([0, 17, 20, 50], jnp.int32)
    args = make_inputs(1, 50, 2, 8, 8, seed=8, n_states=3)
    f = lambda backend: functools.partial(kda, cu_seqlens=cu, backend=backend, chunk_size=16)
    for name, a, b in zip(GRAD_NAMES, grads(f("reference"), args), grads(f("xla"), args)):
        assert_close(a, b, dtype="float32", name=name)


_ref64 = jax.jit(lambda q, k, v, g, beta, h0: kda_reference(q, k, v, g, beta, initial_state=h0,
                                                             output_final_state=True))


@pytest.mark.parametrize("gate", [pytest.param(0.0, marks=pytest.mark.slow), pytest.param(1e-4, marks=pytest.mark.slow),
                                  pytest.param(8.0, marks=pytest.mark.slow), 30.0])
def test_strong_decay_stress_finite_and_accurate(gate):
    # g = -gate per step exactly (unbounded decay), beta in {0, 1}, zero-key rows and repeated keys.
    B, T, H, K, V = 1, 70, 2, 16, 8
    q, k, v, _, _, h0 = make_inputs(B, T, H, K, V, seed=9)
    g = np.full((B, T, H, K), -gate, np.float32)
    g[:, ::3, :, ::2] = 0.0                      # some channels keep everything on some steps
    beta = (np.arange(T) % 2).astype(np.float32)[None, :, None].repeat(H, 2)
    k[:, 10] = 0.0                               # k = 0 rows
    k[:, 21:30] = k[:, 20:21]                    # strongly correlated (identical) keys
    args = [q, k, v, g, beta, h0]
    with x64():
        ref = _ref64(*(jnp.asarray(x, jnp.float64) for x in args))
        ref = [np.asarray(x) for x in ref]
    o, ht = forward("xla", chunk_size=64)(*args)
    stress = Tolerance(atol=1e-6, ratio=1e-3, max_abs=1e-3)   # kda.md 6.3 row 9
    assert_close(ref[0], o, tol=stress, name="o")
    assert_close(ref[1], ht, tol=stress, name="ht")
    for name, d in zip(GRAD_NAMES, grads(functools.partial(kda_chunk, chunk_size=64), args,
                                         key="stress-xla")):
        assert np.all(np.isfinite(np.asarray(d))), f"{name} not finite at gate {gate}"

"""The fused Pallas backward of the KDA kernels (``bwd="pallas"``: reverse ``dh`` scan + per-chunk
dq/dk/dv/dg/dbeta kernel), GPU (Triton) form and TPU (Mosaic) form, in interpret mode on CPU.

Gradients for q, k, v, g, beta and h0 are checked against ``jax.grad`` of the token recurrence with
cotangents on both ``o`` and the final state (``kda_testutil.loss_fn``). Tolerances are the project's
(``jaxstack.testing.TOLERANCES``): float32 relative RMS < 1e-5 (a length-T reduction of unit-scale
values in float32 accumulates ~T * 2^-24 relative error; T <= 100 here), bf16 inputs < 5e-3 (about
one bf16 rounding of each side's gradient, which comes back in the primal's dtype).

Shapes are tiny because interpret mode evaluates the kernel bodies op by op; broader sweeps are
``slow``."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstack.pallas_kernels.kda import kda_reference
from jaxstack.pallas_kernels.kda._kernel_math import chunk_bwd, chunk_dstate, chunk_step
from jaxstack.pallas_kernels.kda.pallas import kda_pallas
from jaxstack.testing import assert_close
from kda_testutil import GRAD_NAMES, grads, make_inputs


def _pallas(form, C=16, bwd="pallas"):
    return functools.partial(kda_pallas, form=form, interpret=True, chunk_size=C, bwd=bwd)


def _check_grads(g_ref, g_out, dtype="float32"):
    for name, a, b in zip(GRAD_NAMES, g_ref, g_out):
        assert b.dtype == a.dtype, name
        assert_close(np.asarray(a, np.float32), np.asarray(b, np.float32), dtype=dtype, name=name)


def test_chunk_bwd_math_matches_autodiff_of_chunk_step():
    # The per-chunk backward math (what both kernel forms run) against jax.vjp of the forward chunk
    # step, in plain jnp (no Pallas). K != V and a strong softplus gate; float32 bound as above.
    rng = np.random.default_rng(0)
    C, K, V = 16, 16, 32
    r = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    q, k, v, S, do, dSo = 0.3 * r(C, K), 0.3 * r(C, K), r(C, V), r(K, V), r(C, V), r(K, V)
    G = jnp.cumsum(-2.0 * jnp.logaddexp(0.0, r(C, K)), axis=0)
    beta = jax.nn.sigmoid(r(C, 1))
    autodiff = jax.jit(lambda *a: jax.vjp(chunk_step, *a[:6])[1](a[6:]))
    dq, dk, dv, dG, db, dS = autodiff(q, k, v, G, beta, S, do, dSo)
    ours = jax.jit(chunk_bwd)(q, k, v, G, beta, S, do, dSo)
    for name, a, b in zip(("dq", "dk", "dv", "dG", "dbeta"), (dq, dk, dv, dG, db), ours):
        assert_close(a, b, dtype="float32", name=name)
    assert_close(dS, jax.jit(chunk_dstate)(q, k, G, beta, do, dSo), dtype="float32", name="dS_in")


@pytest.mark.parametrize("form", ["gpu", "tpu"])
def test_pallas_bwd_f32_matches_reference(form):
    # K != V, non-power-of-two K/V (padded to 64/128; V=128 is two V-blocks in the GPU form, so the
    # per-block partial sums are exercised), B = 2, T not a multiple of the chunk size, h0 given.
    # (test_kda_pallas.py's gradient tests run the same default backward at K = V = 16, H = 2.)
    shape = (2, 40, 1, 60, 100)
    args = make_inputs(*shape, seed=sum(shape), gate=2.0)
    _check_grads(grads(kda_reference, args, key="ref"),
                 grads(_pallas(form), args, key=("pallas-bwd", form, shape)))


@pytest.mark.parametrize("form", ["tpu", pytest.param("gpu", marks=pytest.mark.slow)])
def test_pallas_bwd_bf16_inputs(form):
    # The GPU form at this case is test_kda_pallas.py::test_pallas_gradients_bf16_inputs (default bwd).
    args = [x.astype(jnp.bfloat16) if i in (0, 1, 2, 4) else jnp.asarray(x)
            for i, x in enumerate(make_inputs(1, 37, 2, 16, 16, seed=3))]
    _check_grads(grads(kda_reference, args, key="ref"),
                 grads(_pallas(form), args, key=("pallas-bwd-bf16", form)), dtype="bfloat16")


def _seq_loss_grads(lens, form):
    """Gradients of one packed run and of each sequence run on its own (the reference recurrence)."""
    cu = jnp.asarray(np.concatenate([[0], np.cumsum(lens)]), jnp.int32)
    args = make_inputs(1, int(cu[-1]), 2, 16, 24, seed=4, n_states=len(lens))
    packed = grads(functools.partial(_pallas(form), cu_seqlens=cu), args)
    return args, cu, packed


# the gpu form of the varlen case is slow (~12 s); both forms are checked fast in the f32 and bf16 cases
@pytest.mark.parametrize("form", [pytest.param("gpu", marks=pytest.mark.slow), "tpu"])
def test_pallas_bwd_varlen_equals_separate_runs(form):
    # The loss is a sum over tokens and over final states, so the packed gradients split into the
    # per-sequence ones. Lengths: shorter than a chunk, empty, crossing chunk boundaries.
    lens = [5, 0, 33]
    args, cu, packed = _seq_loss_grads(lens, form)
    q, k, v, g, beta, h0 = args
    for n, (a, b) in enumerate(zip(np.asarray(cu[:-1]), np.asarray(cu[1:]))):
        if b == a:
            # An empty sequence: final state = initial state, so dh0 = d/dh (0.5 sin(h) h).
            h = h0[n]
            assert_close(0.5 * (np.cos(h) * h + np.sin(h)), packed[5][n], name=f"dh0[{n}]")
            continue
        one = [x[:, a:b] for x in (q, k, v, g, beta)] + [h0[n:n + 1]]
        sep = grads(kda_reference, one, key="ref")       # compiled once per length, both forms
        for name, d_sep, d_packed in zip(GRAD_NAMES[:5], sep[:5], packed[:5]):
            assert_close(d_sep, d_packed[:, a:b], name=f"{name}[seq {n}]")
        assert_close(sep[5][0], packed[5][n], name=f"dh0[{n}]")


@pytest.mark.parametrize("form", [pytest.param("gpu", marks=pytest.mark.slow), "tpu"])
def test_pallas_bwd_strong_decay_finite(form):
    # g = -30 per step (G reaches -480 inside a chunk: exp underflows, must never overflow or NaN)
    # and beta alternating 0 / 1. All six gradients finite and equal to the reference's. Note on dg:
    # in exact arithmetic it is ~1e-14 here (every path to g carries an exp(-30) factor), while both
    # chunked backwards (XLA and Pallas alike) leave a ~1e-8 absolute residue: dg is the reverse
    # in-chunk cumsum of per-token dG terms of size ~0.1 that cancel. dg therefore passes through the
    # float32 absolute floor (max-abs <= 1e-6), the other five through the relative-RMS bound.
    B, T, H, K, V = 1, 33, 1, 16, 16
    q, k, v, _, _, h0 = make_inputs(B, T, H, K, V, seed=5)
    g = np.full((B, T, H, K), -30.0, np.float32)
    beta = (np.arange(T) % 2).astype(np.float32)[None, :, None]
    args = [q, k, v, g, beta, h0]
    out = grads(_pallas(form), args, key=("pallas-bwd-stress", form))
    for name, d in zip(GRAD_NAMES, out):
        assert np.all(np.isfinite(np.asarray(d))), name
    _check_grads(grads(kda_reference, args, key="ref"), out)


@pytest.mark.slow
def test_bwd_xla_and_pallas_agree():
    # Both backward choices stay selectable and agree (the xla one is the VJP of chunk.py, whose own
    # gradients are tested in test_kda_chunk.py; slow: compiling the XLA backward takes ~10 s).
    args = make_inputs(1, 37, 2, 16, 16, seed=7, gate=2.0)
    _check_grads(grads(_pallas("gpu", bwd="xla"), args, key="pallas-xla-bwd"),
                 grads(_pallas("gpu"), args, key=("pallas-bwd", "gpu", "T37b")))


def test_bwd_rejects_unknown_choice():
    args = make_inputs(1, 4, 1, 16, 16)
    with pytest.raises(ValueError, match="bwd"):
        kda_pallas(*args[:5], bwd="triton", interpret=True)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["gpu", "tpu"])
@pytest.mark.parametrize("shape, C", [((1, 65, 2, 32, 16), 64), ((2, 63, 1, 16, 48), 32),
                                      ((1, 100, 1, 128, 128), 16), ((1, 16, 3, 20, 20), 16),
                                      ((1, 1, 1, 16, 16), 16)],
                         ids=["T65-C64", "B2-T63-C32", "K128-V128", "T16-K20-V20", "T1"])
def test_pallas_bwd_sweep(form, shape, C):
    args = make_inputs(*shape, seed=11 + sum(shape), gate=1.5)
    _check_grads(grads(kda_reference, args, key="ref"), grads(_pallas(form, C), args))


@pytest.mark.slow
@pytest.mark.parametrize("form", ["gpu", "tpu"])
def test_pallas_bwd_varlen_chunk32_stress(form):
    # Varlen with chunk 32 under the strong-decay regime: packed gradients vs the packed reference.
    lens = [1, 31, 0, 40, 65]
    cu = jnp.asarray(np.concatenate([[0], np.cumsum(lens)]), jnp.int32)
    q, k, v, _, _, h0 = make_inputs(1, int(cu[-1]), 1, 16, 16, seed=12, n_states=len(lens))
    rng = np.random.default_rng(12)
    g = -30.0 * rng.uniform(size=q.shape).astype(np.float32)
    beta = rng.integers(0, 2, size=q.shape[:3]).astype(np.float32)
    args = [q, k, v, g, beta, h0]
    ref = grads(functools.partial(kda_reference, cu_seqlens=cu), args)
    _check_grads(ref, grads(functools.partial(_pallas(form, 32), cu_seqlens=cu), args))


def test_tpu_scratch_kernels_never_read_uninitialized_memory():
    # The two TPU-form kernels that carry a VMEM scratch across grid steps (the states recompute and
    # the reverse dh scan), run by the Mosaic interpreter with every uninitialised buffer filled with
    # NaN (and race detection on): on every chunk some sequence owns, and for every non-empty
    # sequence's dh0, they must equal the plain interpret run exactly (same arithmetic). Layout:
    # empty sequences first and in the middle, and padding chunks after the last sequence.
    from jax.experimental.pallas import tpu as pltpu

    from jaxstack.pallas_kernels.kda import _common
    from jaxstack.pallas_kernels.kda.pallas_tpu import kda_bwd_dh_tpu, kda_fwd_tpu

    rng = np.random.default_rng(13)
    C, K, V, H = 16, 16, 16, 1
    lens = jnp.asarray([0, 5, 0, 20], jnp.int32)
    cu = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(lens)])
    segs = _common.varlen_layout(cu, int(cu[-1]), C)[0]
    NT = segs.seq.shape[0]
    L = NT * C
    r = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    q, k, v, do = 0.3 * r(H, L, K), 0.3 * r(H, L, K), r(H, L, V), r(H, L, V)
    G = jnp.cumsum(-jnp.abs(r(H, NT, C, K)), axis=2).reshape(H, L, K)
    beta = jax.nn.sigmoid(r(H, L, 1))
    h0, dht = r(4, H, K, V), r(4, H, K, V)
    meta = [x.astype(jnp.int32) for x in (segs.seq, segs.first, segs.last)]
    nan_init = pltpu.InterpretParams(uninitialized_memory="nan", detect_races=True)
    kw = dict(chunk_size=C, scale=0.25)
    use = np.asarray(jnp.arange(NT) < jnp.sum(segs.nchunks))
    owned = np.asarray(segs.nchunks > 0)
    assert not use.all() and not owned.all()               # the layout has padding and empty sequences

    def same_and_finite(a, b):                             # (assert_array_equal treats NaN == NaN)
        a, b = np.asarray(a), np.asarray(b)
        assert np.all(np.isfinite(b))
        np.testing.assert_array_equal(a, b)

    dh, dh0 = kda_bwd_dh_tpu(q, k, G, beta, do, dht, *meta, interpret=True, **kw)
    dh_n, dh0_n = kda_bwd_dh_tpu(q, k, G, beta, do, dht, *meta, interpret=nan_init, **kw)
    same_and_finite(np.asarray(dh)[:, use], np.asarray(dh_n)[:, use])
    same_and_finite(np.asarray(dh0)[owned], np.asarray(dh0_n)[owned])
    ht, st = kda_fwd_tpu(q, k, v, G, beta, h0, *meta, interpret=True, return_states=True, **kw)
    ht_n, st_n = kda_fwd_tpu(q, k, v, G, beta, h0, *meta, interpret=nan_init, return_states=True, **kw)
    same_and_finite(np.asarray(st)[:, use], np.asarray(st_n)[:, use])
    same_and_finite(np.asarray(ht)[owned], np.asarray(ht_n)[owned])
    try:                                                    # private, version-dependent location
        from jax._src.pallas.mosaic.interpret import interpret_pallas_call as ipc
    except ImportError:
        ipc = None
    races = getattr(ipc, "races", None)
    assert races is None or not races.races_found

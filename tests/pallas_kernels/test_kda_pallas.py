"""Pallas KDA kernels (GPU/Triton form and TPU/Mosaic form) in interpret mode on CPU, against the
reference recurrence: outputs, gradients through the custom VJP, varlen, odd sizes, stress.

Small shapes only: interpret mode evaluates the kernel body op by op."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstack.pallas_kernels.kda import kda, kda_reference, resolve_backend
from jaxstack.pallas_kernels.kda.pallas import kda_pallas
from jaxstack.testing import Tolerance, assert_close
from kda_testutil import GRAD_NAMES, forward, grads, make_inputs

FORMS = ["gpu", "tpu"]
_REF = forward("reference")


@functools.lru_cache(maxsize=None)
def _pallas_fwd(form, C):
    return jax.jit(lambda q, k, v, g, beta, h0=None, cu=None: kda_pallas(
        q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu, form=form,
        interpret=True, chunk_size=C))


def _pallas(form, C=16):
    return functools.partial(kda_pallas, form=form, interpret=True, chunk_size=C)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shape, C", [((2, 40, 2, 60, 24), 16),      # odd K, V; T not a multiple
                                      ((1, 63, 1, 16, 32), 32),
                                      ((1, 65, 1, 32, 16), 64)],
                         ids=["B2-T40-K60-V24-C16", "T63-K16-V32-C32", "T65-K32-V16-C64"])
def test_pallas_f32_matches_reference(form, shape, C):
    args = make_inputs(*shape, seed=sum(shape), gate=2.0)
    o_ref, ht_ref = _REF(*args)
    o, ht = _pallas_fwd(form, C)(*args)
    assert o.dtype == jnp.float32 and ht.dtype == jnp.float32
    assert_close(o_ref, o, dtype="float32", name="o")
    assert_close(ht_ref, ht, dtype="float32", name="ht")


@pytest.mark.parametrize("form", FORMS)
def test_pallas_bf16_inputs_match_reference(form):
    # The reference sees the same bf16-rounded inputs (it upcasts to float32), so the bf16 bound
    # (5e-3 relative RMS, about one bf16 rounding) covers the kernel's error plus o's final rounding.
    args = [x.astype(jnp.bfloat16) if i < 5 and i != 3 else jnp.asarray(x)
            for i, x in enumerate(make_inputs(1, 40, 2, 32, 32, seed=1))]  # g and h0 stay float32
    o_ref, ht_ref = _REF(*args)
    o, ht = _pallas_fwd(form, 16)(*args)
    assert o.dtype == jnp.bfloat16 and ht.dtype == jnp.float32
    assert_close(o_ref.astype(jnp.float32), o.astype(jnp.float32), dtype="bfloat16", name="o")
    assert_close(ht_ref, ht, dtype="bfloat16", name="ht")


@pytest.mark.parametrize("form", ["gpu", pytest.param("tpu", marks=pytest.mark.slow)])
def test_pallas_gradients_match_reference_f32(form):
    # The default (fused Pallas) backward of each form; the TPU form is covered at another shape in
    # test_kda_pallas_bwd.py, so its case here is the slow-tier duplicate.
    args = make_inputs(1, 37, 2, 16, 16, seed=2, gate=2.0)
    g_ref = grads(kda_reference, args, key="ref")
    g_pal = grads(_pallas(form), args, key=f"pallas-{form}")
    for name, a, b in zip(GRAD_NAMES, g_ref, g_pal):
        assert_close(a, b, dtype="float32", name=name)


@pytest.mark.slow  # the bf16 backward is in make test through test_kda_pallas_bwd.py::test_pallas_bwd_bf16_inputs[tpu]
def test_pallas_gradients_bf16_inputs():
    # Both sides' gradients come back in bf16 (the primal dtype), each rounded once: bf16 bound.
    args = [x.astype(jnp.bfloat16) if i in (0, 1, 2, 4) else jnp.asarray(x)
            for i, x in enumerate(make_inputs(1, 37, 2, 16, 16, seed=3))]
    g_ref = grads(kda_reference, args, key="ref-bf16")
    g_pal = grads(_pallas("gpu"), args, key="pallas-gpu-bf16")
    for name, a, b in zip(GRAD_NAMES, g_ref, g_pal):
        assert b.dtype == a.dtype
        assert_close(np.asarray(a, np.float32), np.asarray(b, np.float32), dtype="bfloat16", name=name)


@pytest.mark.parametrize("form", FORMS)
def test_pallas_varlen_equals_reference_varlen(form):
    # The reference's varlen path is an independent per-token reset; it is itself checked against
    # separate runs in test_kda_chunk.py.
    lens = [1, 0, 17, 33, 9]
    cu = jnp.asarray(np.concatenate([[0], np.cumsum(lens)]), jnp.int32)
    args = make_inputs(1, int(cu[-1]), 2, 16, 16, seed=4, n_states=len(lens))
    o_ref, ht_ref = _REF(*args, cu)
    o, ht = _pallas_fwd(form, 16)(*args, cu)
    assert_close(o_ref, o, dtype="float32", name="o")
    assert_close(ht_ref, ht, dtype="float32", name="ht")


def test_pallas_strong_decay_finite_with_grads():
    B, T, H, K, V = 1, 33, 1, 16, 16
    q, k, v, _, _, h0 = make_inputs(B, T, H, K, V, seed=5)
    g = np.full((B, T, H, K), -30.0, np.float32)
    beta = (np.arange(T) % 2).astype(np.float32)[None, :, None]
    args = [q, k, v, g, beta, h0]
    o_ref, ht_ref = _REF(*args)
    o, ht = _pallas_fwd("gpu", 16)(*args)
    assert_close(o_ref, o, dtype="float32", name="o")
    assert_close(ht_ref, ht, dtype="float32", name="ht")
    for name, d in zip(GRAD_NAMES, grads(_pallas("gpu"), args, key="pallas-gpu-stress")):
        assert np.all(np.isfinite(np.asarray(d))), name


def test_backend_resolution():
    assert resolve_backend("auto", "cpu") == "xla"
    assert resolve_backend("auto", "gpu") == "pallas_gpu"
    assert resolve_backend("auto", "tpu") == "pallas_tpu"
    assert resolve_backend("pallas", "cpu") == "pallas_interpret"
    assert resolve_backend("reference", "tpu") == "reference"


def test_kda_pallas_backend_on_cpu_runs_interpret():
    args = make_inputs(1, 20, 1, 16, 16, seed=6)
    o_ref, _ = _REF(*args)
    o, ht = kda(*args[:5], initial_state=args[5], backend="pallas")
    assert ht is None
    assert_close(o_ref, o, dtype="float32", name="o")


def test_kda_pallas_rejects_bad_chunk_size():
    args = make_inputs(1, 4, 1, 16, 16)
    with pytest.raises(ValueError, match="chunk_size"):
        kda_pallas(*args[:5], chunk_size=48, interpret=True)

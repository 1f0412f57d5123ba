"""Cross-lowering from this CPU host (issue 3 item 2): the GPU-form kernel lowers Pallas -> Triton for
CUDA and the TPU-form kernel lowers Pallas -> Mosaic for TPU, so backend-illegal code (non-power-of-two
blocks on Triton, ``cumsum`` / ``dynamic_slice`` on Mosaic, ...) fails here without an accelerator.

Lowering runs under an abstract mesh whose device is an H200 / a TPU v6e. It stops before PTX/ptxas
and before Mosaic's final compile, so register spills or VMEM overflow still only show on hardware.
The negative controls prove each check can fail."""

import functools

import jax
import jax.numpy as jnp
import pytest
from jax.experimental import pallas as pl

from jaxstack.pallas_kernels.kda.pallas import kda_pallas
from jaxstack.pallas_kernels.kda.pallas_gpu import kda_bwd_chunk_gpu, kda_fwd_gpu

SD = jax.ShapeDtypeStruct


def _lower(f, args, platform):
    from jax.sharding import AbstractDevice, AbstractMesh, AxisType
    dev = (AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="gpu") if platform == "cuda"
           else AbstractDevice(device_kind="TPU v6 lite", num_cores=1, platform="tpu"))
    mesh = AbstractMesh((1,), ("x",), (AxisType.Explicit,), abstract_device=dev)
    with jax.sharding.use_abstract_mesh(mesh):
        return jax.jit(f).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def _args(B, T, H, K, V, N=None, varlen=False, dtype=jnp.bfloat16):
    a = [SD((B, T, H, K), dtype), SD((B, T, H, K), dtype), SD((B, T, H, V), dtype),
         SD((B, T, H, K), jnp.float32), SD((B, T, H), dtype), SD((N or B, H, K, V), jnp.float32)]
    if varlen:
        a.append(SD((N + 1,), jnp.int32))
    return a


def _fn(form, C):
    def f(q, k, v, g, beta, h0, cu=None):
        return kda_pallas(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu,
                          form=form, interpret=False, chunk_size=C)
    return f


@pytest.mark.parametrize("C", [16, 64])
@pytest.mark.parametrize("varlen", [False, True], ids=["batch", "varlen"])
@pytest.mark.parametrize("form, platform, marker", [("gpu", "cuda", "triton"),
                                                    ("tpu", "tpu", "tpu_custom_call")])
def test_kernel_lowers_for_its_backend(form, platform, marker, varlen, C):
    args = (_args(1, 100, 2, 128, 128, N=3, varlen=True) if varlen
            else _args(2, 100, 2, 60, 100))       # odd K, V: the wrapper pads to powers of two
    text = _lower(_fn(form, C), args, platform)
    assert marker in text


def _grad_fn(form, C):
    loss = lambda *a: (lambda o, ht: jnp.sum(o.astype(jnp.float32)) + jnp.sum(ht))(*_fn(form, C)(*a))
    return lambda *a: jax.grad(loss, argnums=tuple(range(6)))(*a)


@pytest.mark.parametrize("C", [16, 64])
@pytest.mark.parametrize("varlen", [False, True], ids=["batch", "varlen"])
@pytest.mark.parametrize("form, platform, marker", [("gpu", "cuda", "triton"),
                                                    ("tpu", "tpu", "tpu_custom_call")])
def test_backward_kernels_lower_for_their_backend(form, platform, marker, varlen, C):
    # jax.grad through the custom VJP: the forward kernel twice (primal, and the states recompute in
    # the backward), the reverse dh scan and the fused per-chunk backward, all for the real backend.
    args = (_args(1, 100, 2, 128, 128, N=3, varlen=True) if varlen
            else _args(2, 100, 2, 60, 100))
    text = _lower(_grad_fn(form, C), args, platform)
    assert text.count(marker) >= 4
    for name in (f"kda_fwd_{form}", f"kda_bwd_dh_{form}", f"kda_bwd_chunk_{form}"):
        assert name in text, name


def test_gpu_lowering_rejects_non_power_of_two_blocks():
    # Negative control: call the raw kernel with K = 24 (no padding); Triton must refuse it.
    H, L, K, V = 1, 32, 24, 32
    args = [SD((H, L, K), jnp.float32)] * 2 + [SD((H, L, V), jnp.float32), SD((H, L, K), jnp.float32),
            SD((H, L, 1), jnp.float32), SD((1, H, K, V), jnp.float32), SD((1,), jnp.int32),
            SD((1,), jnp.int32)]
    f = lambda q, k, v, G, b, h0, cs, nc: kda_fwd_gpu(q, k, v, G, b, h0, cs, nc, chunk_size=16,
                                                        scale=1.0)
    with pytest.raises(Exception, match="power of 2|powers of 2|power-of-2"):
        _lower(f, args, "cuda")


def test_tpu_lowering_rejects_cumsum():
    # Negative control: Mosaic has no cumsum lowering (why the kernels take G precomputed).
    from jax.experimental.pallas import tpu as pltpu

    def kernel(x_ref, o_ref):
        o_ref[...] = jnp.cumsum(x_ref[...], axis=0)

    f = lambda x: pl.pallas_call(kernel, out_shape=SD((16, 128), jnp.float32),
                                 compiler_params=pltpu.CompilerParams())(x)
    with pytest.raises(Exception, match="cumsum"):
        _lower(f, [SD((16, 128), jnp.float32)], "tpu")


def test_gpu_backward_lowering_rejects_non_power_of_two_blocks():
    # Negative control for the backward: the raw per-chunk kernel with K = 24 must fail on Triton.
    H, L, K, V = 1, 32, 24, 32
    args = ([SD((H, L, K), jnp.float32)] * 2 + [SD((H, L, V), jnp.float32), SD((H, L, K), jnp.float32),
            SD((H, L, 1), jnp.float32), SD((H, L, V), jnp.float32)] + [SD((H, L // 16, K, V), jnp.float32)] * 2)
    f = lambda *a: kda_bwd_chunk_gpu(*a, chunk_size=16, scale=1.0)
    with pytest.raises(Exception, match="power of 2|powers of 2|power-of-2"):
        _lower(f, args, "cuda")

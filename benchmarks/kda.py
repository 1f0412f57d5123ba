"""KDA kernel benchmarks.

CPU (default; what CI machines can run):

    .venv/bin/python benchmarks/kda.py                     # T = 1k, 2k, 4k; K = V = 128 and 64 -> results/kda_cpu.json
    .venv/bin/python benchmarks/kda.py --cpu-T 1024 2048 4096 8192 --cpu-K 128 --cpu-H 16

  Times the chunked XLA path (``backend="xla"``) against the token-recurrence reference
  (``backend="reference"``), forward and forward+backward (grad wrt q, k, v, g, beta), float32,
  B=1, H=4, K=V=128 (Kimi Linear's KDA head dim, as in the GPU benchmark) and K=V=64. Both are measured in the same run, interleaved round-robin, with the 1-minute load
  average recorded per row; the JSON records the ratios. Issue 3 target:
  xla >= 5x faster than reference at T=4096 forward+backward.

GPU (prepared, not yet run here; needs jax[cuda] on an NVIDIA GPU):

    python benchmarks/kda.py --gpu [--gpu-H 8 32 64] [--gpu-T 4096 16384 65536 262144]
                                   [--gpu-bwd-T 4096 16384 65536] [--out benchmarks/results/kda_gpu.json]

  bf16 q/k/v/beta, float32 g, K = V = 128, B = 1. For each (H, T) it times, forward and fwd+bwd:
    * jaxstack Pallas (Triton form, ``backend="pallas"``);
    * jaxstack XLA chunked (``backend="xla"``; only for T <= 16k, it materialises per-chunk tensors);
    * fla's Triton ``chunk_kda`` if ``import fla`` works (``pip install --no-deps fla-core``), via torch;
    * causal cuDNN flash attention (``jax.nn.dot_product_attention(implementation="cudnn")``) at the
      same H and head dim, up to T = 64k (quadratic beyond);
  plus a single-token decode step (``kda_decode_step``) at B in {1, 64}, H = 32.
  The Pallas fwd+bwd is timed with both backwards of its custom VJP: ``pallas_fwd_bwd_ms`` (the fused
  Pallas backward: states recompute + reverse dh scan + per-chunk dq/dk/dv/dg/dbeta kernel, the
  default) and ``pallas_xlabwd_fwd_bwd_ms`` (same Pallas forward, backward = VJP of the XLA chunk
  form). What to compare: pallas vs pallas_xlabwd (does the fused backward pay off?) and pallas vs
  fla_fwd_bwd (the Triton reference implementation), at T >= 16k where launch overhead stops
  dominating. A ``correctness`` block records the relative RMS of the Pallas gradients (both
  backwards) against ``jax.grad`` of the reference recurrence at one small float32 shape on the device.

  CPU dry run of this script (interpret-mode Pallas, tiny sizes; proves it runs, not a timing):

    .venv/bin/python benchmarks/kda.py --gpu --interpret --gpu-H 1 --gpu-T 64 --gpu-bwd-T 64 \
        --gpu-K 32 --reps 1 --out /tmp/kda_gpu_dryrun.json
  Method: compile/warm up once, then the median of ``--reps`` runs with ``block_until_ready`` (JAX) or
  ``torch.cuda.synchronize`` (torch). Records device, driver, jax/jaxlib/triton/torch/fla versions.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxstack.pallas_kernels.kda import kda, kda_decode_step, kda_reference  # noqa: E402
from jaxstack.pallas_kernels.kda.pallas import kda_pallas  # noqa: E402


def _time(fn, *args, reps=5):
    jax.block_until_ready(fn(*args))            # compile + warm-up
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def _inputs(B, T, H, K, V, dtype, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, T, H, K), np.float32)
    k = rng.standard_normal((B, T, H, K), np.float32)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((B, T, H, V), np.float32)
    g = -np.logaddexp(0, rng.standard_normal((B, T, H, K))).astype(np.float32)
    beta = (1 / (1 + np.exp(-rng.standard_normal((B, T, H))))).astype(np.float32)
    cast = lambda x: jnp.asarray(x, dtype)
    return cast(q), cast(k), cast(v), jnp.asarray(g), cast(beta)


def _fns(backend, **kw):
    fwd = jax.jit(lambda q, k, v, g, b: kda(q, k, v, g, b, backend=backend, **kw)[0])

    def loss(q, k, v, g, b):
        return jnp.sum(kda(q, k, v, g, b, backend=backend, **kw)[0].astype(jnp.float32))

    bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))
    return fwd, bwd


def _pallas_fns(bwd, interpret, chunk_size=16):
    """Forward and grad of the Pallas (GPU-form) path with the chosen custom-VJP backward."""
    run = lambda q, k, v, g, b: kda_pallas(q, k, v, g, b, form="gpu", interpret=interpret,
                                           chunk_size=chunk_size, bwd=bwd)[0]
    fwd = jax.jit(run)
    loss = lambda q, k, v, g, b: jnp.sum(run(q, k, v, g, b).astype(jnp.float32))
    return fwd, jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))


def _grad_check(interpret, K):
    """Relative RMS of the Pallas gradients (both backwards) vs grad of the reference recurrence,
    float32, cotangents on o and on the final state."""
    from jaxstack.testing import relative_rms

    B, T, H = 1, 100, 2
    q, k, v, g, beta = _inputs(B, T, H, K, K, jnp.float32, seed=1)
    h0 = jnp.asarray(np.random.default_rng(2).standard_normal((B, H, K, K)), jnp.float32)

    def grads(f):
        def loss(*a):
            o, ht = f(*a[:5], initial_state=a[5], output_final_state=True)
            return jnp.sum(o * jnp.cos(o)) + 0.5 * jnp.sum(jnp.sin(ht) * ht)
        return jax.jit(jax.grad(loss, argnums=tuple(range(6))))(q, k, v, g, beta, h0)

    ref = grads(kda_reference)
    out = dict(shape=dict(B=B, T=T, H=H, K=K, V=K, dtype="float32"))
    for bwd in ("pallas", "xla"):
        got = grads(lambda *a, **kw: kda_pallas(*a, form="gpu", interpret=interpret, bwd=bwd, **kw))
        out[f"bwd_{bwd}_relative_rms"] = {n: relative_rms(r, x) for n, r, x in
                                          zip(("dq", "dk", "dv", "dg", "dbeta", "dh0"), ref, got)}
    out["bound"] = 1e-5
    return out


def _time_interleaved(fns, args, reps):
    """Median ms per function, the functions run round-robin (one rep of each per round) so that load
    changes on a shared machine hit all of them alike; also the min (least-disturbed) time."""
    for fn in fns.values():
        jax.block_until_ready(fn(*args))        # compile + warm-up
    ts = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            ts[name].append(time.perf_counter() - t0)
    return ({n: statistics.median(v) * 1e3 for n, v in ts.items()},
            {n: min(v) * 1e3 for n, v in ts.items()})


def run_cpu(Ts, reps, out, chunk_size=None, Ks=(128, 64), H=4):
    B = 1
    rows = []
    for K in Ks:
        V = K
        for T in Ts:
            args = _inputs(B, T, H, K, V, jnp.float32)
            ref_f, ref_b = _fns("reference")
            xla_f, xla_b = _fns("xla", chunk_size=chunk_size)
            load_before = os.getloadavg()
            med, best = _time_interleaved({"reference_fwd": ref_f, "xla_fwd": xla_f,
                                           "reference_fwd_bwd": ref_b, "xla_fwd_bwd": xla_b}, args, reps)
            row = dict(K=K, V=V, T=T)
            row.update({f"{n}_ms": v for n, v in med.items()})
            row["speedup_fwd"] = med["reference_fwd"] / med["xla_fwd"]
            row["speedup_fwd_bwd"] = med["reference_fwd_bwd"] / med["xla_fwd_bwd"]
            row["speedup_fwd_bwd_min_times"] = best["reference_fwd_bwd"] / best["xla_fwd_bwd"]
            row["loadavg_1m_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = dict(
        benchmark="kda xla-chunk vs reference (CPU)",
        command=("python benchmarks/kda.py --cpu-T " + " ".join(map(str, Ts)) + " --cpu-K " + " ".join(map(str, Ks))
                 + f" --cpu-H {H}"),
        shape=dict(B=B, H=H, K_V=list(Ks), dtype="float32", chunk_size=chunk_size or 64,
                   note="K = V = 128 is Kimi Linear's KDA head dim (and the GPU benchmark's); 64 for comparison"),
        method=(f"jit, one warm-up, then {reps} rounds running the four functions round-robin; median "
                "per function (speedup_fwd_bwd_min_times: ratio of the fastest runs); fwd+bwd = grad "
                "wrt q,k,v,g,beta of sum(o)"),
        host=dict(platform=platform.platform(), cpu_count=os.cpu_count(), python=platform.python_version(),
                  jax=jax.__version__, backend=jax.default_backend(),
                  note="shared 2-core machine; see the load average per row"),
        target="xla >= 5x reference at T=4096 fwd+bwd (issue 3)",
        rows=rows,
    )
    pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def _versions():
    v = dict(jax=jax.__version__, devices=[d.device_kind for d in jax.devices()])
    for mod in ("jaxlib", "triton", "torch", "fla"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001 - recorded, not fatal
            v[mod] = f"unavailable ({type(e).__name__})"
    try:
        import subprocess
        v["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:  # noqa: BLE001
        v["driver"] = "unknown"
    return v


def _fla_times(B, T, H, K, V, reps, with_bwd):
    """fla's Triton chunk_kda through torch (None if fla/torch/CUDA are unavailable)."""
    try:
        import torch
        from fla.ops.kda import chunk_kda
    except Exception:  # noqa: BLE001
        return None
    if not torch.cuda.is_available():          # e.g. the CPU dry run with fla-core installed
        return None
    dev = "cuda"
    mk = lambda *s: torch.randn(*s, device=dev, dtype=torch.bfloat16)
    q, k, v = mk(B, T, H, K), mk(B, T, H, K), mk(B, T, H, V)
    q = torch.nn.functional.normalize(q.float(), dim=-1).bfloat16().requires_grad_(with_bwd)
    k = torch.nn.functional.normalize(k.float(), dim=-1).bfloat16().requires_grad_(with_bwd)
    v.requires_grad_(with_bwd)
    g = (-torch.nn.functional.softplus(torch.randn(B, T, H, K, device=dev))).requires_grad_(with_bwd)
    beta = torch.rand(B, T, H, device=dev, dtype=torch.bfloat16).requires_grad_(with_bwd)

    def run():
        o, _ = chunk_kda(q, k, v, g, beta)
        if with_bwd:
            o.float().sum().backward()
        return o

    run()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def run_gpu(Hs, Ts, bwd_Ts, reps, out, interpret=False, K=128):
    V = K
    B = 1
    rows = []
    correctness = _grad_check(interpret, min(K, 64))
    print(json.dumps(dict(correctness=correctness)), flush=True)
    for H in Hs:
        for T in Ts:
            args = _inputs(B, T, H, K, V, jnp.bfloat16)
            row = dict(H=H, T=T)
            f, b = _pallas_fns("pallas", interpret)
            row["pallas_fwd_ms"] = _time(f, *args, reps=reps)
            if T in bwd_Ts:
                row["pallas_fwd_bwd_ms"] = _time(b, *args, reps=reps)
                row["pallas_xlabwd_fwd_bwd_ms"] = _time(_pallas_fns("xla", interpret)[1], *args, reps=reps)
            if T <= 16384:                 # the XLA chunk form materialises per-chunk tensors
                f, b = _fns("xla")
                row["xla_fwd_ms"] = _time(f, *args, reps=reps)
                if T in bwd_Ts:
                    row["xla_fwd_bwd_ms"] = _time(b, *args, reps=reps)
            row["fla_fwd_ms"] = _fla_times(B, T, H, K, V, reps, False)
            if T in bwd_Ts:
                row["fla_fwd_bwd_ms"] = _fla_times(B, T, H, K, V, reps, True)
            if T <= 65536:
                qa = args[0].astype(jnp.bfloat16)
                att = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
                    q, k, v, is_causal=True, implementation="cudnn"))
                try:
                    row["cudnn_attention_fwd_ms"] = _time(att, qa, args[1], args[2], reps=reps)
                except Exception as e:  # noqa: BLE001 - recorded
                    row["cudnn_attention_fwd_ms"] = f"failed: {type(e).__name__}: {str(e)[:200]}"
            print(json.dumps(row), flush=True)
            rows.append(row)
    decode = []
    for Bd in (1, 64):
        H = 32
        rng = np.random.default_rng(0)
        mk = lambda *s, dt=jnp.bfloat16: jnp.asarray(rng.standard_normal(s), dt)
        state = jnp.zeros((Bd, H, K, V), jnp.float32)
        step = jax.jit(kda_decode_step)
        ms = _time(step, mk(Bd, H, K), mk(Bd, H, K), mk(Bd, H, V), -jnp.abs(mk(Bd, H, K, dt=jnp.float32)),
                   jnp.full((Bd, H), 0.5, jnp.bfloat16), state, reps=reps)
        decode.append(dict(B=Bd, H=H, decode_step_ms=ms, state_bytes=Bd * H * K * V * 4))
    result = dict(benchmark="kda GPU: jaxstack pallas/xla vs fla chunk_kda vs cuDNN attention",
                  command=" ".join(sys.argv), versions=_versions(), shape=dict(B=B, K=K, V=V, dtype="bfloat16"),
                  interpret=interpret, correctness=correctness, rows=rows, decode=decode)
    if interpret:
        result["note"] = "interpret-mode dry run: the times are not kernel timings"
    pathlib.Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="run the GPU benchmark instead of the CPU one")
    p.add_argument("--cpu-T", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--cpu-K", type=int, nargs="+", default=[128, 64], help="CPU: head dims K = V to time")
    p.add_argument("--cpu-H", type=int, default=4, help="CPU: number of heads")
    p.add_argument("--gpu-H", type=int, nargs="+", default=[8, 32, 64])
    p.add_argument("--gpu-T", type=int, nargs="+", default=[4096, 16384, 65536, 262144])
    p.add_argument("--gpu-bwd-T", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--chunk-size", type=int, default=None, help="CPU: chunk size of the xla path (default 64)")
    p.add_argument("--gpu-K", type=int, default=128, help="GPU: head dim K = V (shrink for a dry run)")
    p.add_argument("--interpret", action="store_true",
                   help="GPU script: run the Pallas kernels in interpret mode (CPU dry run at tiny size)")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if a.gpu:
        run_gpu(a.gpu_H, a.gpu_T, set(a.gpu_bwd_T), a.reps or 20,
                a.out or str(ROOT / "benchmarks/results/kda_gpu.json"), interpret=a.interpret, K=a.gpu_K)
    else:
        run_cpu(a.cpu_T, a.reps or 5, a.out or str(ROOT / "benchmarks/results/kda_cpu.json"), a.chunk_size,
                Ks=tuple(a.cpu_K), H=a.cpu_H)


if __name__ == "__main__":
    main()

"""Regenerates the KDA golden fixtures in tests/fixtures/kda/ from fla's ``naive_recurrent_kda``.

The test suite never imports fla; it reads the committed ``.npz`` files. To regenerate (CPU is fine):

    .venv/bin/pip install fla-core triton==3.8.0      # fla.ops imports triton; on CPU it falls back
    .venv/bin/python scripts/make_kda_fixtures.py

fla computes in float32 whatever the input dtype; inputs are drawn in float32, so the fixtures hold
float32 inputs and float32 outputs. Cases cover K != V, a given vs a zero initial state, a custom
scale, unit-norm q/k (as Kimi Linear feeds them) and a strong softplus gate.
"""

from __future__ import annotations

import os
import pathlib
import sys

import numpy as np

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "kda"

# (name, B, T, H, K, V, with_h0, scale, gate_strength, seed)
CASES = [
    ("basic", 2, 37, 2, 32, 48, True, None, 1.0, 0),
    ("no_h0_scale", 1, 64, 2, 16, 16, False, 0.3, 1.0, 1),
    ("strong_gate", 1, 50, 2, 32, 32, True, None, 8.0, 2),
    ("odd_kv", 1, 21, 1, 24, 40, True, None, 0.5, 3),
]


def _inputs(B, T, H, K, V, with_h0, gate_strength, seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, T, H, K)).astype(np.float32)
    k = rng.standard_normal((B, T, H, K)).astype(np.float32)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((B, T, H, V)).astype(np.float32)
    # Softplus gate with unit A: g = -strength * softplus(x), <= 0.
    g = (-gate_strength * np.logaddexp(0.0, rng.standard_normal((B, T, H, K)))).astype(np.float32)
    beta = (1.0 / (1.0 + np.exp(-rng.standard_normal((B, T, H))))).astype(np.float32)
    h0 = rng.standard_normal((B, H, K, V)).astype(np.float32) if with_h0 else None
    return q, k, v, g, beta, h0


def main():
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import torch
    from fla.ops.kda.naive import naive_recurrent_kda

    OUT.mkdir(parents=True, exist_ok=True)
    for name, B, T, H, K, V, with_h0, scale, strength, seed in CASES:
        q, k, v, g, beta, h0 = _inputs(B, T, H, K, V, with_h0, strength, seed)
        t = lambda x: None if x is None else torch.from_numpy(x)
        o, ht = naive_recurrent_kda(t(q), t(k), t(v), t(g), t(beta), scale=scale,
                                    initial_state=t(h0), output_final_state=True)
        arrays = dict(q=q, k=k, v=v, g=g, beta=beta, o=o.float().numpy(), ht=ht.float().numpy(),
                      scale=np.float64(np.nan if scale is None else scale))
        if h0 is not None:
            arrays["h0"] = h0
        np.savez_compressed(OUT / f"{name}.npz", **arrays)
        print(f"wrote {name}.npz: o {arrays['o'].shape}, ht {arrays['ht'].shape}", file=sys.stderr)


if __name__ == "__main__":
    main()

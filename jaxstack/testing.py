"""Numerical comparison helpers shared by the test suite (and usable by anyone testing a kernel).

``assert_close`` implements the project's one tolerance rule: pass if the max-abs error is under an
absolute floor; otherwise the relative RMS error ``||ref - out|| / ||ref||`` must be under ``ratio``
*and* the max-abs error under ``max_abs``. Tolerances per dtype live in :data:`TOLERANCES`.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """``atol``: max-abs floor that always passes; ``ratio``: relative-RMS bound; ``max_abs``: max-abs bound."""

    atol: float
    ratio: float
    max_abs: float


# Per input dtype. float32: a length-T reduction of unit-scale values accumulates ~T * 2^-24 relative
# error, so 1e-5 relative RMS leaves headroom up to T ~ 1e2..1e3 with cancellation. bfloat16 has an
# 8-bit mantissa (2^-8 = 3.9e-3 per rounding), so 5e-3 relative RMS is about one rounding.
TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(atol=1e-12, ratio=1e-12, max_abs=1e-10),
    "float32": Tolerance(atol=1e-6, ratio=1e-5, max_abs=1e-3),
    "bfloat16": Tolerance(atol=1e-3, ratio=5e-3, max_abs=5e-2),
    "float16": Tolerance(atol=1e-4, ratio=2e-3, max_abs=2e-2),
}


def relative_rms(ref, out) -> float:
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    denom = np.sqrt(np.mean(ref**2))
    err = np.sqrt(np.mean((ref - out) ** 2))
    return float(err / denom) if denom > 0 else float(err)


def assert_close(ref, out, *, dtype: str | None = None, tol: Tolerance | None = None, name: str = "value"):
    """Asserts ``out`` matches ``ref`` under the project's tolerance rule (see module docstring)."""
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    if ref.shape != out.shape:
        raise AssertionError(f"{name}: shape {out.shape} != reference shape {ref.shape}")
    if tol is None:
        tol = TOLERANCES[dtype or "float32"]
    if not np.all(np.isfinite(out)):
        raise AssertionError(f"{name}: non-finite values in output")
    max_abs = float(np.max(np.abs(ref - out))) if ref.size else 0.0
    if max_abs <= tol.atol:
        return
    ratio = relative_rms(ref, out)
    if ratio > tol.ratio or max_abs > tol.max_abs:
        raise AssertionError(
            f"{name}: relative RMS {ratio:.3e} (bound {tol.ratio:.1e}), max-abs {max_abs:.3e} "
            f"(bound {tol.max_abs:.1e})"
        )

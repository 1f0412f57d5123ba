"""The ADP paper's training mixture: ``m_d = ceil(w_d * n_d)`` examples from dataset ``d``.

With ``w < 1`` the ``m`` examples are drawn *without* replacement; with ``w == 1`` every example is
taken once; with ``w > 1`` the paper draws with replacement (``upsample="replacement"``, the
default here); ``upsample="repeat"`` instead takes ``floor(w)`` full copies plus a draw without
replacement for the remainder, so every example appears at least ``floor(w)`` times.

Draws are seeded per dataset from ``(seed, crc32(name))``, so a dataset's sample does not change
when other datasets are added or removed, and the result does not depend on dict order.
"""

from __future__ import annotations

import fnmatch
import math
import zlib
from collections.abc import Mapping
from typing import Literal

import numpy as np

PAPER_WEIGHTS: dict[str, float] = {
    "agenttuning_*": 2.0,
    "code_feedback": 0.1,
    "nebius_swe_agent": 0.2,
    "orca_agentinstruct": 0.001,
    "synatra": 0.01,
    "swe_gym": 3.0,
}
"""The weights of the ADP paper's App. C (datasets not listed have weight 1)."""


def weight_for(name: str, weights: Mapping[str, float], default: float = 1.0) -> float:
    """The weight of dataset ``name``: an exact key, else the longest matching glob pattern."""
    if name in weights:
        return float(weights[name])
    matches = sorted((p for p in weights if fnmatch.fnmatchcase(name, p)), key=lambda p: (-len(p), p))
    return float(weights[matches[0]]) if matches else float(default)


def mixture_count(n: int, weight: float) -> int:
    """``ceil(weight * n)``; ``weight`` must be >= 0. Guards float noise (``0.1 * 30`` is 3)."""
    if weight < 0 or n < 0:
        raise ValueError(f"weight and size must be >= 0, got weight={weight}, n={n}")
    return math.ceil(round(weight * n, 9))


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def sample_indices(
    name: str,
    n: int,
    weight: float,
    seed: int,
    upsample: Literal["replacement", "repeat"] = "replacement",
) -> list[int]:
    """The example indices (sorted) drawn from dataset ``name`` of size ``n``."""
    m = mixture_count(n, weight)
    if n == 0 or m == 0:
        return []
    rng = _rng(seed, name)
    if m < n:
        picked = rng.choice(n, size=m, replace=False)
    elif m == n:
        picked = np.arange(n)
    elif upsample == "replacement":
        picked = rng.choice(n, size=m, replace=True)
    elif upsample == "repeat":
        copies, rest = divmod(m, n)
        picked = np.concatenate([np.tile(np.arange(n), copies), rng.choice(n, size=rest, replace=False)])
    else:
        raise ValueError(f"upsample must be 'replacement' or 'repeat', got {upsample!r}")
    return sorted(int(i) for i in picked)


def mixture_plan(
    sizes: Mapping[str, int],
    weights: Mapping[str, float] | None = None,
    *,
    seed: int = 0,
    upsample: Literal["replacement", "repeat"] = "replacement",
    shuffle: bool = True,
) -> list[tuple[str, int]]:
    """The mixed epoch as ``(dataset, index)`` pairs.

    Args:
      sizes: dataset name -> number of examples.
      weights: dataset name or glob pattern -> weight (default: :data:`PAPER_WEIGHTS`); missing
        datasets have weight 1.
      seed: the sampling seed; the same seed gives the same plan.
      upsample: how to draw when ``w > 1`` (see the module docstring).
      shuffle: interleave the datasets with a seeded permutation; otherwise the pairs are grouped
        by dataset name, indices ascending.
    """
    weights = PAPER_WEIGHTS if weights is None else weights
    plan = [
        (name, index)
        for name in sorted(sizes)
        for index in sample_indices(name, sizes[name], weight_for(name, weights), seed, upsample)
    ]
    if shuffle and plan:
        order = np.random.default_rng([seed, 0x5EED]).permutation(len(plan))
        plan = [plan[i] for i in order]
    return plan

"""Tool latencies and the virtual clock: every call's latency is a deterministic hash of
``(seed, tool, arguments)``, independent of call order."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any



def _unit_hash(*parts: Any) -> float:
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return (int.from_bytes(h[:8], "big") + 0.5) / 2**64


@dataclass(frozen=True)
class LatencyModel:
    """Log-normal tool latencies (seconds), a deterministic hash of ``(seed, tool, args)``.

    ``means`` maps tool name -> mean latency; ``sigma`` is the log-space standard deviation;
    ``llm_turn`` is the (fixed) latency charged per LLM call by the experiments.
    """

    seed: int = 0
    means: tuple[tuple[str, float], ...] = (
        ("search", 0.3), ("visit", 1.2), ("wiki_search", 0.3), ("lookup", 0.3),
        ("compare", 0.0), ("filter", 0.0), ("join", 0.0),
    )
    sigma: float = 0.5
    llm_turn: float = 1.0

    def __post_init__(self):
        if self.sigma < 0:
            raise ValueError(f"LatencyModel.sigma must be >= 0, got {self.sigma}")
        for name, m in self.means:
            if m < 0:
                raise ValueError(f"LatencyModel.means[{name!r}] must be >= 0, got {m}")

    def mean(self, tool: str) -> float:
        d = dict(self.means)
        if tool not in d:
            raise KeyError(f"LatencyModel has no latency for tool {tool!r}; known: {sorted(d)}")
        return d[tool]

    def latency(self, tool: str, args: Any) -> float:
        """Seconds for one call of ``tool`` with ``args``; same inputs, same latency."""
        mean = self.mean(tool)
        if mean == 0:
            return 0.0
        z = NormalDist().inv_cdf(_unit_hash(self.seed, tool, args))
        mu = math.log(mean) - self.sigma**2 / 2
        return math.exp(mu + self.sigma * z)


class VirtualClock:
    """A deterministic clock: ``now`` only moves when :meth:`advance_to` / :meth:`advance` is
    called. Used by the virtual-time executor and the experiments' makespan accounting."""

    def __init__(self, start: float = 0.0):
        self.now = float(start)

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        self.now += seconds
        return self.now

    def advance_to(self, t: float) -> float:
        if t < self.now:
            raise ValueError(f"cannot move the virtual clock back from {self.now} to {t}")
        self.now = float(t)
        return self.now

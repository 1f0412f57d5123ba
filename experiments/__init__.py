"""Experiment modules, one per study. Each has a frozen ``Config``, ``PRESETS`` (``tiny`` = CPU minutes,
``paper`` = accelerator scale) and ``run(config) -> run directory``; ``jaxstack run <name>`` calls them."""

from __future__ import annotations

import importlib

# experiment name (CLI) -> module
EXPERIMENTS = {
    "demo": "experiments.demo",
    "agentfold": "experiments.agentfold",
    "gap": "experiments.gap",
    "adp": "experiments.adp",
    "kimi-linear": "experiments.kimi_linear",
    "precision-rl": "experiments.precision_rl",
    "smollm2-mixture": "experiments.smollm2_mixture",
}


def available() -> dict[str, str]:
    """Experiments whose module is present in this checkout."""
    found = {}
    for name, module in EXPERIMENTS.items():
        if importlib.util.find_spec(module) is not None:
            found[name] = module
    return found


def load(name: str):
    experiments = available()
    if name not in experiments:
        raise ValueError(f"experiment: unknown {name!r}; available experiments are {sorted(experiments)}")
    return importlib.import_module(experiments[name])

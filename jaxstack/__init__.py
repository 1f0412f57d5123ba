"""jaxstack: a JAX/Flax stack reimplementing ten recent AI systems.

Floors, bottom to top (README "Design notes"; enforced by the import-linter contract in pyproject.toml):
``jaxstack.precision`` / ``config`` / ``runs`` (shared by all), ``jaxstack.pallas_kernels`` (pure functions
on arrays, no Flax), ``jaxstack.layers`` (Flax NNX modules), ``jaxstack.models`` (model families, configs,
checkpoint I/O), then ``train``, ``rl``, ``inference`` and ``data``, then ``evals`` and ``agents``, and on
top the ``experiments`` package and the ``jaxstack`` CLI.
"""

__version__ = "0.1.0"

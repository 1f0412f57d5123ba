"""jaxstack: a JAX/Flax stack reimplementing ten recent AI systems.

Tiers (DESIGN.md): ``jaxstack.pallas_kernels`` (pure functions on arrays, no Flax), ``jaxstack.layers``
(Flax NNX modules), ``jaxstack.models`` (model families, configs, HF interop); plus ``inference``,
``train``, ``data``, ``rl``, ``evals``, ``interp`` and ``agents``.
"""

__version__ = "0.1.0"

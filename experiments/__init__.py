"""Experiment modules, one per study. Each has a frozen ``Config``, ``PRESETS`` (``tiny`` = CPU minutes,
``paper`` = accelerator scale) and ``run(config) -> run directory`` (a ``jaxstack.runs.RunRecord`` under
``runs/<name>/<stamp>/``). ``jaxstack run <name>`` finds them through the ``jaxstack.experiments``
entry points in ``pyproject.toml``."""

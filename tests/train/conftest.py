"""Shared by the sharding and multi-host tests: cached single-device reference runs."""

from __future__ import annotations

import jax
import pytest

from jaxstack.train.multihost_check import gather_params, initial_params, train_on_mesh
from jaxstack.train.sharding import make_mesh

PARITY_STEPS = 2  # AdamW steps at a constant lr from step 0 (multihost_check.CHECK_OPTIMIZER)


@pytest.fixture(scope="session")
def single_device_run():
    """config -> (params after PARITY_STEPS steps on one device, per-step metrics, initial params).

    Cached per config for the session, so the sharding and multi-host tests share one reference.
    """
    cache = {}

    def run(config):
        if config not in cache:
            mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
            state, history = train_on_mesh(config, mesh, PARITY_STEPS)
            cache[config] = (gather_params(state.params, mesh), history, initial_params(config))
        return cache[config]

    return run

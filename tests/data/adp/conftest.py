"""Shared fixture for the ADP tests: the hand-written raw records, converted once per session."""

from __future__ import annotations

import pytest
from adp_helpers import convert_fixture

from jaxstack.data.adp import DATASETS, Trajectory


@pytest.fixture(scope="session")
def converted() -> dict[str, list[Trajectory]]:
    """Dataset name -> its converted fixture trajectories."""
    result = {}
    for name in DATASETS:
        text, _ = convert_fixture(name)
        result[name] = [Trajectory.model_validate_json(line) for line in text.splitlines()]
    return result

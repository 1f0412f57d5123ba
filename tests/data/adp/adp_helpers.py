"""Helpers for the ADP tests: where the hand-written raw records live and how to convert them."""

from __future__ import annotations

import io
from pathlib import Path

from jaxstack.data.adp import DATASETS

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "adp"


def raw_path(name: str) -> Path:
    """The hand-written raw JSONL of dataset ``name``."""
    return FIXTURES / f"{name}.raw.jsonl"


def convert_fixture(name: str) -> tuple[str, str]:
    """(stdout, stderr) of converting dataset ``name``'s fixture."""
    out, err = io.StringIO(), io.StringIO()
    with open(raw_path(name), encoding="utf-8") as handle:
        DATASETS[name].convert_lines(handle, out, err, source=name)
    return out.getvalue(), err.getvalue()

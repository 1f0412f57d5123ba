"""The layering contract (DESIGN principle 0): ``lint-imports`` over ``[tool.importlinter]`` in pyproject.toml.

Floors, bottom to top: precision/config/testing/runs < pallas_kernels < layers < models
< {train, rl, inference, data} < {evals, agents, interp} < {experiments, jaxstack.cli}; no import cycles
between sibling modules at any depth; nothing in ``jaxstack`` imports ``experiments``. The second test
proves the contract can fail: it plants an upward import in a copy of the tree and expects it refused.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _lint_imports() -> str:
    executable = pathlib.Path(sys.executable).parent / "lint-imports"
    if not executable.exists():
        found = shutil.which("lint-imports")
        if found is None:
            pytest.fail("lint-imports not found: install the test extra (`pip install -e '.[test]'`, import-linter)")
        executable = pathlib.Path(found)
    return str(executable)


def _run(cwd: pathlib.Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(cwd))
    return subprocess.run([_lint_imports(), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _copy_tree(destination: pathlib.Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("jaxstack", "experiments"):
        shutil.copytree(ROOT / package, destination / package, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", destination / "pyproject.toml")


def test_layering_contract_holds():
    result = _run(ROOT)
    assert result.returncode == 0, f"import-linter contract broken:\n{result.stdout}\n{result.stderr}"
    assert "0 broken" in result.stdout, result.stdout


@pytest.mark.parametrize("importer, imported, contract", [
    ("jaxstack/layers/norms.py", "jaxstack.evals", "Floors never point up"),
    ("jaxstack/models/configs.py", "experiments", "The library never imports the experiments package"),
], ids=["layers-imports-evals", "models-imports-experiments"])
def test_layering_contract_fails_on_an_upward_import(tmp_path, importer, imported, contract):
    _copy_tree(tmp_path)
    target = tmp_path / importer
    target.write_text(target.read_text() + f"\n\ndef _planted():  # an upward import, to be refused\n"
                                           f"    import {imported}  # noqa: F401\n")
    result = _run(tmp_path)
    assert result.returncode != 0, f"the planted import {importer} -> {imported} was not refused:\n{result.stdout}"
    assert f"{contract} BROKEN" in result.stdout, result.stdout
    assert imported in result.stdout and importer.removesuffix(".py").replace("/", ".") in result.stdout

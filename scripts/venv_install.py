"""Install packages into this interpreter's environment with uv, honouring the machine's pip config.

`make` calls it as ``.venv/bin/python scripts/venv_install.py -e '.[test]'``. uv resolves and
installs the test environment in ~1 min where pip takes ~2.5 min on 2 cores, but uv does not read
``pip.conf``. This script reads the pip settings that decide *what* gets installed (index URLs,
find-links, constraint files, ``no-index``, the CA bundle) with ``pip config list`` and passes them
to uv, so both installers see the same package sources (here: local wheels, including the CPU
torch build, and a torch cap in a constraint file).

``--index-strategy unsafe-best-match`` is pip's own rule (the best version across all indexes);
uv's default stops at the first index that has a package at all. ``--compile-bytecode`` writes the
``.pyc`` files at install time as pip does: uv's default leaves them to the first import, and where
``PYTHONDONTWRITEBYTECODE`` is set (as on this machine) every process would then compile torch, jax and
transformers from source again (~10 s of CPU per test worker or subprocess).

Usage: ``python scripts/venv_install.py PIP-INSTALL-ARGS...``
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

# pip config sections in increasing precedence (environment variables win, as in pip).
_SECTIONS = ("global", "install", ":env:")
_LINE = re.compile(r"^(?P<section>[^.]+)\.(?P<key>[a-z0-9-]+)=(?P<value>.*)$")


def pip_settings() -> dict[str, str]:
    """The effective pip settings, ``{key: value}``, as ``pip config list`` reports them."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        check=True, capture_output=True, text=True,
    ).stdout
    found: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        m = _LINE.match(line.strip())
        if m is None:
            continue
        value = m["value"]
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found.setdefault(m["section"], {})[m["key"]] = value
    merged: dict[str, str] = {}
    for section in _SECTIONS:
        merged.update(found.get(section, {}))
    return merged


def uv_arguments(settings: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The uv command-line flags and environment variables matching pip ``settings``."""
    args = ["--index-strategy", "unsafe-best-match"]
    env: dict[str, str] = {}
    for key, flag in (
        ("index-url", "--index-url"),
        ("extra-index-url", "--extra-index-url"),
        ("find-links", "--find-links"),
        ("constraint", "--constraint"),
    ):
        for value in settings.get(key, "").split():
            args += [flag, value]
    if settings.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        args.append("--no-index")
    if settings.get("cert"):
        env["SSL_CERT_FILE"] = settings["cert"]
    return args, env


def uv_binary() -> str:
    """uv installed beside this interpreter (``pip install uv``), else one on PATH."""
    local = Path(sys.executable).parent / "uv"
    if local.exists():
        return str(local)
    found = shutil.which("uv")
    if found is None:
        raise SystemExit(
            "scripts/venv_install.py: uv is not installed; run `python -m pip install uv` first"
        )
    return found


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit(__doc__)
    args, env = uv_arguments(pip_settings())
    cmd = [uv_binary(), "pip", "install", "--quiet", "--compile-bytecode", "--python", sys.executable, *args, *argv]
    print("+", shlex.join(cmd), flush=True)
    return subprocess.run(cmd, env={**os.environ, **env}).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Test-suite set-up: 8 simulated CPU devices (for sharding tests), float64 available on request, and
one XLA compilation cache shared by the whole run.

XLA_FLAGS must be set before jax is imported anywhere, so it is set here at conftest import.

The compilation cache: many tests compile the same programs (the trainer's step in every
``jaxstack train`` subprocess, the same tiny models in several files). A persistent cache in a fresh
temporary directory, created for this run and removed after it, lets the second compile of an
identical program load the first one's executable. It is keyed by the program, the jax version and
the flags, so it changes no result; it is passed to subprocesses and to pytest-xdist workers through
``JAX_COMPILATION_CACHE_DIR`` (set before they start). A cold run starts empty, as CI does. Set
``JAXSTACK_TEST_COMPILATION_CACHE=0`` to run without it.
"""

import atexit
import os
import shutil
import tempfile

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The suite's time is mostly XLA:CPU compiling small programs. LLVM at -O1 instead of the default -O2
# compiles them about a third faster (same HLO passes; measured on the llama-test train step: 3.1 vs 4.7 CPU s)
# and runs them as fast. Every test passes at both levels with unchanged tolerances. (-O0 would compile
# faster still but is not used: it moved one fp64 kernel gradient by 2.6e-9 against a 1e-12 bound.)
# A test process and the subprocesses it starts (they inherit XLA_FLAGS) use it; JAXSTACK_TEST_XLA_OPT=default
# keeps XLA's default level. Benchmarks and the library never set it.
if os.environ.get("JAXSTACK_TEST_XLA_OPT", "1") != "default" and "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=1"

if os.environ.get("JAXSTACK_TEST_COMPILATION_CACHE", "1") != "0" and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    # Only the process that creates the directory (pytest's controller, or a plain run) removes it.
    _cache_dir = tempfile.mkdtemp(prefix="jaxstack-test-xla-cache-")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    # Cache every compile, also the small per-op ones of eager code (model init): jax's default
    # threshold is 1 s; at 0 a fresh process builds a tiny Kimi Linear model in ~1 s instead of ~13 s.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    # No size limit: a limit switches on jax's eviction, which re-scans the whole directory under a
    # global lock on every write (quadratic in the entries; it made the suite 2x slower). Without it
    # a process may read an entry another one is still writing: jax then warns and compiles anew.

import jax  # noqa: E402

# Parity tests compare float32 results to 1e-5; keep matmuls at full float32 precision.
jax.config.update("jax_default_matmul_precision", "highest")

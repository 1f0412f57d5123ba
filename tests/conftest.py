"""Test-suite set-up: 8 simulated CPU devices (for sharding tests) and float64 available on request.

XLA_FLAGS must be set before jax is imported anywhere, so it is set here at conftest import.
"""

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Parity tests compare float32 results to 1e-5; keep matmuls at full float32 precision.
jax.config.update("jax_default_matmul_precision", "highest")

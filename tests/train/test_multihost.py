"""Multi-host for real: two processes on localhost, 4 simulated CPU devices each, one global mesh.

Each child runs ``python -m jaxstack.train.multihost_check`` (``jax.distributed.initialize`` with
gloo CPU collectives, per-process batch rows via ``make_array_from_process_local_data``) and writes
its losses, grad norms and every updated parameter (gathered in full). Both processes must agree
exactly (they gather the same global arrays) and match the single-device run of this test process
within 1e-5 absolute: the same reduction-order argument and optimizer as tests/train/test_sharding.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxstack.models.configs import get_config

NUM_PROCESSES = 2
LOCAL_DEVICES = 4
ATOL = 1e-5
STEPS = 2  # as tests/train/conftest.py PARITY_STEPS, so the single-device reference is shared
CHILD_TIMEOUT_S = 240  # wall clock for both children; they normally take ~10-20 s


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={LOCAL_DEVICES}"])
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"  # as tests/conftest.py sets for this process
    return env


def _launch(out_dir, meshes, steps, log_dir):
    """Starts the children; returns [(Popen, log path)]."""
    port = _free_port()
    children = []
    for pid in range(NUM_PROCESSES):
        cmd = [
            sys.executable, "-m", "jaxstack.train.multihost_check",
            "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(NUM_PROCESSES), "--process-id", str(pid),
            "--init-timeout", "60", "--steps", str(steps), "--out", str(out_dir),
        ]
        for mesh in meshes:
            cmd += ["--mesh", ",".join(map(str, mesh))]
        log = log_dir / f"process{pid}.log"
        with open(log, "w") as handle:
            proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=_child_env(), cwd=os.getcwd())
        children.append((proc, log))
    return children


def _wait(children, deadline):
    """Waits for all children; on a failure or the deadline kills the rest. Returns an error or None."""
    while True:
        codes = [proc.poll() for proc, _ in children]
        failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
        if failed or time.monotonic() > deadline:
            for proc, _ in children:
                if proc.poll() is None:
                    proc.kill()
            for proc, _ in children:
                proc.wait()
            why = f"process {failed} exited with {[codes[i] for i in failed]}" if failed else "timed out"
            logs = "\n".join(
                f"----- process {i} (exit {proc.returncode}) -----\n" + log.read_text()[-4000:]
                for i, (proc, log) in enumerate(children)
            )
            return f"{why}\n{logs}"
        if all(code == 0 for code in codes):
            return None
        time.sleep(0.1)


def _run_children(tmp_path, meshes, steps, while_running):
    """Runs the children (one retry if the free port was taken meanwhile) and ``while_running()``
    during the first launch. Returns (output folder, what ``while_running`` returned)."""
    out_dir = tmp_path / "out"
    result = None
    for attempt in range(2):
        log_dir = tmp_path / f"logs{attempt}"
        log_dir.mkdir()
        children = _launch(out_dir, meshes, steps, log_dir)
        if attempt == 0:
            try:
                result = while_running()
            except BaseException:
                _wait(children, deadline=0)  # kills them
                raise
        error = _wait(children, time.monotonic() + CHILD_TIMEOUT_S)
        if error is None:
            return out_dir, result
        if attempt == 0 and "ddress already in use" in error:
            continue
        pytest.fail(f"multi-host children failed: {error}")
    raise AssertionError("unreachable")


def _check(out_dir, meshes, reference):
    ref_params, ref_history, _ = reference
    for mesh in meshes:
        tag = "x".join(map(str, mesh))
        results = [dict(np.load(out_dir / f"process{pid}_mesh{tag}.npz")) for pid in range(NUM_PROCESSES)]
        # both processes hold the same global results, bit for bit
        assert results[0].keys() == results[1].keys()
        for key in results[0]:
            np.testing.assert_array_equal(results[0][key], results[1][key], err_msg=f"mesh {tag}: {key}")
        got = results[0]
        for key in ("loss", "grad_norm", "lr"):
            expected = np.asarray([m[key] for m in ref_history])
            np.testing.assert_allclose(got[key], expected, rtol=0, atol=ATOL, err_msg=f"mesh {tag}: {key}")
        assert np.all(got["lr"] > 0)
        params = {k.removeprefix("param/"): v for k, v in got.items() if k.startswith("param/")}
        assert params.keys() == ref_params.keys()
        for path, ref in ref_params.items():
            np.testing.assert_allclose(params[path], ref, rtol=0, atol=ATOL, err_msg=f"mesh {tag}: {path}")


def _multihost_matches_single_device(tmp_path, single_device_run, meshes):
    reference = get_config("llama-test")
    out_dir, ref = _run_children(tmp_path, meshes, STEPS, lambda: single_device_run(reference))
    assert len(ref[1]) == STEPS
    _check(out_dir, meshes, ref)


def test_two_processes_match_single_device(tmp_path, single_device_run):
    # data=2 spans the two processes: gradients all-reduce across them (gloo)
    _multihost_matches_single_device(tmp_path, single_device_run, [(2, 2, 2)])


@pytest.mark.slow
def test_two_processes_fsdp_and_tensor_across_processes(tmp_path, single_device_run):
    # (1, 2, 4): fsdp spans processes (parameter all-gathers); (1, 1, 8): tensor spans processes
    _multihost_matches_single_device(tmp_path, single_device_run, [(1, 2, 4), (1, 1, 8)])

"""`jaxstack train --distributed` end to end: two processes on localhost (gloo), 2 simulated devices
each, a (data=2, fsdp=2, tensor=1) mesh across them. The run record is written once, checkpoints hold
one data-iterator file per process, and the losses equal a single-process run to 1e-5 (the sharded
reductions sum in a different order; see test_sharding.py)."""

import json
import os
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ARGS = ["--model", "llama-test", "--model.vocab_size=512", "--train.steps=6", "--train.batch_size=4",
        "--train.seq_len=32", "--train.log_every=2", "--train.checkpoint_every=3", "--no-progress",
        "--optimizer.eps=1e-6"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(devices: int) -> dict:
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_process_cli_training(tmp_path):
    port = _free_port()
    command = [sys.executable, "-m", "jaxstack.cli", "train", "--out", str(tmp_path / "multi"), *ARGS,
               "--train.mesh=2,2,1", "--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    procs = [subprocess.Popen([*command, "--process-id", str(i)], env=_env(2), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    single = subprocess.run([sys.executable, "-m", "jaxstack.cli", "train", "--out", str(tmp_path / "single"), *ARGS],
                            env=_env(1), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]

    multi_losses, single_losses = _losses(tmp_path / "multi"), _losses(tmp_path / "single")
    assert len(multi_losses) == 3  # one line per logged step: only process 0 writes
    assert multi_losses == pytest.approx(single_losses, abs=1e-5)
    data_files = sorted(p.name for p in (tmp_path / "multi" / "checkpoints" / "6" / "data").glob("process_*"))
    assert data_files == ["process_0-of-2.json", "process_1-of-2.json"]
    assert (tmp_path / "multi" / "hf" / "model.safetensors").exists()

"""Multi-host check: the same train steps on one global mesh, run by every process.

One copy runs per process; here two processes on one machine, four simulated CPU devices each:

    export XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu
    python -m jaxstack.train.multihost_check --coordinator 127.0.0.1:12345 --num-processes 2 \\
        --process-id 0 --mesh 2,2,2 --out /tmp/mh &
    python -m jaxstack.train.multihost_check --coordinator 127.0.0.1:12345 --num-processes 2 \\
        --process-id 1 --mesh 2,2,2 --out /tmp/mh

Each process builds the model from the same seed, places it on a (data, fsdp, tensor) mesh over
the devices of all processes, loads only its own rows of every global batch (as a per-process data
loader does: :func:`jaxstack.train.sharding.process_batch_slice`), runs the steps and writes
``process{ID}_mesh{D}x{F}x{T}.npz``: per-step ``loss`` / ``grad_norm`` / ``lr`` and every updated
parameter gathered in full (``param/<path>``). Without ``--coordinator`` it runs as one process;
:func:`run_steps` on one device gives the reference that tests/train/test_multihost.py compares with.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import sys
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxstack.models.configs import LlamaConfig, get_config
from jaxstack.models.llama import LlamaForCausalLM
from jaxstack.train import sharding as sharding_lib
from jaxstack.train.optimizers import OptimizerConfig, make_optimizer, make_schedule
from jaxstack.train.step import init_train_state, make_batch, make_train_step, split_model

# Constant learning rate from step 0 (no warmup, so every step moves the parameters). Adam's update
# g / (sqrt(v) + eps) turns float32 reduction-order noise in near-zero gradients into parameter
# differences of up to lr * noise / eps: eps=1e-6 keeps that amplification at lr/eps = 1e3 (the
# default eps=1e-8 makes it 1e5, i.e. ~2e-5 differences between meshes after two steps).
CHECK_OPTIMIZER = OptimizerConfig(learning_rate=1e-3, schedule="constant", warmup_steps=0, eps=1e-6)


def global_batches(config: LlamaConfig, steps: int, batch_size: int, seq_len: int, seed: int):
    """The same global token batches [batch_size, seq_len + 1] on every process (numpy, seeded)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, config.vocab_size, (batch_size, seq_len + 1), dtype=np.int32) for _ in range(steps)]


@functools.lru_cache(maxsize=8)
def _initial_params(config: LlamaConfig, seed: int):
    """(graphdef, params as host numpy arrays): each run places its own copy (the step donates it)."""
    graphdef, params = split_model(LlamaForCausalLM(config, rngs=nnx.Rngs(seed)))
    return graphdef, jax.tree.map(np.asarray, params)


def initial_params(config: LlamaConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """The parameters before training, keyed 'layers/0/attention/q_proj'."""
    params = _initial_params(config, seed)[1]
    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    return {sharding_lib.path_name(path): np.array(variable[...]) for path, variable in flat}


def train_on_mesh(
    config: LlamaConfig,
    mesh: jax.sharding.Mesh,
    steps: int,
    *,
    batch_size: int = 8,
    seq_len: int = 16,
    seed: int = 0,
    optimizer: OptimizerConfig = CHECK_OPTIMIZER,
):
    """Runs ``steps`` train steps on ``mesh``. Returns (final TrainState, [metrics per step as floats]).

    Each process feeds only its rows of every global batch (``make_global_batch``).
    """
    graphdef, params = _initial_params(config, seed)
    tx = make_optimizer(optimizer, max(steps, 1), params)
    schedule = make_schedule(optimizer, max(steps, 1))
    state = init_train_state(params, tx, seed)
    state_sh = sharding_lib.state_shardings(state, mesh)
    state = sharding_lib.shard(state, state_sh)
    step_fn = make_train_step(
        graphdef, tx, schedule, state_sharding=state_sh, batch_sharding=sharding_lib.batch_sharding(mesh)
    )
    rows = sharding_lib.process_batch_slice(mesh, batch_size)
    history = []
    for tokens in global_batches(config, steps, batch_size, seq_len, seed + 1):
        local = jax.device_get(make_batch(tokens[rows]))
        batch = sharding_lib.make_global_batch(local, mesh, batch_size)
        state, metrics = step_fn(state, batch)
        history.append({k: float(np.asarray(v)) for k, v in metrics.items()})
    return state, history


def gather_params(params, mesh: jax.sharding.Mesh) -> dict[str, np.ndarray]:
    """Every parameter in full on every process, keyed 'layers/0/attention/q_proj'."""
    replicated = jax.jit(lambda tree: tree, out_shardings=NamedSharding(mesh, P()))(params)
    flat = jax.tree_util.tree_flatten_with_path(replicated, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    return {sharding_lib.path_name(path): np.asarray(variable[...]) for path, variable in flat}


def run_steps(
    preset: str = "llama-test",
    mesh_shape: Sequence[int] = (2, 2, 2),
    steps: int = 3,
    *,
    devices=None,
    batch_size: int = 8,
    seq_len: int = 16,
    seed: int = 0,
    **overrides,
) -> dict[str, np.ndarray]:
    """Results of ``steps`` steps: arrays loss / grad_norm / lr [steps] and ``param/<path>``."""
    config = get_config(preset, **overrides)
    mesh = sharding_lib.make_mesh(*mesh_shape, devices=devices)
    state, history = train_on_mesh(config, mesh, steps, batch_size=batch_size, seq_len=seq_len, seed=seed)
    results = {key: np.asarray([m[key] for m in history]) for key in ("loss", "grad_norm", "lr")}
    results.update({f"param/{name}": value for name, value in gather_params(state.params, mesh).items()})
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coordinator", help="host:port of process 0; omit to run as a single process")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--init-timeout", type=int, default=120, help="seconds to wait for all processes")
    parser.add_argument("--mesh", action="append", help="data,fsdp,tensor (repeatable; default 2,2,2)")
    parser.add_argument("--preset", default="llama-test")
    parser.add_argument("--scan-layers", action="store_true")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=16)
    parser.add_argument("--out", required=True, type=pathlib.Path)
    args = parser.parse_args(argv)

    if args.coordinator:
        sharding_lib.initialize_distributed(
            args.coordinator, args.num_processes, args.process_id, initialization_timeout=args.init_timeout
        )
    args.out.mkdir(parents=True, exist_ok=True)
    for mesh_text in args.mesh or ["2,2,2"]:
        shape = tuple(int(x) for x in mesh_text.split(","))
        results = run_steps(
            args.preset, shape, args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
            scan_layers=args.scan_layers,
        )
        name = f"process{jax.process_index()}_mesh{'x'.join(map(str, shape))}.npz"
        np.savez(args.out / name, **results)
        print(
            f"process {jax.process_index()}/{jax.process_count()} mesh {shape} "
            f"({jax.local_device_count()} of {jax.device_count()} devices here): "
            f"loss {results['loss'].tolist()} -> {args.out / name}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

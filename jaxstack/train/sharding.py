"""Same code from one CPU to a pod: a (data, fsdp, tensor) mesh and logical-axis rules.

Every parameter carries logical axis names (``out_sharding`` metadata, e.g. ``("embed", "heads",
"head_dim")``); :data:`RULES` maps each name to a mesh axis. A dimension whose size does not divide
its mesh axis is replicated instead, and reported once with a warning naming the parameter.
Batches are split over ``("data", "fsdp")``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (None = replicated)
RULES: dict[str, str | None] = {
    "batch": ("data", "fsdp"),
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    "layers": None,
    # Kimi Linear (MoE / MLA). The expert axis is replicated for now (the experts' "mlp" axis is
    # tensor-sharded); expert parallelism would map "expert" to a mesh axis. MLA latent ranks: replicated.
    "expert": None,
    "kv_lora": None,
    "q_lora": None,
}


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh with axes (data, fsdp, tensor). ``-1`` for one axis takes the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    if any(not isinstance(s, (int, np.integer)) or (s < 1 and s != -1) for s in sizes):
        raise ValueError(
            f"mesh: axis sizes must be positive integers or -1, got data={data}, fsdp={fsdp}, tensor={tensor}"
        )
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got data={data}, fsdp={fsdp}, tensor={tensor}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh: {len(devices)} devices are not divisible by fsdp*tensor*data={known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh: data*fsdp*tensor = {math.prod(sizes)} but {len(devices)} devices are available"
        )
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def _mesh_axis_size(mesh: Mesh, axis) -> int:
    if axis is None:
        return 1
    axes = axis if isinstance(axis, tuple) else (axis,)
    return math.prod(mesh.shape[a] for a in axes)


def spec_for(shape: Sequence[int], names: Sequence[str | None] | None, mesh: Mesh, rules=None, *, what="array") -> P:
    """PartitionSpec for an array with logical axis ``names`` under ``rules`` on ``mesh``."""
    rules = RULES if rules is None else rules
    if not names:
        return P()
    if len(names) != len(shape):
        raise ValueError(f"{what}: {len(names)} logical axis names {tuple(names)} for an array of shape {tuple(shape)}")
    spec, used = [], set()
    for size, name in zip(shape, names):
        if name is not None and name not in rules:
            raise ValueError(f"{what}: logical axis {name!r} has no sharding rule; known axes are {sorted(rules)}")
        axis = rules.get(name) if name is not None else None
        axes = axis if isinstance(axis, tuple) else ((axis,) if axis else ())
        if axis is None or any(a in used for a in axes) or _mesh_axis_size(mesh, axis) == 1:
            spec.append(None)
            continue
        if size % _mesh_axis_size(mesh, axis):
            log.warning("%s: dimension %r of size %d is not divisible by mesh axis %r of size %d; replicated",
                        what, name, size, axis, _mesh_axis_size(mesh, axis))
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axis)
    return P(*spec)


def path_name(path) -> str:
    """'layers/0/attention/k_proj' for a pytree key path."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def param_shardings(params, mesh: Mesh, rules=None):
    """NamedShardings for an ``nnx.State`` of Params (same tree structure, Variables holding shardings)."""

    def one(path, variable):
        names = variable.get_metadata().get("out_sharding")
        what = path_name(path)
        return variable.replace(NamedSharding(mesh, spec_for(variable.shape, names, mesh, rules, what=what)))

    return jax.tree_util.tree_map_with_path(one, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def state_shardings(state, mesh: Mesh, rules=None):
    """Shardings for a TrainState: params by rule; optimizer moments like their params; rest replicated."""
    param_sh = param_shardings(state.params, mesh, rules)
    replicated = NamedSharding(mesh, P())
    flat_params = {
        tuple(path): sharding
        for path, sharding in jax.tree_util.tree_flatten_with_path(param_sh)[0]
    }
    shapes = {
        tuple(path): leaf.shape for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]
    }

    def for_opt_leaf(path, leaf):
        # optax moments (mu, nu) mirror the params tree: match by the path's params suffix.
        path = tuple(path)
        for start in range(len(path)):
            suffix = path[start:]
            if suffix in flat_params and shapes[suffix] == getattr(leaf, "shape", None):
                return flat_params[suffix]
        return replicated

    opt_sh = jax.tree_util.tree_map_with_path(for_opt_leaf, state.opt_state)
    return state.replace(step=replicated, params=param_sh, opt_state=opt_sh, rng=replicated,
                         loss_scale=jax.tree.map(lambda _: replicated, state.loss_scale))


def batch_sharding(mesh: Mesh, rules=None) -> NamedSharding:
    """Batches [B, T] split on their first axis over the batch mesh axes."""
    rules = RULES if rules is None else rules
    return NamedSharding(mesh, P(rules["batch"]))


def shard(tree, shardings):
    """Places a pytree on devices with the given (matching) shardings.

    Multi-host: every process must pass the same (global) values; each keeps only its own shards.
    For batches that each process loads only its part of, use :func:`make_global_batch`.
    """
    return jax.device_put(tree, shardings)


def process_batch_slice(mesh: Mesh, global_batch_size: int, rules=None) -> slice:
    """The rows of a global batch that this process's devices hold under :func:`batch_sharding`.

    A per-process data loader loads only these rows (one process: all of them). Processes whose
    devices share a batch shard (batch axes not spanning processes) get the same rows.
    """
    index_map = batch_sharding(mesh, rules).addressable_devices_indices_map((global_batch_size,))
    rows = set()
    for (index,) in index_map.values():
        rows.update(range(*index.indices(global_batch_size)))
    start, stop = min(rows), max(rows) + 1
    if len(rows) != stop - start:
        raise ValueError(
            f"batch: this process's rows {sorted(rows)} of the global batch are not contiguous; "
            "order the mesh devices by process"
        )
    return slice(start, stop)


def make_global_batch(local_batch, mesh: Mesh, global_batch_size: int, rules=None):
    """Global batch arrays from this process's rows (``process_batch_slice``) of every leaf [b, ...]."""
    sharding = batch_sharding(mesh, rules)
    rows = process_batch_slice(mesh, global_batch_size, rules)

    def one(leaf):
        leaf = np.asarray(leaf)
        if leaf.shape[0] != rows.stop - rows.start:
            raise ValueError(
                f"batch: this process holds rows {rows.start}:{rows.stop} of {global_batch_size}, "
                f"got a local batch of {leaf.shape[0]} rows"
            )
        return jax.make_array_from_process_local_data(sharding, leaf, (global_batch_size, *leaf.shape[1:]))

    return jax.tree.map(one, local_batch)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    cpu_collectives: str | None = "gloo",
    **kwargs: Any,
) -> None:
    """Starts multi-host JAX. With no arguments, uses the cluster's environment (TPU pods, SLURM...).

    Call it before any other JAX work. On CPU hosts, cross-process collectives need an
    implementation (``gloo``), set before initialising. ``kwargs`` go to
    ``jax.distributed.initialize`` (e.g. ``initialization_timeout`` in seconds, ``local_device_ids``).
    """
    if cpu_collectives and jax.config.jax_platforms in (None, "", "cpu"):
        try:
            jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
        except AttributeError:  # a JAX without the option (gloo is the default from 0.10 on)
            log.info("jax_cpu_collectives_implementation: not a config option here; using the default")
    if coordinator_address is not None:
        kwargs.update(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
    jax.distributed.initialize(**kwargs)

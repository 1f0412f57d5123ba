"""Hugging Face checkpoint I/O: a local ``config.json`` + safetensors directory <-> a jaxstack model. No downloads.

One loader and one writer serve every model family. A family module (:mod:`jaxstack.models.hf` for
Llama / SmolLM2 / Qwen2.5, :mod:`jaxstack.models.kimi_hf` for Kimi Linear) supplies only data and
mappings: its ``config.json`` <-> config functions and a *tensor table* (which HF tensor fills which
model state path, through which transform), and registers them with :func:`register`. The
architecture registry picks the family from ``config.json``'s ``architectures`` (or ``model_type``)
when loading and from the model's class when saving. (Orbax training checkpoints are a different
thing: :mod:`jaxstack.train.checkpoint`.)

Loading is strict: every failure is a :class:`CheckpointError` that names the file and the tensor or
config field -- unreadable or truncated safetensors, invalid JSON, config fields of the wrong type,
shard paths that leave the model directory, missing / unexpected tensors, wrong shapes, non-float
tensors. Tensors are read exactly as stored (float64 stays float64 until the one explicit cast to each
parameter's dtype, which the dtype policy chose).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open

from jaxstack.precision import DtypePolicy, get_policy

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Buffers some checkpoints carry that hold no parameters, in every family.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# Safetensors dtypes a parameter may be stored in; anything else (integers, bool, float8) is an error.
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


class CheckpointError(ValueError):
    """A local HF checkpoint cannot be read as the architecture needs (names the file and tensor / field)."""


# ----------------------------------------------------------------------------------------------------
# Tensor tables


@dataclasses.dataclass(frozen=True)
class Transform:
    """An HF tensor <-> a model parameter (or one slice of it): two array functions, inverses of each
    other, written with ``.T`` / ``.reshape`` / indexing so they run on numpy arrays and on tracers (the
    expected HF shape is ``to_hf`` evaluated on the parameter's abstract shape)."""

    to_model: Callable[[Any], Any]
    to_hf: Callable[[Any], Any]


IDENTITY = Transform(lambda w: w, lambda w: w)


@functools.cache
def linear(*out_shape: int) -> Transform:
    """torch Linear ``[out, in]`` <-> jaxstack ``[in, *out_shape]`` (``out_shape`` empty: ``[in, out]``)."""
    if not out_shape:
        return Transform(lambda w: w.T, lambda w: w.T)
    return Transform(lambda w: w.T.reshape(w.shape[1], *out_shape), lambda w: w.reshape(w.shape[0], -1).T)


@functools.cache
def linear_in(*in_shape: int) -> Transform:
    """torch Linear ``[out, in]`` <-> jaxstack ``[*in_shape, out]`` (output projections over heads)."""
    return Transform(lambda w: w.T.reshape(*in_shape, w.shape[0]), lambda w: w.reshape(-1, w.shape[-1]).T)


@functools.cache
def reshape(model_shape: tuple[int, ...], hf_shape: tuple[int, ...]) -> Transform:
    """A pure reshape; either shape may hold one ``-1``."""
    return Transform(lambda w: w.reshape(model_shape), lambda w: w.reshape(hf_shape))


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One HF tensor of a family's tensor table.

    hf_name: the name written on save and looked up first on load.
    path: the model state path (as in ``nnx.to_flat_state``) of the parameter it fills.
    transform: HF layout <-> model layout.
    index: the slice of a stacked parameter this tensor is (scanned layers ``(layer,)``, MoE experts
        ``(expert,)``); ``()`` for the whole parameter. The loader stacks the slices.
    aliases: other names accepted on load (a second writer's spelling of the same tensor).
    dtype: on-disk dtype that overrides the save dtype (parameters released in float32).
    """

    hf_name: str
    path: tuple
    transform: Transform = IDENTITY
    index: tuple[int, ...] = ()
    aliases: tuple[str, ...] = ()
    dtype: str | None = None


@dataclasses.dataclass(frozen=True)
class TensorTable:
    """A family's tensors for one config: ``specs``, plus names a checkpoint may carry that hold no
    parameter and are skipped on load (a tied model's ``lm_head.weight``)."""

    specs: tuple[TensorSpec, ...]
    ignored: tuple[str, ...] = ()


# ----------------------------------------------------------------------------------------------------
# Architecture registry


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family's checkpoint mapping, registered by its module with :func:`register`.

    architectures: HF ``architectures[0]`` values it reads; model_types: ``model_type`` values it reads
    when ``architectures`` names none registered. config_from_hf(hf_dict, **overrides) -> config and
    config_to_hf(config, dtype_name) -> dict map ``config.json``; tensor_table(config) -> TensorTable.
    """

    name: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    config_class: type
    model_class: type
    config_from_hf: Callable[..., Any]
    config_to_hf: Callable[[Any, str], dict[str, Any]]
    tensor_table: Callable[[Any], TensorTable]


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Adds a family to the registry (once per name); returns it."""
    def keys(f: Family) -> tuple:
        return f.architectures + f.model_types + (f.config_class, f.model_class)

    claimed = {key: f.name for f in _FAMILIES.values() if f.name != family.name for key in keys(f)}
    for key in keys(family):
        if key in claimed:
            raise ValueError(f"checkpoint family {family.name!r}: {key!r} is already registered by {claimed[key]!r}")
    _FAMILIES[family.name] = family
    return family


def family_for_hf(hf: dict[str, Any]) -> Family:
    """The registered family for a ``config.json`` dict: by ``architectures[0]``, else ``model_type``."""
    architectures = config_field(hf, "architectures", list, [])
    model_type = config_field(hf, "model_type", str, None)
    for family in _FAMILIES.values():
        if architectures and architectures[0] in family.architectures:
            return family
    for family in _FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = sorted(a for f in _FAMILIES.values() for a in f.architectures)
    raise CheckpointError(f"{CONFIG_FILE}: architectures={architectures!r} (model_type={model_type!r}) is not "
                          f"supported; expected one of {known}")


def family_for_config(config: Any) -> Family:
    """The registered family whose config class ``config`` is an instance of."""
    for family in _FAMILIES.values():
        if isinstance(config, family.config_class):
            return family
    known = sorted(f.config_class.__name__ for f in _FAMILIES.values())
    raise TypeError(f"model config: expected one of {known}, got {type(config).__name__}")


def family_for_model(model: Any) -> Family:
    """The registered family whose model class ``model`` is an instance of."""
    for family in _FAMILIES.values():
        if isinstance(model, family.model_class):
            return family
    known = sorted(f.model_class.__name__ for f in _FAMILIES.values())
    raise TypeError(f"model: no checkpoint family for {type(model).__name__}; expected one of {known}")


# ----------------------------------------------------------------------------------------------------
# config.json


_REQUIRED = object()
_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
               dict: "an object"}


def _is_kind(value: Any, kind: type) -> bool:
    if kind in (int, float) and isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def config_field(hf: dict[str, Any], key: str | tuple[str, ...], kind: type | tuple[type, ...],
                 default: Any = _REQUIRED, *, name: str | None = None) -> Any:
    """A checked ``config.json`` value: the first of ``key`` (one name or several spellings) that is
    present and not null, else ``default``; a missing required field or a value not of ``kind`` (int,
    float -- ints accepted, returned as float --, bool, str, list, dict, or a tuple of these) raises a
    CheckpointError naming the field (``name``: the dotted prefix for nested objects, e.g. ``"rope_scaling"``).
    """
    keys = (key,) if isinstance(key, str) else key
    kinds = kind if isinstance(kind, tuple) else (kind,)
    for k in keys:
        if hf.get(k) is None:
            continue
        value = hf[k]
        if not any(_is_kind(value, t) for t in kinds):
            expected = " or ".join(_KIND_NAMES[t] for t in kinds)
            raise CheckpointError(f"{CONFIG_FILE}: {_dotted(name, k)}: expected {expected}, got {value!r}")
        return float(value) if kinds == (float,) else value
    if default is _REQUIRED:
        raise CheckpointError(f"{CONFIG_FILE}: missing required field {_dotted(name, keys[0])!r}")
    return default


def _dotted(prefix: str | None, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def config_token_ids(hf: dict[str, Any], key: str) -> int | list[int] | None:
    """A token id field (``bos_token_id`` / ``eos_token_id`` / ``pad_token_id``): an integer, a list of
    integers or null."""
    value = config_field(hf, key, (int, list), None)
    if isinstance(value, list) and not all(_is_kind(v, int) for v in value):
        raise CheckpointError(f"{CONFIG_FILE}: {key}: expected an integer or a list of integers, got {value!r}")
    return value


def read_config(path: str | pathlib.Path) -> dict[str, Any]:
    """The ``config.json`` dict of a local model directory; CheckpointError if absent or not a JSON object."""
    file = pathlib.Path(path) / CONFIG_FILE
    if not file.is_file():
        raise CheckpointError(f"{path}: no {CONFIG_FILE} (expected a local Hugging Face model directory)")
    hf = _read_json(file)
    if not isinstance(hf, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(hf).__name__}")
    return hf


def _read_json(file: pathlib.Path) -> Any:
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{file}: invalid JSON ({error.msg} at line {error.lineno} column {error.colno})") from error
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{file}: cannot be read ({error})") from error


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> Any:
    """The jaxstack config (LlamaConfig, KimiLinearConfig, ...) for a ``config.json`` dict, by architecture.

    overrides: config fields to change. Raises CheckpointError naming an unsupported or malformed field.
    """
    return family_for_hf(hf).config_from_hf(hf, **overrides)


# ----------------------------------------------------------------------------------------------------
# Shards


def tensor_files(path: str | pathlib.Path) -> tuple[dict[str, pathlib.Path], pathlib.Path]:
    """Maps each tensor name to the safetensors file that holds it.

    path: a directory with ``model.safetensors.index.json`` (sharded; preferred when both exist) or
    ``model.safetensors``. Returns (names -> file, the file that lists the names: the index or the
    single file). Shard names in the index must stay inside ``path`` (no absolute paths, no ``..``).
    """
    path = pathlib.Path(path)
    index, single = path / INDEX_FILE, path / SINGLE_FILE
    if index.exists():
        data = _read_json(index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: expected an object with a 'weight_map' object")
        files, shards = {}, {}
        for name, shard in weight_map.items():
            if shard not in shards:
                shards[shard] = _shard_path(path, index, name, shard)
            files[name] = shards[shard]
        for shard, file in shards.items():
            if not file.is_file():
                raise CheckpointError(f"{index}: names shard {shard!r}, which does not exist")
        return files, index
    if single.exists():
        with _open(single) as handle:
            return dict.fromkeys(handle.keys(), single), single
    raise CheckpointError(f"{path}: no {SINGLE_FILE} or {INDEX_FILE}")


def _shard_path(root: pathlib.Path, index: pathlib.Path, name: str, shard: Any) -> pathlib.Path:
    """root/shard, checked lexically to stay inside root (symlinked shards, as in the HF cache, are fine)."""
    if not isinstance(shard, str) or not shard:
        raise CheckpointError(f"{index}: weight_map[{name!r}]: expected a shard file name, got {shard!r}")
    as_windows = pathlib.PureWindowsPath(shard)  # splits on "/" and "\\", sees drives and roots
    if pathlib.PurePosixPath(shard).is_absolute() or as_windows.drive or as_windows.root or ".." in as_windows.parts:
        raise CheckpointError(f"{index}: weight_map[{name!r}] = {shard!r} points outside the model directory "
                              "(expected a file name relative to it)")
    return root / shard


@contextlib.contextmanager
def _open(file: pathlib.Path):
    """``safe_open`` (numpy: tensors exactly as stored, bf16 via ml_dtypes); an unreadable, truncated or
    non-safetensors file is a CheckpointError naming it."""
    try:
        handle = safe_open(str(file), framework="numpy")
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{file}: not a readable safetensors file ({error})") from error
    with handle:
        yield handle


# ----------------------------------------------------------------------------------------------------
# Loading


def load_pretrained(path: str | pathlib.Path, *, policy: DtypePolicy | str | None = None, **config_overrides: Any):
    """Loads a local HF checkpoint directory into the model its ``config.json`` names.

    path: a directory with ``config.json`` and ``model.safetensors`` (or a sharded index).
    policy: dtype policy; each parameter is cast to its own dtype under the policy (``param_dtype``, or
        float32 where a family keeps it).
    config_overrides: config fields to change (e.g. ``scan_layers=True`` for the Llama family).
    Returns a ``LlamaForCausalLM`` / ``KimiLinearForCausalLM`` / ... Raises CheckpointError naming the
    file and the missing / unexpected / malformed tensor or config field.
    """
    path = pathlib.Path(path)
    hf = read_config(path)
    try:
        family = family_for_hf(hf)
        config = family.config_from_hf(hf, **config_overrides)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from error
    policy = get_policy(policy)
    abstract = nnx.eval_shape(lambda: family.model_class(config, policy=policy, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(abstract_state))
    values = load_tensors(path, family.tensor_table(config), flat, owner=family.model_class.__name__)
    state = nnx.from_flat_state({p: v.replace(jnp.asarray(values[p])) for p, v in flat.items()})
    return nnx.merge(graphdef, state)


def load_tensors(path: str | pathlib.Path, table: TensorTable, abstract: dict[tuple, Any], *,
                 owner: str = "the model") -> dict[tuple, np.ndarray]:
    """Reads a directory's safetensors into numpy arrays for every state path of ``abstract``.

    abstract: ``{path: variable}`` with shapes and dtypes (e.g. from ``nnx.eval_shape``); each array is
    cast to its variable's dtype. table: the family's tensors for this config. owner: named in errors.
    Raises CheckpointError naming the file and tensor for a missing, unexpected, mis-shaped or non-float
    tensor, an index that names a tensor its shard does not hold, or an unreadable file.
    """
    path = pathlib.Path(path)
    files, listing = tensor_files(path)
    chosen: dict[str, TensorSpec] = {}
    for spec in table.specs:
        name = next((n for n in (spec.hf_name,) + spec.aliases if n in files), None)
        if name is None:
            raise CheckpointError(f"{listing}: missing tensor {spec.hf_name!r}")
        if spec.path not in abstract:
            raise CheckpointError(f"internal: {owner} has no state {spec.path} for tensor {name!r}")
        chosen[name] = spec
    ignored = set(table.ignored)
    unexpected = sorted(n for n in files if n not in chosen and n not in ignored and not n.endswith(_IGNORED_SUFFIXES))
    if unexpected:
        listed = ", ".join(f"{n!r} ({files[n].name})" for n in unexpected[:10])
        more = f" and {len(unexpected) - 10} more" if len(unexpected) > 10 else ""
        raise CheckpointError(f"{listing}: unexpected tensors not used by {owner}: {listed}{more}")

    by_file: dict[pathlib.Path, list[str]] = {}
    for name in chosen:
        by_file.setdefault(files[name], []).append(name)
    values: dict[tuple, np.ndarray] = {}
    filled: dict[tuple, set] = {}
    shapes: dict[tuple, tuple[int, ...]] = {}
    for file, names in by_file.items():
        with _open(file) as handle:  # each shard opened once
            held = set(handle.keys())
            for name in names:
                spec = chosen[name]
                if name not in held:
                    raise CheckpointError(f"{listing}: maps tensor {name!r} to {file.name}, which does not hold it")
                target = abstract[spec.path]
                array = _read_tensor(handle, file, name, spec, tuple(target.shape), shapes)
                array = array.astype(np.dtype(target.dtype), copy=False)  # the policy's cast, explicit
                if not spec.index:
                    values[spec.path] = array
                    continue
                if spec.path not in values:
                    values[spec.path] = np.empty(target.shape, np.dtype(target.dtype))
                values[spec.path][spec.index] = array
                filled.setdefault(spec.path, set()).add(spec.index)
    for state_path, indices in filled.items():
        expected = int(np.prod(abstract[state_path].shape[: len(next(iter(indices)))]))
        if len(indices) != expected:
            raise CheckpointError(f"internal: {owner} state {state_path} has {expected} slices, the table fills "
                                  f"{len(indices)}")
    missing = [p for p in abstract if p not in values]
    if missing:
        raise CheckpointError(f"internal: {owner} state with no HF tensor: {missing[:5]}")
    return values


def _read_tensor(handle, file: pathlib.Path, name: str, spec: TensorSpec, target_shape: tuple[int, ...],
                 shapes: dict) -> np.ndarray:
    """One tensor in model layout, after checking its stored dtype and shape (before reading the data)."""
    try:
        info = handle.get_slice(name)
        dtype, shape = info.get_dtype(), tuple(info.get_shape())
    except SafetensorError as error:
        raise CheckpointError(f"{file}: tensor {name!r} cannot be read ({error})") from error
    if dtype not in _FLOAT_DTYPES:
        raise CheckpointError(f"{file}: tensor {name!r} has dtype {dtype}; expected a floating dtype "
                              f"({', '.join(_FLOAT_DTYPES)})")
    slice_shape = target_shape[len(spec.index):]
    key = (spec.transform, slice_shape)
    if key not in shapes:  # tables reuse transforms across layers, so this runs once per distinct shape
        out = jax.eval_shape(spec.transform.to_hf, jax.ShapeDtypeStruct(slice_shape, jnp.float32))
        shapes[key] = tuple(out.shape)
    if shape != shapes[key]:
        raise CheckpointError(f"{file}: tensor {name!r} has shape {list(shape)}, expected {list(shapes[key])} "
                              f"from {CONFIG_FILE}")
    try:
        tensor = handle.get_tensor(name)
    except SafetensorError as error:
        raise CheckpointError(f"{file}: tensor {name!r} cannot be read ({error})") from error
    return np.asarray(spec.transform.to_model(tensor))


# ----------------------------------------------------------------------------------------------------
# Saving


def save_pretrained(model: Any, path: str | pathlib.Path, *, dtype: Any = None) -> pathlib.Path:
    """Writes ``config.json`` + ``model.safetensors`` that ``transformers`` loads, for any registered model.

    dtype: floating dtype of the written tensors (default: the model's param dtype); tensors the family
    pins (``TensorSpec.dtype``) keep theirs. Returns ``path``.
    """
    from safetensors.numpy import save_file

    family = family_for_model(model)
    dtype = jnp.dtype(dtype or model.policy.param_dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"save_pretrained dtype: expected a floating dtype, got {dtype.name}")
    flat = {p: v[...] for p, v in nnx.to_flat_state(nnx.state(model))}
    tensors = save_tensors(family.tensor_table(model.config), flat, dtype)
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / SINGLE_FILE), metadata={"format": "pt"})
    (path / CONFIG_FILE).write_text(json.dumps(family.config_to_hf(model.config, dtype.name), indent=2) + "\n")
    return path


def save_tensors(table: TensorTable, flat: dict[tuple, Any], dtype: Any) -> dict[str, np.ndarray]:
    """``{HF name: array}`` in HF layout for a model's flat state ``{path: array}``; every path must be
    covered by the table."""
    uncovered = sorted(set(flat) - {spec.path for spec in table.specs}, key=str)
    if uncovered:
        raise ValueError(f"internal: state with no HF tensor: {uncovered[:5]}")
    host: dict[tuple, np.ndarray] = {}
    tensors = {}
    for spec in table.specs:
        if spec.path not in host:
            host[spec.path] = np.asarray(jax.device_get(flat[spec.path]))
        value = host[spec.path][spec.index] if spec.index else host[spec.path]
        value = value.astype(np.dtype(spec.dtype or dtype), copy=False)
        tensors[spec.hf_name] = np.ascontiguousarray(spec.transform.to_hf(value))
    return tensors


__all__ = [
    "IDENTITY",
    "CheckpointError",
    "Family",
    "TensorSpec",
    "TensorTable",
    "Transform",
    "config_field",
    "config_from_hf",
    "config_token_ids",
    "family_for_config",
    "family_for_hf",
    "family_for_model",
    "linear",
    "linear_in",
    "load_pretrained",
    "load_tensors",
    "read_config",
    "register",
    "reshape",
    "save_pretrained",
    "save_tensors",
    "tensor_files",
]

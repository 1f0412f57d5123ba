"""Frozen-dataclass configs: dotted overrides from the command line and JSON round trips.

``apply_overrides(config, {"model.num_layers": "4", "optimizer.learning_rate": "1e-3"})`` returns a
new config with the fields replaced, parsing each string by the field's declared type. Unknown
fields, unparsable values and values the config's own checks reject raise ``ValueError`` naming the
flag as typed (``--train.steps``, also when a caller applies a section's overrides with
``prefix="train."``) and the expected form.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any


def _parse(value: str, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value.lower() in ("none", "null") and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse(value, arg, key)
            except ValueError:
                continue
        raise ValueError(f"--{key}: cannot parse {value!r} as {annotation}")
    if annotation is bool:
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"--{key}: expected true or false, got {value!r}")
    if annotation is int:
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"--{key}: expected an integer, got {value!r}") from None
    if annotation is float:
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"--{key}: expected a number, got {value!r}") from None
    if annotation is str:
        return value
    if origin is tuple:
        items = [v for v in value.split(",") if v]
        inner = args[0] if args else str
        return tuple(_parse(v, inner, key) for v in items)
    if annotation is Any:
        return json.loads(value) if value[:1] in "[{0123456789-" else value
    raise ValueError(f"--{key}: fields of type {annotation} cannot be set from the command line")


def apply_overrides(config, overrides: dict[str, str], *, prefix: str = ""):
    """Returns ``config`` with dotted ``overrides`` applied (values are strings from the CLI).

    prefix: the dotted path of ``config`` on the command line (``"train."`` when the keys of
    ``--train.steps=...`` arrive as ``steps``), so that errors name the flag as the user typed it.
    """
    for key, value in overrides.items():
        config = _apply_one(config, key.split("."), value, prefix + key)
    return config


def _apply_one(config, parts: list[str], value: str, key: str):
    if not dataclasses.is_dataclass(config):
        raise ValueError(f"--{key}: {type(config).__name__} has no fields to set")
    fields = {f.name: f for f in dataclasses.fields(config)}
    name = parts[0]
    if name not in fields:
        raise ValueError(f"--{key}: unknown field {name!r}; fields are {sorted(fields)}")
    current = getattr(config, name)
    if len(parts) > 1:
        return dataclasses.replace(config, **{name: _apply_one(current, parts[1:], value, key)})
    hints = typing.get_type_hints(type(config))
    parsed = _parse(value, hints[name], key)
    try:
        return dataclasses.replace(config, **{name: parsed})
    except ValueError as error:  # the config's own checks (__post_init__), e.g. "train.steps: expected ..."
        message = str(error)
        raise ValueError(f"--{message}" if message.startswith(f"{key}:") else f"--{key}: {message}") from error


def to_dict(config) -> Any:
    """JSON-ready nested dict of a dataclass config (dtypes and tuples made plain)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    if isinstance(config, (str, int, float, bool)) or config is None:
        return config
    return str(config)


def parse_overrides(argv: list[str]) -> dict[str, str]:
    """``--a.b=value`` / ``--a.b value`` arguments as {"a.b": "value"}; anything else is an error."""
    overrides = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise ValueError(f"{arg!r}: expected --field=value (dotted for nested fields, e.g. --model.num_layers=4)")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        else:
            if i + 1 >= len(argv):
                raise ValueError(f"{arg}: expected a value")
            key, value = arg[2:], argv[i + 1]
            i += 1
        overrides[key] = value
        i += 1
    return overrides

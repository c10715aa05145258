"""Typed, strict configuration: YAML -> frozen dataclasses, with ``--set a.b=value`` overrides.

Every section of a recipe is a dataclass. Loading is strict: an unknown key, a missing
required key or a value of the wrong type raises :class:`ConfigError` naming the dotted
key (``train.lr``), so a typo can never silently become a new setting.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class MmsslError(Exception):
    """A problem the user can fix; ``mmssl`` prints its message as ``mmssl: error: ...`` (exit code 2)."""


class ConfigError(MmsslError, ValueError):
    """A configuration problem; the message names the offending key."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, so an error never echoes a huge value in full."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _number(value: Any, tp: type, key: str) -> Any:
    """``value`` as a finite ``int``/``float`` (YAML 1.1 reads "1e-4" as a string; ints widen to float).

    Non-finite floats (``nan``, ``inf``) and integers too large for a float are errors here, at
    load time, instead of surfacing later as a NaN loss or an ``OverflowError``.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, str))
        or (tp is int and not isinstance(value, int))
    ):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {short_repr(value)}")
    if tp is int:
        if not -(2**63) <= value < 2**63:
            raise ConfigError(f"{key}: {short_repr(value)} is out of range (a 64-bit integer is expected)")
        return value
    try:
        number = float(value)
    except OverflowError:
        raise ConfigError(f"{key}: {short_repr(value)} is too large for a float") from None
    except ValueError:
        raise ConfigError(f"{key}: expected float, got {short_repr(value)}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{key}: must be a finite number, got {short_repr(value)}")
    return number


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted (int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        for arg in candidates:
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                if len(candidates) == 1:  # `float | None`: the float's own message says more
                    raise e from None
        raise ConfigError(f"{key}: {short_repr(value)} is not a valid {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {short_repr(value)} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {short_repr(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {short_repr(value)}")
        return {k: _convert(v, args[1] if args else Any, f"{key}.{k}") for k, v in value.items()}
    if tp in (int, float):
        return _number(value, tp, key)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {short_repr(value)}")
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"{key}: expected str, got {short_repr(value)}")
    return value


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, strictly.

    Raises:
        ConfigError: unknown key, missing required key, or a value of the wrong type.
    """
    where = prefix or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {short_repr(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown key {short_repr(key)}; valid keys here: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {key!r}")
    try:
        return cls(**kwargs)
    except ValueError as e:  # __post_init__ validation; its messages name the dotted key
        raise ConfigError(str(e)) from e


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain dict/list values suitable for YAML."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only ``true``/``false`` (any case). PyYAML follows YAML 1.1, where
    ``no``, ``yes``, ``on`` and ``off`` are booleans too, so ``mixed_precision: no`` would read
    as ``False``."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    """Parse YAML text the way recipes and ``--set`` values are read (YAML 1.2 booleans)."""
    return yaml.load(text, Loader=_Loader)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-4"`` -> ``(["train", "lr"], 1e-4)``; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {item!r}: empty key")
    value = load_yaml(raw) if raw.strip() else ""
    return parts, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of ``raw`` with each ``key=value`` override applied (nested by dots).

    Keys are not checked here: the strict load that follows rejects unknown ones by name.
    """
    out = yaml.safe_load(yaml.safe_dump(raw))  # deep copy of plain data
    for item in overrides:
        parts, value = parse_override(item)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[: i + 1])!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    try:
        data = load_yaml(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def write_yaml(obj: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))

"""YAML configs -> frozen dataclasses, with ``key=value`` overrides.

Every job reads one YAML file into a tree of frozen dataclasses.  Overrides
from the command line (``train.epochs=5 model.name=early_fusion``) are applied
on top.  Validation walks the whole tree and collects *every* problem with its
dotted path before raising one :class:`~mmray.errors.ConfigError`, so a user
fixes a config in one go rather than one error per run.

Supported field types: ``int``, ``float``, ``str``, ``bool``, ``Path``,
``Optional[...]`` / ``X | None``, ``Literal[...]``, ``tuple[X, ...]``,
``list[X]`` (stored as a tuple to keep the config immutable),
``dict[str, X]`` and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from mmray.errors import ConfigError

T = TypeVar("T")
_MISSING = object()


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; an empty file is an empty mapping."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as e:
        raise ConfigError([("", f"config file not found: {path}")], source=str(path)) from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError([("", f"not valid YAML: {e}")], source=str(path)) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            [("", f"expected a mapping at the top level, got {type(data).__name__}")], source=str(path)
        )
    return data


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Turn ``["a.b=1", "c=x"]`` into a nested dict; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append((item, "override must look like key=value, e.g. train.epochs=5"))
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append((key, f"conflicts with an earlier override of {part!r}"))
                break
            node = child
        else:
            node[parts[-1]] = value
    return tree, problems


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Merge ``top`` into a copy of ``base``; nested mappings merge, the rest replaces."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def build(cls: type[T], data: dict[str, Any] | None, *, source: str | None = None) -> T:
    """Build dataclass ``cls`` from a mapping, reporting every problem at once."""
    problems: list[tuple[str, str]] = []
    result = _convert(cls, {} if data is None else data, "", problems)
    if problems:
        raise ConfigError(problems, source=source)
    return result


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    defaults: dict[str, Any] | None = None,
) -> T:
    """Load ``cls`` from an optional YAML file plus ``key=value`` overrides."""
    data: dict[str, Any] = dict(defaults or {})
    source = None
    if path is not None:
        data = deep_merge(data, load_yaml(path))
        source = str(path)
    tree, problems = parse_overrides(overrides)
    data = deep_merge(data, tree)
    try:
        cfg = build(cls, data, source=source)
    except ConfigError as e:
        raise ConfigError(problems + e.problems, source=source) from None
    if problems:
        raise ConfigError(problems, source=source)
    return cfg


def to_dict(cfg: Any) -> Any:
    """Plain, JSON-friendly form of a config (tuples become lists, paths strings)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def config_hash(cfg: Any) -> str:
    """Stable short hash of a config, for lineage."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --- conversion -------------------------------------------------------------


def _join(path: str, key: str) -> str:
    if not key:
        return path
    return f"{path}.{key}" if path else key


def _describe(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, path, problems)
    origin = get_origin(tp)
    args = get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _convert(non_none[0], value, path, problems)
        for option in non_none:  # first option that converts cleanly wins
            trial: list[tuple[str, str]] = []
            out = _convert(option, value, path, trial)
            if not trial:
                return out
        problems.append((path, f"expected {_describe(tp)}, got {value!r}"))
        return None
    if origin is Literal:
        if value not in args:
            problems.append((path, f"must be one of {', '.join(map(repr, args))}, got {value!r}"))
        return value
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            problems.append((path, f"expected a list, got {type(value).__name__} {value!r}"))
            return ()
        item_tp = args[0] if args else Any
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                problems.append((path, f"expected {len(args)} items, got {len(value)}"))
                return tuple(value)
            return tuple(_convert(a, v, f"{path}[{i}]", problems) for i, (a, v) in enumerate(zip(args, value)))
        return tuple(_convert(item_tp, v, f"{path}[{i}]", problems) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            problems.append((path, f"expected a mapping, got {type(value).__name__}"))
            return {}
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _convert(val_tp, v, _join(path, str(k)), problems) for k, v in value.items()}
    return _convert_scalar(tp, value, path, problems)


def _convert_scalar(tp: Any, value: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append((path, f"expected true or false, got {value!r}"))
        return value
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        problems.append((path, f"expected an integer, got {value!r}"))
        return value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
        problems.append((path, f"expected a number, got {value!r}"))
        return value
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        problems.append((path, f"expected a string, got {value!r}"))
        return value
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        problems.append((path, f"expected a path, got {value!r}"))
        return value
    return value


def _convert_dataclass(cls: Any, value: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    if dataclasses.is_dataclass(value) and isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        problems.append((path, f"expected a mapping for {cls.__name__}, got {type(value).__name__}"))
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in value:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(fields)}"
            problems.append((_join(path, str(key)), f"unknown key{hint}"))
    kwargs = {}
    n_before = len(problems)
    for name, field in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], _join(path, name), problems)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            if dataclasses.is_dataclass(hints[name]):
                kwargs[name] = _convert(hints[name], {}, _join(path, name), problems)
            else:
                problems.append((_join(path, name), "required but missing"))
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:  # __post_init__ checks report through here
        if not any(p[0].startswith(path) for p in problems):
            problems.append((path, str(e)))
        return None
    check = getattr(obj, "validate", None)
    # Cross-field checks only make sense once every field has the right type.
    if callable(check) and len(problems) == n_before:
        for sub, msg in check():
            problems.append((_join(path, sub), msg))
    return obj

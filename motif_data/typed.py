"""Typed configs: frozen dataclasses whose constructor checks every field and lists every problem at once.

The one style of the project's configs (build, model, train). A config class derives from ``Config``:

- each value is checked against its annotation (``int``, ``float``, ``bool``, ``str``, ``X | None``, tuples of
  these, nested configs); an ``int`` is widened where a ``float`` is declared, nothing else is coerced, so
  ``near = "no"`` is an error, not a true value;
- ranges and choices are declared beside the field with ``setting(default, ge=…, choices=…)``;
- the class's ``rules()`` adds what relates fields to each other;
- ``__post_init__`` raises one ``ConfigError`` with every problem, each naming its key, what it got and what
  to write.

``from_mapping`` builds a config from a parsed TOML/YAML table, nested tables included, and gathers the
problems of every level (unknown keys, a string where a table belongs, bad values) into the same error.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import re
import types
import typing
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["Config", "ConfigError", "setting", "from_mapping"]


class ConfigError(ValueError):
    """Every problem of one config; ``problems`` holds ``(key, message)`` pairs, keys relative to ``where``."""

    def __init__(self, title: str, problems: list[tuple[str, str]], where: str = "") -> None:
        self.title, self.where, self.problems = title, where, problems
        super().__init__(f"invalid {title}:\n  - " + "\n  - ".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{_join(self.where, key) or 'config'}: {msg}" for key, msg in self.problems]


def setting(default: Any = dataclasses.MISSING, *, ge=None, gt=None, le=None, lt=None, choices=None, **kw):
    """A field with its range or choices written beside its default (the one place both are written)."""
    meta = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices).items() if v is not None}
    return dataclasses.field(default=default, metadata=meta, **kw)


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every config dataclass; subclasses are ``@dataclass(frozen=True)`` too."""

    #: The key prefix of this config's problems when it is built directly in Python ("model", "dedup", …).
    section: ClassVar[str] = ""
    #: What the error's first line calls it.
    title: ClassVar[str] = "config"

    def __post_init__(self) -> None:
        problems, typed = [], True
        for f in dataclasses.fields(self):
            value, problem, of_type = _check(getattr(self, f.name), _hints(type(self))[f.name], f.metadata)
            if problem:
                problems.append((f.name, problem))
                typed &= not of_type  # out of range or choices: the type the rules need is there
            elif value is not getattr(self, f.name):
                object.__setattr__(self, f.name, value)  # the int of a float field, widened
        if typed:  # rules may rely on every field having its declared type
            problems.extend(self.rules())
        if problems:
            raise ConfigError(self.title, problems, self.section)

    def rules(self) -> Iterator[tuple[str, str]]:
        """Problems that relate fields to each other, as ``(key, message)``; none by default. Pure: what
        needs the file system belongs in ``prepare``."""
        return iter(())

    @classmethod
    def prepare(cls, values: dict, base: Path) -> Iterator[tuple[str, str]]:
        """Loading only: rewrite a table's raw ``values`` in place (a relative path resolved against the
        config file's folder ``base``, a table turned into the field's tuple) and yield what the file system
        says is wrong (an input that does not exist). Nothing by default."""
        return iter(())

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def from_mapping(cls: type[Config], table: Any, where: str = "", *, base: str | os.PathLike = ".", **fixed):
    """``cls`` built from a parsed table; raises one ``ConfigError`` listing the problems of every level.

    Nested config fields are built from their own tables, each level's ``prepare`` seeing its raw values
    first; ``fixed`` are fields the caller has built already. Problem keys are prefixed with ``where``."""
    problems: list[tuple[str, str]] = []
    value = _build(cls, table, where, problems, Path(base), fixed)
    if problems:
        raise ConfigError(cls.title, problems)
    return value


def read_table(path: str | os.PathLike) -> dict:
    """The top-level table of a ``.toml`` or ``.yaml``/``.yml`` file; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        from motif_data.compat import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path} is not valid TOML: {e}") from e
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML: {e}") from e
    else:
        raise ValueError(f"{path}: a config is a .toml, .yaml or .yml file")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a table of settings at the top level")
    return data


def _build(cls, table, where, problems, base, fixed):
    if not isinstance(table, Mapping):
        problems.append((where, f"expected a table (key = value settings), got {table!r}"))
        return None
    names = {f.name for f in dataclasses.fields(cls)} - set(fixed)
    unknown = sorted(set(table) - names)
    if unknown:
        problems.append((where, f"unknown keys {unknown}; known: {sorted(names)}"))
    values = {k: v for k, v in table.items() if k in names} | fixed  # prepare may look at fixed ones
    local = list(cls.prepare(values, base))
    problems.extend((_join(where, k), m) for k, m in local)
    for key, _ in local:  # said already: built with its default so the rest is still checked
        if key not in fixed:
            values.pop(key, None)
    kwargs, failed = dict(fixed), False
    for f in dataclasses.fields(cls):
        if f.name not in values or f.name in fixed:
            continue
        value, nested = values[f.name], _nested(_hints(cls)[f.name])
        if nested is not None and value is not None:
            inner, many = nested
            if many and not isinstance(value, list):
                problems.append(
                    (_join(where, f.name), f"expected a list of tables ([[{f.name}]]), got {value!r}")
                )
                kwargs[f.name], failed = None, True
                continue
            items = [(f"{f.name}[{i}]", v) for i, v in enumerate(value)] if many else [(f.name, value)]
            built = [_build(inner, v, _join(where, k), problems, base, {}) for k, v in items]
            failed |= any(b is None for b in built)
            kwargs[f.name] = tuple(built) if many else built[0]
        else:
            kwargs[f.name] = value
    missing = [f.name for f in dataclasses.fields(cls) if _required(f) and f.name not in kwargs]
    if missing:
        problems.append((where, f"missing {missing}: add {'it' if len(missing) == 1 else 'them'}"))
        failed = True
    if failed:  # a child failed: report the types of the rest, skip the rules that need a whole config
        for f in dataclasses.fields(cls):
            if f.name in kwargs and _nested(_hints(cls)[f.name]) is None:
                _, problem, _ = _check(kwargs[f.name], _hints(cls)[f.name], f.metadata)
                if problem:
                    problems.append((_join(where, f.name), problem))
        return None
    try:
        return cls(**kwargs)
    except ConfigError as e:
        problems.extend((_join(where, k), m) for k, m in e.problems)
    return None


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(path: str) -> bool:
    """Whether ``path`` names a URL (``hf://``, ``s3://``, ``file://`` …) rather than a local path."""
    return bool(_URL.match(path))


def resolve_path(path: str, base: str | os.PathLike) -> str:
    """A config's relative path means the same file wherever the config is run from: its own folder."""
    if is_url(path) or os.path.isabs(path):
        return path
    return os.path.abspath(Path(base) / path)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where and key and key != where else (key or where)


@cache
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _nested(tp) -> tuple[type, bool] | None:
    """(config class, is a tuple of them) where ``tp`` holds configs, else None."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if isinstance(tp, type) and issubclass(tp, Config):
        return tp, False
    if _is_union(tp) and len(args) == 1:
        return _nested(args[0])
    if typing.get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis:
        inner = args[0]
        return (inner, True) if isinstance(inner, type) and issubclass(inner, Config) else None
    return None


def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _describe(tp) -> str:
    if tp in _NAMES:
        return _NAMES[tp]
    args = typing.get_args(tp)
    if _is_union(tp):
        return " or ".join("nothing (leave it out)" if a is type(None) else _describe(a) for a in args)
    if typing.get_origin(tp) is dict:
        return f"a table of {_describe(args[1]).removeprefix('a ').removeprefix('an ')}s"
    if typing.get_origin(tp) is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} values"
    if isinstance(tp, type) and issubclass(tp, Config):
        return "a table"
    return getattr(tp, "__name__", str(tp))


_BOUNDS = {
    "ge": (operator.ge, "≥"),
    "gt": (operator.gt, ">"),
    "le": (operator.le, "≤"),
    "lt": (operator.lt, "<"),
}


def _range(meta: Mapping) -> str:
    return " and ".join(f"{sign} {meta[k]}" for k, (_, sign) in _BOUNDS.items() if k in meta)


def _check(value, tp, meta: Mapping) -> tuple[Any, str | None, bool]:
    """(value, None, False) when ``value`` fits ``tp`` and ``meta``'s range (an int widened for a float),
    else (value, what to write instead, whether the type itself is wrong)."""
    value, ok = _convert(value, tp)
    if not ok:
        return value, f"expected {_describe(tp)}, got {value!r}", True
    choices = meta.get("choices")
    if choices is not None and value is not None:
        bad = [v for v in (value if isinstance(value, tuple) else (value,)) if v not in choices]
        if bad:
            got = repr(bad[0]) if not isinstance(value, tuple) else f"{bad}"
            return (
                value,
                f"expected {'each to be ' if isinstance(value, tuple) else ''}one of {list(choices)}, got {got}",
                False,
            )
    if value is not None and not isinstance(value, tuple):
        if any(k in meta and not op(value, meta[k]) for k, (op, _) in _BOUNDS.items()):
            return value, f"expected {_describe(_plain(tp))} {_range(meta)}, got {value!r}", False
    return value, None, False


def _plain(tp):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if _is_union(tp) and len(args) == 1 else tp


def _convert(value, tp) -> tuple[Any, bool]:
    if tp is typing.Any:
        return value, True
    if tp is type(None):
        return value, value is None
    if _is_union(tp):
        for arg in typing.get_args(tp):
            converted, ok = _convert(value, arg)
            if ok:
                return converted, True
        return value, False
    if tp is bool:
        return value, isinstance(value, bool)
    if tp is int:
        return value, isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return (float(value) if ok and not isinstance(value, float) else value), ok
    if tp is str:
        return value, isinstance(value, str)
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str) and args == (str, Ellipsis):
            return (value,), True  # one path or name where a list is allowed
        if not isinstance(value, list | tuple):
            return value, False
        inner = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(inner) != len(value):
            return value, False
        out = [_convert(v, t) for v, t in zip(value, inner, strict=True)]
        if not all(ok for _, ok in out):
            return value, False
        return tuple(v for v, _ in out), True
    if typing.get_origin(tp) is dict:  # a TOML table of name = value
        key_type, value_type = typing.get_args(tp)
        if not isinstance(value, Mapping):
            return value, False
        out = {k: _convert(v, value_type) for k, v in value.items()}
        if not all(_convert(k, key_type)[1] and ok for k, (_, ok) in out.items()):
            return value, False
        return {k: v for k, (v, _) in out.items()}, True
    if isinstance(tp, type):
        return value, isinstance(value, tp)
    return value, True

"""Loading YAML configuration into validated dataclasses, with errors that name file and key.

Everything a config says that can be checked without data is checked at load, so a run that
starts has settings it can finish with: types, finite numbers, ranges and resource caps
(``Annotated[int, at_least(1, cap=10_000)]``), each class's ``validate`` for rules across
settings, and, for a config loaded from a file here, what it names on this machine (``Local``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml

from common.errors import ConfigError

T = TypeVar("T")

#: A config is a few kilobytes; past this a file is not one (``base: /dev/zero`` is refused too).
MAX_YAML_BYTES = 1_000_000
#: Nesting deeper than this is no config either, and would exhaust the parser's recursion.
MAX_YAML_DEPTH = 32
#: Where the resource caps below are explained.
CAPS_DOC = "docs/formats.md#configuration-limits"


class SettingError(ValueError):
    """What a ``validate`` or ``check_local`` raises about one setting, so the error names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class _Refused(yaml.MarkedYAMLError):
    """YAML that parses but that a config must not use."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases (a few lines of nested aliases expand to
    billions of nodes, and a self-referencing one never ends) and with bounded nesting."""

    depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(
                problem="anchors and aliases (&name, *name) are not allowed; write values out",
                problem_mark=event.start_mark,
            )
        if self.depth >= MAX_YAML_DEPTH:
            raise _Refused(
                problem=f"nested deeper than {MAX_YAML_DEPTH} levels",
                problem_mark=event.start_mark,
            )
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Unreadable(Exception):
    """Why a path cannot be read as a config file."""


def _read_bounded(path: Path) -> bytes:
    """The file's bytes, if it is a regular file of at most MAX_YAML_BYTES: stat before open, so
    a device, FIFO or folder is refused without reading (or waiting on) it."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise _Unreadable("not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # swapped since the stat
                raise _Unreadable("not a regular file")
            data = f.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError as exc:
        raise _Unreadable("no such file") from exc
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise _Unreadable(f"cannot read: {exc}") from exc
    if len(data) > MAX_YAML_BYTES:
        raise _Unreadable(f"larger than {MAX_YAML_BYTES:,} bytes: not a config file")
    return data


def _one_line(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as 'line L, column C: problem'."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return " ".join(f"{where}{problem}".split())


def load_yaml(path: str | Path, what: str | None = None) -> dict:
    """The mapping at the top of a YAML file; ``what`` names the file's kind in errors."""
    path = Path(path)
    where = f"{path}: cannot read {what}" if what else str(path)
    try:
        data = yaml.load(_read_bounded(path), Loader=_Loader)  # noqa: S506 - a SafeLoader
    except _Unreadable as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except _Refused as exc:
        raise ConfigError(f"{where}: {_one_line(exc)}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {_one_line(exc)}") from exc
    except ValueError as exc:  # a scalar PyYAML resolves but cannot build: 2020-13-45, 10**5000
        raise ConfigError(f"{where}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    return data


@dataclasses.dataclass(frozen=True)
class Range:
    """Where a number setting may lie. ``cap`` is a resource cap: no meaning ends there, but past
    it a run would exhaust time, memory or disk before it produced anything (see CAPS_DOC)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    cap: float | None = None

    def __call__(self, value: float, where: str) -> float:
        low, high = self.low, self.high
        if (low is not None and (value <= low if self.low_open else value < low)) or (
            high is not None and (value >= high if self.high_open else value > high)
        ):
            raise ConfigError(f"{where}: expected {self._bounds()}, got {value!r}")
        if self.cap is not None and value > self.cap:
            raise ConfigError(
                f"{where}: {value!r} is past the resource cap {_number(self.cap)} ({CAPS_DOC})"
            )
        return value

    def _bounds(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_number(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {_number(self.high)}")
        return " and ".join(parts)


def _number(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def at_least(low: float, high: float | None = None, *, cap: float | None = None) -> Range:
    return Range(low, high, cap=cap)


def above(low: float, high: float | None = None, *, cap: float | None = None) -> Range:
    return Range(low, high, low_open=True, cap=cap)


#: Resource cap on the processes one step may start (data generation, caches, data loading).
MAX_WORKERS = 256
#: Every RNG ecgfl seeds (numpy's SeedSequence, torch, random) takes these.
Seed = Annotated[int, at_least(0, 2**32 - 1)]
#: Processes for data generation and cache preparation: 1 works in this process.
Workers = Annotated[int, at_least(1, cap=MAX_WORKERS)]


@dataclasses.dataclass(frozen=True)
class Local:
    """A setting that names something on this machine (a file, a folder, a label space file).

    ``resolve`` checks it and returns its absolute form (the Flower apps run in other working
    directories). It runs only for a config loaded from a file here: a hospital that receives the
    coordinator's experiment must not look for the coordinator's paths.
    """

    resolve: Callable[[str], str]


def existing_file(value: str) -> str:
    return str(_existing(value, "file", Path.is_file))


def existing_dir(value: str) -> str:
    return str(_existing(value, "folder", Path.is_dir))


def _existing(value: str, kind: str, right_kind: Callable[[Path], bool]) -> Path:
    try:
        path = Path(value).expanduser().absolute()
        exists, right = path.exists(), right_kind(path)
    except (OSError, ValueError, RuntimeError) as exc:  # NUL byte, name too long, unknown ~user
        raise ConfigError(f"{value!r}: not a usable path ({exc})") from exc
    if not exists:
        raise ConfigError(f"{path}: no such {kind}")
    if not right:
        raise ConfigError(f"{path}: not a {kind}")
    return path


def coerce(value: Any, hint: Any, where: str, local: bool = False) -> Any:
    """``value`` as type ``hint`` (a dataclass, list, dict, number, string, Annotated, union),
    or ConfigError naming ``where``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        value = coerce(value, args[0], where, local)
        for check in hint.__metadata__:
            value = _check(check, value, where, local)
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, where, local)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, _fields(value) if isinstance(value, hint) else value, where, local)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [coerce(v, item, f"{where}[{i}]", local) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        return _coerce_dict(value, args, where, local)
    if hint in (float, int, bool, str):
        return _SCALARS[hint](value, where)
    return value


def _coerce_union(value: Any, args: tuple, where: str, local: bool) -> Any:
    if value is None and type(None) in args:
        return None
    errors = []
    for inner in (a for a in args if a is not type(None)):
        try:
            return coerce(value, inner, where, local)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(" or ".join(errors))


def _coerce_dict(value: Any, args: tuple, where: str, local: bool) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    if not args:
        return dict(value)
    key, item = args
    return {
        coerce(k, key, f"{where} key {k!r}", local): coerce(v, item, _key(where, k), local)
        for k, v in value.items()
    }


def _check(check: object, value: Any, where: str, local: bool) -> Any:
    if isinstance(check, Local):
        if not local:
            return value
        try:
            return check.resolve(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    return check(value, where)


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        hint = ""
        if isinstance(value, str) and _is_float(value):
            hint = f" (YAML reads {value} as text: write it with a dot, e.g. 1.0e-5)"
        raise ConfigError(f"{where}: expected a number, got {value!r}{hint}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return number


def _is_float(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _str(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return str(value)


_SCALARS: dict[type, Callable[[Any, str], Any]] = {
    float: _float,
    int: _int,
    bool: _bool,
    str: _str,
}


def from_dict(cls: type[T], data: Any, where: str = "config", local: bool = False) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys, wrong types and values out of range
    raise ConfigError. ``local``: the config was read from a file here, so check what it names on
    this machine too (``Local`` settings, then the class's ``check_local``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(names)}")
    kwargs = {k: coerce(v, hints[k], _key(where, k), local) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    checks = [getattr(obj, "validate", None)]
    if local:
        checks.append(getattr(obj, "check_local", None))
    for check in filter(None, checks):
        try:
            check()
        except ValueError as exc:
            at = _key(where, exc.key) if isinstance(exc, SettingError) else where
            raise ConfigError(f"{at}: {exc}") from exc
    return obj


def _key(where: str, name: object) -> str:
    """'file: section.key': the first key after a file name follows ': ', the others '.'."""
    return f"{where}.{name}" if ": " in where else f"{where}: {name}"


def _fields(obj: Any) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}


def check(obj: T, where: str = "config") -> T:
    """``obj``, a dataclass built in code rather than read, checked as ``from_dict`` checks
    what it reads (ranges, nested settings, ``validate``)."""
    return from_dict(type(obj), _fields(obj), where)


def load(cls: type[T], path: str | Path, section: str | None = None) -> T:
    """Load ``cls`` from a YAML file here (optionally one top-level ``section`` of it)."""
    data = load_yaml(path)
    where = str(path)
    if section is not None:
        data = data.get(section, {}) or {}
        where = f"{path}: {section}"
    return from_dict(cls, data, where, local=True)


def relative_to_file(path: str, config_file: str | Path, key: str) -> str:
    """Setting ``key`` of ``config_file`` as a path: ``~`` expanded, relative to the file's
    folder."""
    try:
        expanded = Path(path).expanduser()
    except RuntimeError as exc:  # '~someone' with no such user
        raise ConfigError(f"{config_file}: {key}: {path!r}: {exc}") from exc
    return str(Path(config_file).resolve().parent / expanded)

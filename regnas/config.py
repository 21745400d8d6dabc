"""One declaration per option: a command's settings are a dataclass whose fields carry their default and help.

From that one declaration come the command's flags (`add_options`), its TOML file (`load_toml`, `dumps_toml`:
one table per section, as `regnas build --config build.toml` reads and every build writes), and the Python
API's keyword arguments (the dataclass itself). A field is an option when it was declared with `option(...)`;
a field holding a nested dataclass declared with `section(...)` lends its own options to that section.
"""

from __future__ import annotations

import argparse
import math
import tomllib
import typing
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from types import NoneType, UnionType
from typing import Any

from regnas.errors import RegnasError

_KEY = "regnas.option"


@dataclass(frozen=True)
class Option:
    """How one field meets users: its help, its TOML table and its flag."""

    help: str
    section: str | None = None
    """The TOML table (`[search]`); None: the file's top level."""
    flag: str | None = None
    """The command-line flag; default `--field-name`."""
    parse: Callable[[str], Any] | None = None
    """Turns (and checks) a value given as text; the field's type when None."""
    metavar: str | None = None
    cli: dict[str, Any] = field(default_factory=dict)
    """Further argparse settings (action, nargs, const) where the flag is not `--name VALUE`."""


def option(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field that is a user option (see `Option`)."""
    meta = {_KEY: Option(help, **kw)}
    if isinstance(default, list | dict | set):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(factory: Callable[[], Any], name: str) -> Any:
    """A dataclass field holding a nested settings dataclass whose options belong to the TOML table `name`."""
    return field(default_factory=factory, metadata={_KEY: Option("", section=name)})


def count(value: str) -> int:
    v = int(value)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {v}")
    return v


def positive(value: str) -> int:
    v = int(value)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def minutes(value: str) -> float:
    v = float(value)
    if not (v > 0 and v < math.inf):
        raise argparse.ArgumentTypeError(f"must be a positive number of minutes, got {value}")
    return v


def fraction(value: str) -> float:
    v = float(value)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {v}")
    return v


def confidence(value: str) -> float:
    v = float(value)
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1 (such as 0.95), got {v}")
    return v


def finite(value: str) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
    return v


def positive_float(value: str) -> float:
    v = finite(value)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return v


def port(value: str) -> int:
    v = int(value)
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 1 to 65535, got {v}")
    return v


@dataclass(frozen=True)
class _Leaf:
    """An option found in a settings tree: where it lives (`path` of field names) and what it is."""

    path: tuple[str, ...]
    name: str
    option: Option
    type: Any
    default: Any

    @property
    def dest(self) -> str:
        return ".".join(self.path)

    @property
    def flag(self) -> str:
        return self.option.flag or "--" + self.name.replace("_", "-")

    @property
    def table(self) -> str | None:
        return self.option.section


def _default(f: Any) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def leaves(cls: type, path: tuple[str, ...] = ()) -> Iterator[_Leaf]:
    """Every option of the settings class `cls`, nested sections included, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        opt = f.metadata.get(_KEY)
        if opt is None:
            continue
        if is_dataclass(hints[f.name]):
            for leaf in leaves(hints[f.name], (*path, f.name)):
                yield leaf if leaf.table else replace(leaf, option=replace(leaf.option, section=opt.section))
        else:
            yield _Leaf((*path, f.name), f.name, opt, hints[f.name], _default(f))


def _base(tp: Any) -> tuple[Any, bool]:
    """(the type without `| None`, whether None is allowed)."""
    if isinstance(tp, UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not NoneType]
        return (args[0] if len(args) == 1 else tp), NoneType in typing.get_args(tp)
    return tp, False


def _shown(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value) if len(value) != 1 else str(value[0])
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_options(parser: argparse.ArgumentParser, cls: type, only: set[str] | None = None, defaults: bool = False) -> None:
    """One flag per option of `cls` (those named in `only`, if given). Without `defaults`, flags not given stay out of
    the parsed namespace, so they override a file (`apply_args`) without their defaults doing so; with it, a command
    that reads no file gets every default. Help ends with the default where it is a value."""
    for leaf in leaves(cls):
        if only is not None and leaf.name not in only:
            continue
        opt, tp = leaf.option, _base(leaf.type)[0]
        text = opt.help
        if not (leaf.default is None or isinstance(leaf.default, bool) or leaf.default == ()) and "(default" not in text:
            text = f"{text} (default: {_shown(leaf.default)})"
        default = leaf.default if defaults else argparse.SUPPRESS
        kw: dict[str, Any] = {"dest": leaf.dest, "default": default, "help": text.replace("%", "%%")}
        if tp is bool and not opt.cli:
            kw["action"] = "store_false" if leaf.default else "store_true"
        else:
            kw["metavar"] = opt.metavar or leaf.name.upper()
            if "action" not in opt.cli or opt.cli["action"] == "append":
                kw["type"] = opt.parse or (str if typing.get_origin(tp) is tuple else tp)
        parser.add_argument(leaf.flag, **kw | opt.cli)


def with_values(obj: Any, values: dict[tuple[str, ...], Any]) -> Any:
    """`obj` with the options at these paths set, all at once (settings may check one option against another)."""
    nested: dict[str, dict[tuple[str, ...], Any]] = {}
    for path, value in values.items():
        nested.setdefault(path[0], {})[path[1:]] = value
    return replace(obj, **{k: v.pop(()) if () in v else with_values(getattr(obj, k), v) for k, v in nested.items()})


def apply_args(obj: Any, args: argparse.Namespace) -> Any:
    """`obj` with every option given as a flag in `args` set."""
    given = {}
    for leaf in leaves(type(obj)):
        if hasattr(args, leaf.dest):
            value = getattr(args, leaf.dest)
            given[leaf.path] = tuple(value) if typing.get_origin(_base(leaf.type)[0]) is tuple else value
    return with_values(obj, given)


def _from_toml(leaf: _Leaf, value: Any, where: str) -> Any:
    """A TOML value as the option's type, or one line saying what is wrong."""
    tp = _base(leaf.type)[0]
    try:
        if typing.get_origin(tp) is tuple:
            items = value if isinstance(value, list) else None
            if items is None or not all(isinstance(v, str) for v in items):
                raise TypeError("a list of strings")
            return tuple(leaf.option.parse(v) if leaf.option.parse else v for v in items)
        if tp is bool:
            if not isinstance(value, bool):
                raise TypeError("true or false")
            return value
        number = isinstance(value, int) or (tp is float and isinstance(value, float))
        if tp in (int, float) and (isinstance(value, bool) or not number):
            raise TypeError("an integer" if tp is int else "a number")
        if tp in (str, Path) and not isinstance(value, str):
            raise TypeError("a string")
        return leaf.option.parse(str(value)) if leaf.option.parse else tp(value)
    except TypeError as exc:
        raise RegnasError(f"{where} must be {exc}, got {value!r}; fix it in the file") from None
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise RegnasError(f"{where}: {exc}; fix it in the file") from None


def load_toml(cls: type, path: str | Path) -> Any:
    """The settings in the TOML file at `path` over `cls`'s defaults; unknown keys and wrong types are bad input."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegnasError(f"config file {path} does not exist; pass the path of a build.toml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegnasError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RegnasError(f"{path} is not valid TOML ({exc}); fix the file") from None
    by_table: dict[str | None, dict[str, _Leaf]] = {}
    for leaf in leaves(cls):
        by_table.setdefault(leaf.table, {})[leaf.name] = leaf
    values = {}
    for key, value in doc.items():
        table, items = (key, value) if isinstance(value, dict) else (None, {key: value})
        known = by_table.get(table)
        if known is None:
            tables = ", ".join(f"[{t}]" for t in by_table if t)
            raise RegnasError(f"{path}: unknown table [{key}]; the tables are {tables}")
        for name, v in items.items():
            where = f"{path}: " + (f"[{table}] {name}" if table else name)
            if name not in known:
                raise RegnasError(f"{where} is not an option; the options here are {', '.join(known)}")
            values[known[name].path] = _from_toml(known[name], v, where)
    return with_values(cls(), values)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value)
    return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in text) + '"'


def dumps_toml(obj: Any, header: str = "") -> str:
    """`obj`'s options as TOML that `load_toml` reads back to the same settings (options at None are left out)."""
    tables: dict[str | None, list[str]] = {}
    for leaf in leaves(type(obj)):
        value = obj
        for name in leaf.path:
            value = getattr(value, name)
        if value is not None:
            tables.setdefault(leaf.table, []).append(f"{leaf.name} = {_toml_value(value)}")
    lines = [f"# {line}" for line in header.splitlines()]
    lines += tables.pop(None, [])
    for table, rows in tables.items():
        lines += ["", f"[{table}]", *rows]
    return "\n".join(lines) + "\n"

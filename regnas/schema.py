"""Declared shapes for the JSON documents regnas reads back, checked before any consumer touches them.

A shape is a function `(value, where) -> problem or None`, built from the combinators below, so a
document's owner declares its schema once and every reader gets the same one-line refusal
("family[1].top1 is not valid ('99%')") instead of a traceback deep inside a consumer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Shape = Callable[[Any, str], "str | None"]


def _invalid(value: Any, where: str) -> str:
    shown = repr(value)
    return f"{where} is not valid ({shown if len(shown) <= 60 else shown[:57] + '...'})"


def number(lo: float = -math.inf, hi: float = math.inf, integer: bool = False) -> Shape:
    """A finite JSON number in [lo, hi] (an integer where `integer`); booleans are not numbers."""

    def check(v: Any, where: str) -> str | None:
        ok = isinstance(v, int if integer else int | float) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
        return None if ok else _invalid(v, where)

    return check


def text(v: Any, where: str) -> str | None:
    """A string."""
    return None if isinstance(v, str) else _invalid(v, where)


def flag(v: Any, where: str) -> str | None:
    """A boolean."""
    return None if isinstance(v, bool) else _invalid(v, where)


def anything(v: Any, where: str) -> str | None:
    return None


def maybe(shape: Shape) -> Shape:
    """`shape` or null."""
    return lambda v, where: None if v is None else shape(v, where)


def where(shape: Shape, ok: Callable[[Any], bool]) -> Shape:
    """`shape`, and `ok` holds for the value."""
    return lambda v, at: shape(v, at) or (None if ok(v) else _invalid(v, at))


def list_of(item: Shape, length: int | None = None, min_length: int = 0) -> Shape:
    """A list of `item`s (exactly `length` of them where given, at least `min_length`)."""

    def check(v: Any, where: str) -> str | None:
        if not isinstance(v, list):
            return f"{where} is not a list"
        if (length is not None and len(v) != length) or len(v) < min_length:
            return f"{where} has {len(v)} entries, not {length if length is not None else f'{min_length} or more'}"
        return next((p for i, x in enumerate(v) if (p := item(x, f"{where}[{i}]"))), None)

    return check


def mapping(value: Shape) -> Shape:
    """An object whose values are all `value`s (any keys)."""

    def check(v: Any, where: str) -> str | None:
        if not isinstance(v, dict):
            return f"{where} is not an object"
        return next((p for k, x in v.items() if (p := value(x, f"{where}.{k}"))), None)

    return check


def record(required: dict[str, Shape], optional: dict[str, Shape] | None = None) -> Shape:
    """An object with every `required` key and, where present, valid `optional` ones (other keys are ignored)."""

    def check(v: Any, where: str) -> str | None:
        if not isinstance(v, dict):
            return f"{where} is not an object"
        for key, shape in required.items():
            at = f"{where}.{key}" if where else key
            if key not in v:
                return f"{at} is missing"
            if problem := shape(v[key], at):
                return problem
        for key, shape in (optional or {}).items():
            if key in v and (problem := shape(v[key], f"{where}.{key}" if where else key)):
                return problem
        return None

    return check

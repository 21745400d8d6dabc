"""Declared shapes for the JSON documents regnas reads back, checked before any consumer touches them.

A shape is a function `(value, at) -> problem or None`, built from the combinators below, so a
document's owner declares its schema once and every reader gets the same one-line refusal
("family[1].top1 is not valid ('99%')") instead of a traceback deep inside a consumer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Shape = Callable[[Any, str], "str | None"]


def _invalid(value: Any, at: str) -> str:
    shown = repr(value)
    return f"{at} is not valid ({shown if len(shown) <= 60 else shown[:57] + '...'})"


def _field(at: str, key: str) -> str:
    return f"{at}.{key}" if at else key


def number(lo: float = -math.inf, hi: float = math.inf, integer: bool = False) -> Shape:
    """A finite JSON number in [lo, hi] (an integer where `integer`); booleans are not numbers."""

    def check(v: Any, at: str) -> str | None:
        ok = isinstance(v, int if integer else int | float) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
        return None if ok else _invalid(v, at)

    return check


def text(v: Any, at: str) -> str | None:
    """A string."""
    return None if isinstance(v, str) else _invalid(v, at)


def flag(v: Any, at: str) -> str | None:
    """A boolean."""
    return None if isinstance(v, bool) else _invalid(v, at)


def anything(v: Any, at: str) -> str | None:
    return None


def maybe(shape: Shape) -> Shape:
    """`shape` or null."""
    return lambda v, at: None if v is None else shape(v, at)


def such_that(shape: Shape, ok: Callable[[Any], bool]) -> Shape:
    """`shape`, and `ok` holds for the value."""
    return lambda v, at: shape(v, at) or (None if ok(v) else _invalid(v, at))


def list_of(item: Shape, length: int | None = None, min_length: int = 0) -> Shape:
    """A list of `item`s (exactly `length` of them where given, at least `min_length`)."""

    def check(v: Any, at: str) -> str | None:
        if not isinstance(v, list):
            return f"{at} is not a list"
        if (length is not None and len(v) != length) or len(v) < min_length:
            return f"{at} has {len(v)} entries, not {length if length is not None else f'{min_length} or more'}"
        return next((p for i, x in enumerate(v) if (p := item(x, f"{at}[{i}]"))), None)

    return check


def mapping(value: Shape) -> Shape:
    """An object whose values are all `value`s (any keys)."""

    def check(v: Any, at: str) -> str | None:
        if not isinstance(v, dict):
            return f"{at} is not an object"
        return next((p for k, x in v.items() if (p := value(x, _field(at, k)))), None)

    return check


def record(required: dict[str, Shape], optional: dict[str, Shape] | None = None) -> Shape:
    """An object with every `required` key and, where present, valid `optional` ones (other keys are ignored)."""

    def check(v: Any, at: str) -> str | None:
        if not isinstance(v, dict):
            return f"{at} is not an object"
        for key, shape in required.items():
            if key not in v:
                return f"{_field(at, key)} is missing"
            if problem := shape(v[key], _field(at, key)):
                return problem
        for key, shape in (optional or {}).items():
            if key in v and (problem := shape(v[key], _field(at, key))):
                return problem
        return None

    return check

"""Registry of search spaces: `@register_space` on a `SearchSpace` subclass makes it buildable by name."""

from __future__ import annotations

from typing import Any

from regnas.errors import RegnasError
from regnas.spaces.base import Arch, SearchSpace

_SPACES: dict[str, type[SearchSpace]] = {}

SMALL_INPUT_SPACE, LARGE_INPUT_SPACE = "mbv3", "resnet"
LARGE_INPUT_PX = 16
"""Inputs with a side of this many pixels or more default to `LARGE_INPUT_SPACE`."""


def default_space(input_shape: tuple[int, ...]) -> str:
    """The space a build, a training run or a LUT profile uses when none is named, by the input's smaller side:
    `mbv3` under 16 px, `resnet` from 16 px, the same on every host so a seed means one family everywhere.

    Measured on 2 CPU cores (README, benchmarks/): on 8 px digits the default build is about as fast either
    way (mbv3 about 140 s, resnet 108 s) and mbv3's members are more accurate (99.3% against 98.1% for the
    largest), and the built-in LUTs are mbv3's at 8x8; on 28 px Fashion-MNIST mbv3's 7x7 depthwise
    convolutions make a training step 1.5x dearer, so the budgeted build trains 3 epochs instead of 8 and
    reaches 90.1% in 71 minutes where resnet reaches 92.4% in 45.
    """
    return LARGE_INPUT_SPACE if min(input_shape[1:]) >= LARGE_INPUT_PX else SMALL_INPUT_SPACE


def register_space(cls: type[SearchSpace]) -> type[SearchSpace]:
    """Class decorator: register a space under `cls.name`."""
    _SPACES[cls.name] = cls
    return cls


def space_names() -> list[str]:
    return sorted(_SPACES)


def space_class(name: str) -> type[SearchSpace]:
    """The space class registered as `name`."""
    if name not in _SPACES:
        raise RegnasError(f"unknown search space {name!r}; use one of {', '.join(space_names())}")
    return _SPACES[name]


def create_space(name: str, config: dict[str, Any]) -> SearchSpace:
    """Build the space `name` from its config."""
    return space_class(name)(config)


from regnas.spaces import mbv3, resnet, vit  # noqa: E402,F401  (registers the built-in spaces)

__all__ = ["Arch", "SearchSpace", "create_space", "default_space", "register_space", "space_class", "space_names"]

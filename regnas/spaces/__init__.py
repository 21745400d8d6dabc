"""Registry of search spaces: `@register_space` on a `SearchSpace` subclass makes it buildable by name."""

from __future__ import annotations

from typing import Any

from regnas.errors import RegnasError
from regnas.spaces.base import Arch, SearchSpace

_SPACES: dict[str, type[SearchSpace]] = {}

DEFAULT_SPACE = "mbv3"
"""The space a build or training run uses when none is named.

On 2 CPU cores `resnet` trains Fashion-MNIST-sized data faster and better (README, benchmarks/supernet_quality.py).
"""


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

__all__ = ["DEFAULT_SPACE", "Arch", "SearchSpace", "create_space", "register_space", "space_class", "space_names"]

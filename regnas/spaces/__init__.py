"""Registry of search spaces: `@register_space` on a `SearchSpace` subclass makes it buildable by name."""

from __future__ import annotations

from typing import Any

from regnas.errors import RegnasError
from regnas.spaces.base import Arch, SearchSpace

_SPACES: dict[str, type[SearchSpace]] = {}

LARGE_INPUT_PX = 16
"""Inputs whose smaller side has this many pixels or more default to `resnet`, smaller ones to `mbv3`."""


def default_space(input_shape: tuple[int, ...]) -> str:
    """The space a build, a training run or a LUT profile uses when none is named, by the input's smaller side,
    the same on every host so a seed means one family everywhere.

    Measured on 2 CPU cores (docs/notes/supernet-quality.md): on 8 px digits mbv3's members are the more accurate and the
    built-in LUTs are mbv3's; on 28 px Fashion-MNIST mbv3's 7x7 depthwise convolutions make training so much
    dearer that the budgeted build affords 3 epochs to resnet's 7-8, and resnet's members are 2 points better.
    """
    return "resnet" if min(input_shape[1:]) >= LARGE_INPUT_PX else "mbv3"


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


MAX_PARAMS = 200_000_000
"""The most parameters a supernet built from a config may have (800 MB of fp32 weights): configs come from files."""
MAX_INPUT = (4, 4096, 4096)
"""The largest input (channels, height, width) a config may declare."""


def create_space(name: str, config: dict[str, Any]) -> SearchSpace:
    """Build the space `name` from its config (read from a file, so bounded before anything is allocated: its input
    size, and its supernet's parameter count on the meta device)."""
    import torch

    cls = space_class(name)
    try:
        shape = [int(v) for v in config["input_shape"]]
        classes = int(config["num_classes"])
        if len(shape) != 3 or not all(1 <= v <= m for v, m in zip(shape, MAX_INPUT)) or not 1 <= classes <= 1_000_000:
            raise ValueError(f"input {shape} and {classes} classes are outside what regnas builds")
        space = cls(config)
        with torch.device("meta"):
            params = sum(p.numel() for p in space.build_supernet().parameters())
    except RegnasError:
        raise
    except Exception as exc:  # a config from a file may be wrong in any way
        raise RegnasError(f"not a usable {name} space config ({type(exc).__name__}: {exc}); rebuild with this regnas") from exc
    if params > MAX_PARAMS:
        raise RegnasError(f"the {name} space config declares a {params:,}-parameter supernet, more than {MAX_PARAMS:,}; rebuild it")
    return space


def space_for(input_shape: tuple[int, ...], num_classes: int, name: str | None = None) -> SearchSpace:
    """The space `name` (else the default for these inputs), in its default config for this input shape and class count."""
    name = name or default_space(input_shape)
    return create_space(name, space_class(name).default_config(input_shape, num_classes))


from regnas.spaces import mbv3, resnet, vit  # noqa: E402,F401  (registers the built-in spaces)

__all__ = ["Arch", "SearchSpace", "create_space", "default_space", "register_space", "space_class", "space_for", "space_names"]

"""Registry of runtimes: an artifact file in, class scores out.

A runtime is a `Runtime` subclass registered with `@register_runtime`; `runtime_for(path)` picks
one by file suffix. A runtime whose library is missing raises RegnasError naming what to install.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from regnas.errors import RegnasError

_RUNTIMES: dict[str, type[Runtime]] = {}


class Runtime(ABC):
    """A loaded model that maps N×C×H×W float32 images to N×classes scores."""

    name: str
    suffixes: tuple[str, ...]

    @abstractmethod
    def __init__(self, path: Path, threads: int = 1):
        """Load the artifact at `path`; RegnasError when it is unreadable or not a classifier."""

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int | None, ...]:
        """(C, H, W) the model expects; None where a dimension is dynamic."""

    @abstractmethod
    def scores(self, x: np.ndarray) -> np.ndarray:
        """Class scores, shaped N×classes."""


def register_runtime(cls: type[Runtime]) -> type[Runtime]:
    """Class decorator: register `cls` under `cls.name`."""
    _RUNTIMES[cls.name] = cls
    return cls


def runtime_for(path: str | Path, threads: int = 1) -> Runtime:
    """Load `path` with the runtime that handles its suffix."""
    path = Path(path)
    for cls in _RUNTIMES.values():
        if path.suffix in cls.suffixes:
            return cls(path, threads)
    known = sorted(s for c in _RUNTIMES.values() for s in c.suffixes)
    raise RegnasError(f"no runtime reads {path.suffix or 'files without a suffix'} ({path}); give one of {', '.join(known)}")


from regnas.runtimes import onnxruntime  # noqa: E402,F401  (registers the built-in runtimes)

"""The one error family regnas raises for bad input or environment; the CLI maps it to exit 2."""

from __future__ import annotations

import importlib
from types import ModuleType


class RegnasError(Exception):
    """A problem the user can fix: the message names the problem and the fix, on one line."""


class Unavailable(RegnasError):
    """A runtime or tool that cannot run on this machine (no GPU, not macOS); reported as `skipped`."""


class LoweringFailed(RegnasError):
    """A backend could not compile a model in one configuration (ExecuTorch's XNNPACK partitioner, for one, finds
    dependency cycles in some mixes of int8 and float units); flip-aware quantization skips that configuration."""


def require(module: str, extra: str) -> ModuleType:
    """Import an optional backend, or fail naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RegnasError(f"{module.split('.')[0]} is not installed; pip install 'regnas[{extra}]'") from exc

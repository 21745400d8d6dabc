"""regnas: hardware-aware model families that agree with each other.

The Python API (`regnas.build`, `regnas.check`, `regnas.gate`, `regnas.options`, and the records they return)
is imported on first use, so `import regnas` stays light.
"""

from typing import Any

__version__ = "0.1.0"

_API = {"build", "check", "gate", "options"}
_RECORDS = {
    "BuildOptions": "regnas.workflow.build",
    "BuildReport": "regnas.builddir",
    "MemberRecord": "regnas.builddir",
    "ArtifactRecord": "regnas.builddir",
    "Verdict": "regnas.builddir",
    "GateResult": "regnas.workflow.gate",
    "RegnasError": "regnas.errors",
}
__all__ = sorted(_API | set(_RECORDS))


def __getattr__(name: str) -> Any:
    import importlib

    if name in _API:
        return getattr(importlib.import_module("regnas.api"), name)
    if name in _RECORDS:
        return getattr(importlib.import_module(_RECORDS[name]), name)
    raise AttributeError(f"module 'regnas' has no attribute {name!r}")

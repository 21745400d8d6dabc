"""Registry of runtimes: an artifact file in, outputs (and latencies) out.

A runtime is a `Runtime` subclass registered with `@register_runtime`; `runtime_for(path)` picks
one by file suffix, `load_runtime(name, path)` by name. A runtime whose library is missing raises
RegnasError naming the pip extra; one that cannot run on this machine at all (Core ML off macOS,
TensorRT without a GPU) raises `Unavailable`, which callers report as `skipped: <reason>`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from regnas.data import to_float
from regnas.errors import RegnasError

_RUNTIMES: dict[str, type[Runtime]] = {}


@dataclass(frozen=True)
class Remote:
    """A TVM RPC device: a server at `host:port`, or a tracker at `host:port` handing out `key`."""

    host: str
    port: int
    key: str | None = None

    @classmethod
    def parse(cls, address: str, key: str | None = None) -> Remote:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise RegnasError(f"RPC address {address!r} is not host:port; pass e.g. --rpc 192.168.1.20:9090")
        return cls(host, int(port), key)

    @classmethod
    def from_options(cls, address: str | None, key: str | None) -> Remote | None:
        """The device `--rpc` and `--rpc-key` name (None without --rpc; a key alone is refused)."""
        if key is not None and address is None:
            raise RegnasError("--rpc-key needs --rpc HOST:PORT of the tracker")
        return cls.parse(address, key) if address else None

    def __str__(self) -> str:
        return f"{self.host}:{self.port}" + (f" (key {self.key})" if self.key else "")


class Runtime(ABC):
    """A loaded model that maps N×C×H×W float32 inputs to an output array."""

    name: str
    suffixes: tuple[str, ...]
    by_suffix: bool = True
    """Whether `runtime_for` picks it for its suffixes (False where another runtime is the usual reader of those files)."""
    max_batch: int = 256
    exporter: str
    """The exporter whose artifacts this runtime runs (what `regnas profile` exports units with)."""
    package: str
    """The pip distribution that provides the runtime, for provenance."""
    rpc_native: bool = False
    """Whether it reaches an RPC device itself (TVM); other runtimes' files are run there by regnas's device server."""
    per_arch: bool = False
    """Whether its artifacts are compiled for one CPU architecture (a device runs its own build of the graph, not this one)."""
    emulated: str | None = None
    """What emulates the device this artifact runs on (its timings are not the device's); None on real hardware."""

    @classmethod
    def package_version(cls) -> str:
        """The installed version of the runtime's package, or `not installed`."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"{cls.package} {version(cls.package)}"
        except PackageNotFoundError:
            return "not installed"

    @classmethod
    def device_emulation(cls, remote: Remote) -> str | None:
        """What emulates the device at `remote` (asked before anything is built for it), or None for real hardware."""
        from regnas.runtimes.tvm import connect, emulation

        return emulation(connect(remote))

    @abstractmethod
    def __init__(self, path: Path, threads: int = 1, remote: Remote | None = None):
        """Load the artifact at `path`; RegnasError when it is unreadable, Unavailable when it cannot run here."""

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int | None, ...]:
        """(C, H, W) the model expects; None where a dimension is dynamic."""

    @abstractmethod
    def run(self, x: np.ndarray) -> np.ndarray:
        """The model's (first) output for a batch."""

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Class scores, shaped N×classes; RegnasError when the model is not a classifier."""
        out = self.run(np.ascontiguousarray(x, dtype=np.float32))
        if out.ndim != 2 or out.shape[0] != len(x):
            raise RegnasError(f"{self.path} is not a classifier: its output is shaped {list(out.shape)}, not [N, classes]")
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Top-1 class per sample of stored images (uint8, or floats in [0, 1]), in batches of at most `max_batch`."""
        b = self.max_batch
        return np.concatenate([self.scores(to_float(x[i : i + b])).argmax(1) for i in range(0, len(x), b)])

    def time_ms(self, x: np.ndarray, warmup: int = 10, repeats: int = 50) -> np.ndarray:
        """Wall-clock latency of `run(x)` in milliseconds, once per repeat, after `warmup` runs."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        for _ in range(warmup):
            self.run(x)
        out = np.empty(repeats)
        for i in range(repeats):
            t = time.perf_counter()
            self.run(x)
            out[i] = (time.perf_counter() - t) * 1e3
        return out

    def close(self) -> None:
        """Release what it holds on a device (an RPC server serves one session at a time); nothing for local runtimes."""
        return None

    def version(self) -> str:
        """The runtime library's version, for provenance."""
        return "unknown"

    @classmethod
    def companions(cls, path: Path) -> list[Path]:
        """Files beside the artifact that decide how it runs (hashed with it, so editing them is caught)."""
        return []

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this runtime cannot run anything on this machine (not macOS, no GPU), or None when it can."""
        return None

    @classmethod
    def runs_here(cls, path: Path) -> bool:
        """Whether `path` can be run on this machine, so its predictions can be checked here."""
        return cls.unavailable_reason() is None and not cls.needs_device(path)

    @classmethod
    def needs_device(cls, path: Path) -> bool:
        """Whether the artifact runs only on another device (over RPC), not on this host."""
        return False


def register_runtime(cls: type[Runtime]) -> type[Runtime]:
    """Class decorator: register `cls` under `cls.name`."""
    _RUNTIMES[cls.name] = cls
    return cls


def runtime_names() -> list[str]:
    return sorted(_RUNTIMES)


def runtime_class(name: str) -> type[Runtime]:
    """The runtime registered as `name`."""
    if name not in _RUNTIMES:
        raise RegnasError(f"unknown runtime {name!r}; use one of {', '.join(runtime_names())}")
    return _RUNTIMES[name]


def _load(cls: type[Runtime], path: Path, threads: int, remote: Remote | None) -> Runtime:
    if remote is None or cls.rpc_native:
        return cls(path, threads, remote)
    from regnas.runtimes.device import DeviceRuntime

    return DeviceRuntime(path, threads, remote, cls.name)


def load_runtime(name: str, path: str | Path, threads: int = 1, remote: Remote | None = None) -> Runtime:
    """Load `path` with the runtime called `name`, here or on the RPC device `remote`."""
    return _load(runtime_class(name), Path(path), threads, remote)


def runtime_for(path: str | Path, threads: int = 1, remote: Remote | None = None) -> Runtime:
    """Load `path` with the runtime that handles its suffix, here or on the RPC device `remote`."""
    path = Path(path)
    for cls in _RUNTIMES.values():
        if cls.by_suffix and path.name.endswith(cls.suffixes):
            return _load(cls, path, threads, remote)
    known = sorted(s for c in _RUNTIMES.values() for s in c.suffixes)
    raise RegnasError(f"no runtime reads {path.suffix or 'files without a suffix'} ({path}); give one of {', '.join(known)}")


def local_only(runtime: str, remote: Remote | None) -> None:
    """Refuse an RPC device in a runtime's own constructor: `load_runtime` sends such runtimes' files to the device's server."""
    if remote is not None:
        raise RegnasError(f"the {runtime} runtime reaches a device through load_runtime(..., remote=...)")


from regnas.runtimes import coreml, executorch, onnxruntime, openvino, tensorrt, tvm  # noqa: E402,F401  (registers the built-in runtimes)

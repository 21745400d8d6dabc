"""Artifacts of other runtimes (ONNX Runtime, ExecuTorch) run on an RPC device by regnas's device server.

TVM libraries run on a device through TVM's own RPC; other runtimes' files are uploaded to the same
kind of session and run by that runtime installed on the device (`regnas.device.server`, which
`regnas device emulate` starts, serves them). Their predictions there are the device's: its kernels
(ARM's NEON and dot-product paths in MLAS and XNNPACK), not this host's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from regnas.errors import RegnasError, Unavailable, require
from regnas.runtimes import Remote, Runtime
from regnas.runtimes.tvm import connect, emulation


def offered(session) -> list[str]:
    """The runtimes the device's server runs (empty for a server that is not regnas's)."""
    try:
        return [r for r in str(session.get_function("regnas.runtimes")()).split(",") if r]
    except Exception:  # TVM's own rpc_server has no such function
        return []


class DeviceRuntime(Runtime):
    """An artifact uploaded to the RPC device and run there by `runtime` (not registered: `load_runtime` with a remote
    returns one for every runtime that does not reach devices itself)."""

    name = "device"
    suffixes = ()
    by_suffix = False
    exporter = ""
    package = "apache-tvm"

    def __init__(self, path: Path, threads: int = 1, remote: Remote | None = None, runtime: str = "onnxruntime"):
        if remote is None:
            raise RegnasError("running an artifact on a device needs --rpc HOST:PORT")
        if not path.is_file():
            raise RegnasError(f"artifact not found: {path}; check the path")
        self.path, self.remote, self.runtime, self.threads = path, remote, runtime, threads
        self._tvm = require("tvm", "tvm")
        session = connect(remote)
        have = offered(session)
        if runtime not in have:
            why = f"it has {', '.join(have)}" if have else "its RPC server is not regnas's: run python -m regnas.device.server HOST PORT"
            raise Unavailable(f"the device at {remote} runs no {runtime} ({why})")
        self.emulated = emulation(session)
        self._name = f"{runtime}-{path.parent.name}-{path.name}"
        session.upload(str(path), target=self._name)
        self._predict, self._time, self.dev = session.get_function("regnas.predict"), session.get_function("regnas.time_ms"), session.cpu()
        self._session = session

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return (None, None, None)

    def run(self, x: np.ndarray) -> np.ndarray:
        batch = self._tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32), self.dev)
        try:
            return self._predict(self.runtime, self._name, batch, self.threads).numpy()
        except Exception as exc:  # the device's runtime failed; its message comes back through RPC
            why = str(exc).strip().splitlines()[-1][:200]
            raise RegnasError(f"{self.path.name} failed on the device at {self.remote} ({why})") from exc

    def time_ms(self, x: np.ndarray, warmup: int = 10, repeats: int = 50) -> np.ndarray:
        """Timed on the device by its server, so RPC round trips are not counted."""
        batch = self._tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32), self.dev)
        return self._time(self.runtime, self._name, batch, self.threads, warmup, repeats).numpy()

    def close(self) -> None:
        """End the RPC session: a TVM RPC server serves one session at a time, so the next artifact waits for this one's end."""
        self._predict = self._time = self.dev = self._session = None

    def version(self) -> str:
        where = f"{self.runtime} on the device at {self.remote}"
        return where + (f" (emulated: {self.emulated})" if self.emulated else "")

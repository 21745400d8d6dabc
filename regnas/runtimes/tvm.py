"""Apache TVM: relax libraries (`.so`) compiled by the tvm exporter, run here or on a device over RPC.

A library built for this host runs locally; one cross-compiled for another CPU (aarch64) runs on
that device through a TVM RPC server (`python -m tvm.exec.rpc_server` on the device), reached
directly (`--rpc host:port`) or through a tracker (`--rpc host:port --rpc-key KEY`).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np

from regnas.errors import RegnasError, Unavailable, require
from regnas.runtimes import Remote, Runtime, register_runtime

SESSION_TIMEOUT_S = 600


def connect(remote: Remote):
    """An RPC session to `remote`; RegnasError when nothing answers there."""
    rpc = require("tvm.rpc", "tvm")
    try:
        if remote.key:
            return rpc.connect_tracker(remote.host, remote.port).request(remote.key, session_timeout=SESSION_TIMEOUT_S)
        return rpc.connect(remote.host, remote.port, session_timeout=SESSION_TIMEOUT_S)
    except Exception as exc:  # TVM raises InternalError/RuntimeError/TimeoutError for a dead address
        raise RegnasError(
            f"cannot reach the TVM RPC {'tracker' if remote.key else 'server'} at {remote} ({str(exc).splitlines()[-1][:120]}); "
            "start `python -m tvm.exec.rpc_server` there or fix --rpc"
        ) from exc


def remote_arch(session) -> str | None:
    """The device's CPU architecture from its LLVM triple (`aarch64`, `x86_64`); None when its TVM has no LLVM to ask."""
    try:
        return str(session.get_function("target.llvm_get_system_triple")()).split("-")[0]
    except Exception:  # a runtime-only TVM build on a board has no such function
        return None


def emulation(session) -> str | None:
    """What emulates the device (`regnas device emulate` says so), or None for real hardware."""
    try:
        return str(session.get_function("regnas.emulated")())
    except Exception:  # any other RPC server has no such function
        return None


def check_shared_object(path: Path) -> None:
    """Refuse a truncated or non-ELF library before the loader maps it (a truncated one kills the process with SIGBUS)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(64)
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:
        raise RegnasError(f"{path} is not a 64-bit ELF shared library; re-export the TVM library")
    order = "little" if head[5] == 1 else "big"

    def field(offset: int, width: int) -> int:
        return int.from_bytes(head[offset : offset + width], order)

    sections_end = field(0x28, 8) + field(0x3A, 2) * field(0x3C, 2)
    segments_end = field(0x20, 8) + field(0x36, 2) * field(0x38, 2)
    if max(sections_end, segments_end) > size:
        raise RegnasError(
            f"{path} is truncated ({size} bytes, its headers need {max(sections_end, segments_end)}); re-export the TVM library"
        )


def sidecar(path: Path) -> Path:
    """Where the tvm exporter writes a library's input shape and compile target."""
    return path.with_name(path.name + ".json")


def library_meta(path: Path) -> dict:
    """The sidecar the tvm exporter writes beside a library: input shape and compile target."""
    side = sidecar(path)
    try:
        return json.loads(side.read_text()) if side.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegnasError(f"{side} is not valid JSON ({exc}); re-export the TVM library") from exc


@register_runtime
class TvmRuntime(Runtime):
    """A relax VM library whose `main` takes one N×C×H×W float tensor."""

    name = "tvm"
    suffixes = (".so",)
    exporter = "tvm"
    package = "apache-tvm"
    rpc_native = True
    per_arch = True

    def __init__(self, path: Path, threads: int = 1, remote: Remote | None = None):
        tvm = require("tvm", "tvm")
        from tvm import relax

        if not path.is_file():
            raise RegnasError(f"TVM library not found: {path}; check the path")
        check_shared_object(path)
        self.path, self.remote, self._tvm = path, remote, tvm
        self.meta = library_meta(path)
        self.emulated: str | None = None
        host = self.meta.get("host", True)
        if remote is None and not host:
            raise Unavailable(f"{path.name} is built for {self.meta.get('target')}; run it on that device with --rpc host:port")
        try:
            if remote is None:
                tvm.get_global_func("runtime.config_threadpool")(0, threads)
                lib, self.dev = tvm.runtime.load_module(str(path)), tvm.cpu()
            else:
                self.session = connect(remote)
                self._check_device(remote)
                self.session.get_function("runtime.config_threadpool")(0, threads)
                self.session.upload(str(path))
                lib, self.dev = self.session.load_module(path.name), self.session.cpu()
            self.vm = relax.VirtualMachine(lib, self.dev)
        except RegnasError:
            raise
        except Exception as exc:  # TVM raises its own error types for a wrong or corrupt library
            raise RegnasError(f"{path} is not a loadable TVM library ({str(exc).splitlines()[-1][:160]}); re-export it") from exc
        self._shape = tuple(self.meta.get("input_shape", (None, None, None)))

    def _check_device(self, remote: Remote) -> None:
        """Refuse a device of another architecture than the library's, before uploading it."""
        target = self.meta.get("target")
        want = str(target.get("mtriple", "")).split("-")[0] if isinstance(target, dict) else platform.machine()
        have = remote_arch(self.session)
        if want and have and want != have:
            raise RegnasError(
                f"the RPC server at {remote} is an {have} machine, not {want}; start it on the {want} device (or regnas device emulate)"
            )
        self.emulated = emulation(self.session)

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return self._shape

    @classmethod
    def companions(cls, path: Path) -> list[Path]:
        return [sidecar(path)]

    @classmethod
    def needs_device(cls, path: Path) -> bool:
        return not library_meta(path).get("host", True)

    def run(self, x: np.ndarray) -> np.ndarray:
        arr = self._tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32), self.dev)
        return self.vm["main"](arr).numpy()

    def time_ms(self, x: np.ndarray, warmup: int = 10, repeats: int = 50) -> np.ndarray:
        """Timed on the device by TVM's time evaluator, so RPC round trips are not counted."""
        arr = self._tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32), self.dev)
        self.vm.time_evaluator("main", self.dev, number=warmup, repeat=1)(arr)
        return np.asarray(self.vm.time_evaluator("main", self.dev, number=1, repeat=repeats)(arr).results) * 1e3

    def close(self) -> None:
        self.vm = self.dev = self.session = None

    def version(self) -> str:
        where = f" over RPC {self.remote}" if self.remote else ""
        return f"apache-tvm {self._tvm.__version__}{where}" + (f" (emulated: {self.emulated})" if self.emulated else "")

"""Apache TVM: relax libraries compiled from the fp32 ONNX graph, for this host and for aarch64.

The host build (`llvm`) runs here for the flip check. The aarch64 build (NEON, cross-compiled
with Debian's `gcc-aarch64-linux-gnu`) is what an edge box ships; it runs there over TVM RPC.
Each library has a JSON sidecar with its input shape and compile target.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path
from typing import Any

from regnas.errors import RegnasError, require
from regnas.exporters import Exported, Exporter, ExportJob, register_exporter
from regnas.io import atomic_path, sha256_file, write_json
from regnas.quiet import quiet
from regnas.runtimes.tvm import sidecar

AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
CROSS_CC = "aarch64-linux-gnu-gcc"


def compile_library(onnx_path: Path, input_shape: tuple[int, ...], path: Path, target: dict[str, Any] | str = "llvm") -> Path:
    """Compile an ONNX model to a relax library at `path` (+ sidecar), for `target` (a TVM target dict or "llvm")."""
    tvm = require("tvm", "tvm")
    onnx = require("onnx", "onnx")
    import tvm.relax.frontend.onnx as relax_onnx
    from tvm.support import cc

    host = target == "llvm" or target.get("mtriple", "").split("-")[0] == platform.machine()
    if not host and shutil.which(CROSS_CC) is None:
        raise RegnasError(f"{CROSS_CC} not found; install it (apt install gcc-aarch64-linux-gnu) to cross-compile for {target}")
    try:
        with quiet():
            mod = relax_onnx.from_onnx(onnx.load(str(onnx_path)))
            executable = tvm.compile(mod, target=tvm.target.Target(target))
    except Exception as exc:  # TVM raises its own error types for unsupported operators
        raise RegnasError(f"TVM could not compile {onnx_path.name} ({str(exc).splitlines()[-1][:160]}); report it with the arch") from exc
    with atomic_path(path) as tmp:
        so = Path(tmp).with_suffix(".so")
        executable.export_library(str(so), **({} if host else {"fcompile": cc.cross_compiler(CROSS_CC)}))
        so.replace(tmp)
    write_json(sidecar(path), {"input_shape": list(input_shape), "target": target, "host": host})
    return path


@register_exporter
class TvmExporter(Exporter):
    """`tvm-fp32-<host arch>.so` (runs here) and `tvm-fp32-aarch64.so` (runs on the device over RPC)."""

    name = "tvm"
    precisions = ("fp32",)
    extra = "tvm"

    def check_available(self) -> None:
        require("tvm", self.extra)
        require("onnx", "onnx")

    def build_for_timing(self, job: ExportJob, runtime: str, precision: str, device: str | None = None) -> Path:
        """One library for the device being timed (this machine's LLVM without `device`), not every architecture."""
        self.check_available()
        return compile_library(job.onnx(), job.input_shape, job.directory / "unit.so", device or "llvm")

    def export(self, job: ExportJob, precision: str, options: dict[str, Any] | None = None) -> list[Exported]:
        self.check_available()
        from importlib.metadata import version

        out = []
        # TVM's LLVM code generator lays functions out in a different order on every run, so two
        # compiles of one graph are not byte-identical; what decides the library's behaviour is
        # recorded instead: the graph it was compiled from, the compiler and the target.
        origin = {"compiled_from_sha256": sha256_file(job.onnx()), "tvm": version("apache-tvm"), "byte_identical_rebuilds": False}
        builds = {platform.machine(): "llvm"}
        builds.setdefault("aarch64", AARCH64)
        for arch, target in builds.items():
            path = job.directory / f"tvm-{precision}-{arch}.so"
            try:
                compile_library(job.onnx(), job.input_shape, path, target)
            except RegnasError as exc:
                if target == "llvm":
                    raise
                out.append(Exported(self.name, precision, path, "tvm", status=f"skipped: {exc}", options={"target": target}))
                continue
            out.append(Exported(self.name, precision, path, "tvm", options={"target": target, **origin}))
        return out

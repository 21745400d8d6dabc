"""Registry of exporters: a plain fp32 network in, deployable artifacts out.

An exporter is an `Exporter` subclass registered with `@register_exporter`. It declares the
precisions it writes and, for quantized ones, a grid of options that flip-aware quantization may
search (the first entry is the default). `export` writes every file atomically and returns one
`Exported` per artifact; an artifact this machine cannot build (a TensorRT engine without a GPU)
is returned with `status = "skipped: <reason>"` and, where one exists, the command that builds it.
"""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from regnas.errors import RegnasError

_EXPORTERS: dict[str, type[Exporter]] = {}
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class ExportJob:
    """One network to export: the fp32 model, its input shape, calibration images, where to write.

    `scratch` is a private temporary directory; formats built from the fp32 ONNX graph share one
    export of it through `onnx()`.
    """

    model: nn.Module
    input_shape: tuple[int, int, int]
    calib: np.ndarray
    """Calibration images as stored (uint8, or floats in [0, 1]); `regnas.data.to_float` makes inputs of them."""
    directory: Path
    scratch: Path
    traced: dict[str, Any] = field(default_factory=dict)
    """Graphs an exporter traced from `model`, kept for the next trial of flip-aware quantization (tracing costs seconds)."""
    rankings: dict[tuple[tuple[str, str], ...], list[dict[str, Any]]] = field(default_factory=dict)
    """Units' flip sensitivity in `model`, by their (unit, module) pairs: ranked once for every format that asks."""

    def onnx(self) -> Path:
        """The fp32 ONNX graph of the model (exported once per job)."""
        from regnas.exporters.onnx import export_onnx

        path = self.scratch / "model-fp32.onnx"
        return path if path.is_file() else export_onnx(self.model, self.input_shape, path)


@dataclass
class Exported:
    """One artifact as written (or skipped) by an exporter."""

    format: str
    precision: str
    path: Path
    runtime: str
    status: str = "ok"
    command: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


class Exporter(ABC):
    """Writes one format. `extra` names the pip extra that installs its toolchain."""

    name: str
    precisions: tuple[str, ...]
    extra: str

    @abstractmethod
    def check_available(self) -> None:
        """Raise RegnasError naming the pip extra when the toolchain is missing."""

    @abstractmethod
    def export(self, job: ExportJob, precision: str, options: dict[str, Any] | None = None) -> list[Exported]:
        """Write the artifacts for `precision` into `job.directory`."""

    def build_for_timing(self, job: ExportJob, runtime: str, precision: str, device: str | None = None) -> Path:
        """The file `runtime` loads to time `job.model` at `precision` (LUT profiling).

        `device` is a remote device's compile target, for formats compiled per device (TVM).
        """
        if precision not in self.precisions:
            raise RegnasError(f"the {runtime} runtime has no {precision} build; use {self.precisions}")
        from regnas.runtimes import runtime_class

        suffixes = runtime_class(runtime).suffixes  # a runtime that is not its suffix's usual reader runs that reader's file
        runs = [e for e in self.export(job, precision) if e.status == "ok" and (e.runtime == runtime or e.path.name.endswith(suffixes))]
        if not runs:
            raise RegnasError(f"cannot build a {runtime} {precision} model on this machine")
        return Path(runs[0].path)

    def option_grid(self, precision: str) -> list[dict[str, Any]]:
        """Quantization options flip-aware quantization may try, default first, then the likeliest to hold (the first that
        holds is kept); [{}] when there is nothing to choose."""
        return [{}]

    def float_candidates(self, job: ExportJob, precision: str) -> list[str]:
        """Units (graph nodes, modules) `precision` can keep in float, for per-node fallback; [] when it cannot.

        An exporter that lists them accepts `keep_float` (these units stay float) and `quantize_only`
        (only these units are quantized) among its options.
        """
        return []

    def unit_modules(self, job: ExportJob, units: list[str]) -> dict[str, str]:
        """The module of `job.model` each of `units` quantizes, by name, where the exporter knows it: ranking units
        then simulates their int8 in PyTorch (`regnas.quantsim`) instead of exporting an artifact per unit."""
        return {}


def register_exporter(cls: type[Exporter]) -> type[Exporter]:
    """Class decorator: register `cls` under `cls.name`."""
    _EXPORTERS[cls.name] = cls
    return cls


def exporter_names() -> list[str]:
    return sorted(_EXPORTERS)


def create_exporter(name: str) -> Exporter:
    """The exporter registered as `name`."""
    if name not in _EXPORTERS:
        raise RegnasError(f"unknown exporter {name!r}; use one of {', '.join(exporter_names())}")
    return _EXPORTERS[name]()


def replace_dir(tmp: Path, path: Path) -> None:
    """Move a finished directory artifact (a Core ML package) onto `path`."""
    if path.is_symlink() or path.is_file():  # a link is replaced, never followed
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


from regnas.exporters import coreml, executorch, onnx, tensorrt, tvm  # noqa: E402,F401  (registers the built-in exporters)

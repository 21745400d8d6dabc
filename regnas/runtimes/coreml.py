"""Core ML: `.mlpackage` programs. Apple's runtime predicts on macOS only; elsewhere `skipped`."""

from __future__ import annotations

import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np

from regnas.errors import RegnasError, Unavailable, require
from regnas.quiet import quiet
from regnas.runtimes import Remote, Runtime, local_only, register_runtime


@register_runtime
class CoreMLRuntime(Runtime):
    """An mlprogram with one image tensor input named `input` and class scores out."""

    name = "coreml"
    suffixes = (".mlpackage",)
    exporter = "coreml"
    package = "coremltools"

    def __init__(self, path: Path, threads: int = 1, remote: Remote | None = None):
        local_only(self.name, remote)
        with quiet():
            ct = require("coremltools", "coreml")
        if not path.is_dir():
            raise RegnasError(f"Core ML package not found: {path}; check the path")
        # coremltools rewrites a package's Manifest.json when it opens one: read a copy, so the artifact keeps its hash
        self._copy = tempfile.TemporaryDirectory()
        package = Path(shutil.copytree(path, Path(self._copy.name) / path.name))
        try:
            spec = ct.utils.load_spec(str(package))
        except Exception as exc:  # coremltools raises several types for a corrupt package
            raise RegnasError(f"{path} is not a readable Core ML package ({str(exc).splitlines()[0]}); re-export it") from exc
        self.path = path
        self._input, self._output = spec.description.input[0].name, spec.description.output[0].name
        shape = [r.lowerBound for r in spec.description.input[0].type.multiArrayType.shapeRange.sizeRanges]
        self._shape = tuple(shape[1:]) if len(shape) == 4 else (None, None, None)
        if (reason := self.unavailable_reason()) is not None:
            raise Unavailable(reason)
        self.model = ct.models.MLModel(str(package))

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None if platform.system() == "Darwin" else "Core ML predicts on macOS only"

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return self._shape

    def run(self, x: np.ndarray) -> np.ndarray:
        out = self.model.predict({self._input: np.ascontiguousarray(x, dtype=np.float32)})
        return np.asarray(out[self._output])

    def version(self) -> str:
        import coremltools

        return f"coremltools {coremltools.__version__}"

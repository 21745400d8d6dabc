"""ONNX Runtime on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from regnas.errors import RegnasError, require
from regnas.runtimes import Remote, Runtime, local_only, register_runtime


@register_runtime
class OnnxRuntime(Runtime):
    """Any single-input model in ONNX (fp32, fp16 with float I/O, or QDQ int8), on the CPU provider."""

    name = "onnxruntime"
    suffixes = (".onnx",)
    exporter = "onnx"
    package = "onnxruntime"

    def __init__(self, path: Path, threads: int = 1, remote: Remote | None = None):
        local_only(self.name, remote)
        ort = require("onnxruntime", "onnx")
        if not path.is_file():
            raise RegnasError(f"ONNX model not found: {path}; check the path")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad models
            raise RegnasError(f"{path} is not a loadable ONNX model ({str(exc).splitlines()[0]}); re-export it") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            shapes = [i.shape for i in inputs]
            raise RegnasError(f"{path} is not an image model: it needs one N×C×H×W input, has {shapes}")
        self.path = path
        self._input = inputs[0].name
        self._shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape[1:])

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return self._shape

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def version(self) -> str:
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"

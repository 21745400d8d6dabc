"""ONNX Runtime on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from regnas.errors import RegnasError
from regnas.runtimes import Runtime, register_runtime


@register_runtime
class OnnxRuntime(Runtime):
    """Any single-input image classifier in ONNX, run by ONNX Runtime's CPU provider."""

    name = "onnxruntime"
    suffixes = (".onnx",)

    def __init__(self, path: Path, threads: int = 1):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RegnasError("onnxruntime is not installed; pip install 'regnas[onnx]'") from exc
        if not path.is_file():
            raise RegnasError(f"ONNX model not found: {path}; check the path")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad models
            raise RegnasError(f"{path} is not a loadable ONNX model ({str(exc).splitlines()[0]}); re-export it") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            shapes = [i.shape for i in inputs]
            raise RegnasError(f"{path} is not an image classifier: it needs one N×C×H×W input, has {shapes}")
        self.path = path
        self._input = inputs[0].name
        self._shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape[1:])
        out = outputs[0].shape
        if len(out) != 2:
            raise RegnasError(f"{path} is not a classifier: its output is shaped {out}, not [N, classes]")

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return self._shape

    def scores(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self._input: np.ascontiguousarray(x, dtype=np.float32)})[0]
        if out.ndim != 2 or out.shape[0] != len(x):
            raise RegnasError(f"{self.path} is not a classifier: its output is shaped {list(out.shape)}, not [N, classes]")
        return out

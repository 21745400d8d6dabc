"""OpenVINO on the CPU: the ONNX artifacts as Intel CPUs and edge boxes often run them.

Its inference precision is explicit: `f32` (OpenVINO's own default on CPUs with bf16 units is bf16,
a precision of its own that changes predictions), so an artifact's precision is the file's. It
reads the same `.onnx` files as ONNX Runtime, the usual reader of that suffix, so it is chosen by name
(`--runtime openvino`, or a target's `runtimes`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from regnas.errors import RegnasError, Unavailable
from regnas.runtimes import Remote, Runtime, local_only, register_runtime

INFERENCE_PRECISION = "f32"


@register_runtime
class OpenVinoRuntime(Runtime):
    """Any single-input ONNX model (fp32, fp16 or QDQ int8), compiled for the CPU plugin at f32 inference precision."""

    name = "openvino"
    suffixes = (".onnx",)
    by_suffix = False
    exporter = "onnx"
    package = "openvino"

    def __init__(self, path: Path, threads: int = 1, remote: Remote | None = None):
        local_only(self.name, remote)
        if not path.is_file():
            raise RegnasError(f"ONNX model not found: {path}; check the path")
        if (why := self.unavailable_reason()) is not None:
            raise Unavailable(why)
        import openvino

        config = {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION, "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
        try:
            core = openvino.Core()
            model = core.read_model(str(path))
            compiled = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "LATENCY"})
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own for unreadable models
            why = str(exc).strip().splitlines()[0][:160]
            raise RegnasError(f"{path} is not a model OpenVINO can compile ({why}); re-export it") from exc
        if len(model.inputs) != 1 or model.inputs[0].get_partial_shape().rank.get_length() != 4:
            shapes = [str(i.get_partial_shape()) for i in model.inputs]
            raise RegnasError(f"{path} is not an image model: it needs one N×C×H×W input, has {shapes}")
        self.path = path
        self._request = compiled.create_infer_request()
        self._output = compiled.outputs[0]
        dims = list(model.inputs[0].get_partial_shape())[1:]
        self._shape = tuple(d.get_length() if d.is_static else None for d in dims)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        from importlib.util import find_spec

        return None if find_spec("openvino") else "OpenVINO is not installed (pip install 'regnas[openvino]')"

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return self._shape

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})[self._output]

    def version(self) -> str:
        import openvino

        return f"openvino {openvino.__version__.split('-')[0]} (CPU, {INFERENCE_PRECISION} inference precision)"

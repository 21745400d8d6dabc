"""TensorRT engines (`.engine`), on an NVIDIA GPU. Without TensorRT or a GPU: `skipped`, with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from regnas.errors import RegnasError, Unavailable
from regnas.runtimes import Remote, Runtime, local_only, register_runtime


def tensorrt_or_reason():
    """The tensorrt module when TensorRT and a CUDA GPU are usable here; else the reason they are not."""
    try:
        import tensorrt
    except ImportError:
        return None, "no TensorRT (pip install 'regnas[tensorrt]' on a machine with an NVIDIA GPU)"
    import torch

    if not torch.cuda.is_available():
        return None, "no CUDA GPU visible to torch"
    return tensorrt, None


@register_runtime
class TensorRTRuntime(Runtime):
    """A serialized TensorRT engine with one N×C×H×W float input and one N×classes output."""

    name = "tensorrt"
    suffixes = (".engine", ".plan")
    exporter = "tensorrt"
    package = "tensorrt"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return tensorrt_or_reason()[1]

    def __init__(self, path: Path, threads: int = 1, remote: Remote | None = None):
        local_only(self.name, remote)
        trt, reason = tensorrt_or_reason()
        if trt is None:
            raise Unavailable(reason)
        import torch

        if not path.is_file():
            raise RegnasError(f"TensorRT engine not found: {path}; check the path")
        self.path, self._torch = path, torch
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RegnasError(f"{path} is not a TensorRT engine for this GPU and TensorRT version; rebuild it with trtexec")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        modes = {n: self.engine.get_tensor_mode(n) for n in names}
        self._in = next(n for n in names if modes[n] == trt.TensorIOMode.INPUT)
        self._out = next(n for n in names if modes[n] == trt.TensorIOMode.OUTPUT)
        self.context = self.engine.create_execution_context()
        self._shape = tuple(d if d > 0 else None for d in self.engine.get_tensor_shape(self._in)[1:])

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return self._shape

    def run(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        inp = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).cuda()
        self.context.set_input_shape(self._in, tuple(inp.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self._out)), dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self._in, inp.data_ptr())
        self.context.set_tensor_address(self._out, out.data_ptr())
        stream = torch.cuda.current_stream()
        self.context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return out.cpu().numpy()

    def version(self) -> str:
        import tensorrt

        return f"tensorrt {tensorrt.__version__}"

"""ExecuTorch: `.pte` programs with the XNNPACK delegate, run by the ExecuTorch runtime.

The same XNNPACK kernels run on Android phones and on x86, so predictions here are the phone's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from regnas.errors import RegnasError, require
from regnas.quiet import quiet
from regnas.runtimes import Remote, Runtime, local_only, register_runtime


@register_runtime
class ExecuTorchRuntime(Runtime):
    """A `.pte` program whose `forward` takes one N×C×H×W float tensor."""

    name = "executorch"
    suffixes = (".pte",)
    exporter = "executorch"
    package = "executorch"
    max_batch = 1

    def __init__(self, path: Path, threads: int = 1, remote: Remote | None = None):
        local_only(self.name, remote)
        if not path.is_file():
            raise RegnasError(f"ExecuTorch program not found: {path}; check the path")
        with open(path, "rb") as f:
            head = f.read(8)
        if len(head) < 8 or head[4:6] != b"ET" or not head[6:8].isdigit():  # the flatbuffer's identifier, ET12 today
            raise RegnasError(f"{path} is not an ExecuTorch program (no ET program identifier in its header); re-export it")
        import torch

        self._torch = torch
        self.path = path
        try:
            with quiet(native=True):  # its C++ runtime logs CPU probing and thread pool resets to stderr
                runtime = require("executorch.runtime", "executorch")
                from executorch.extension.pybindings import portable_lib

                if portable_lib._threadpool_get_thread_count() != threads:
                    portable_lib._unsafe_reset_threadpool(threads)
                program = runtime.Runtime.get().load_program(str(path))
                self._method = program.load_method("forward")
                shape = tuple(self._method.metadata.input_tensor_meta(0).sizes())
        except RegnasError:
            raise
        except Exception as exc:  # the runtime raises RuntimeError/ValueError for unreadable programs
            raise RegnasError(f"{path} is not a loadable ExecuTorch program ({str(exc).splitlines()[0]}); re-export it") from exc
        if len(shape) != 4:
            raise RegnasError(f"{path} is not an image model: its input is shaped {list(shape)}, not N×C×H×W")
        self._shape = tuple(shape[1:])

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return self._shape

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._method.execute([self._torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))])[0].numpy()

    def version(self) -> str:
        from importlib.metadata import version

        return f"executorch {version('executorch')} (XNNPACK)"

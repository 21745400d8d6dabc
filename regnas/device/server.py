"""The device's TVM RPC server: run by the aarch64 Python under qemu (or by any Python on a board); never imported by regnas.

Besides TVM's own functions it serves the other runtimes installed beside it (ONNX Runtime, ExecuTorch),
so `regnas check --rpc` can run their artifacts on the device: `regnas.runtimes` lists them, and
`regnas.predict(runtime, file, batch, threads)` returns a batch's scores for a file uploaded to the
session, and `regnas.time_ms` times it there. It needs only TVM, numpy and those runtimes, and serves in this process, forking one child
per session: qemu-user can fork, but cannot exec another aarch64 program without binfmt_misc, which
`python -m tvm.exec.rpc_server` needs for its worker process. `--emulated=CPU` makes it say it is emulated
(what `regnas device emulate` passes). It prints one line once it listens
(`listening HOST:PORT`) or fails (`error: ...`), which is what `regnas.device.emulator.start` waits for.
"""

import importlib.util
import logging
import platform
import sys
import time

import numpy as np
import tvm
import tvm_ffi
from tvm.rpc.server import PopenRPCServerState

RUNTIMES = ("onnxruntime", "executorch")
_loaded = {}


def _onnxruntime(path, threads):
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    session = onnxruntime.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _executorch(path, threads):
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    portable_lib._unsafe_reset_threadpool(threads)
    method = Runtime.get().load_program(path).load_method("forward")
    return lambda x: np.concatenate([method.execute([torch.from_numpy(x[i : i + 1])])[0].numpy() for i in range(len(x))])


def offered() -> str:
    """The runtimes installed here, comma-separated."""
    return ",".join(r for r in RUNTIMES if importlib.util.find_spec(r) is not None)


def _model(runtime: str, name: str, threads: int):
    """The uploaded file `name` loaded by `runtime`, once per session."""
    key = (runtime, name, threads)
    if key not in _loaded:
        if runtime not in offered().split(","):
            raise ValueError(f"this device has no {runtime} runtime (it has {offered() or 'none'})")
        path = tvm_ffi.get_global_func("tvm.rpc.server.workpath")(name)
        _loaded[key] = {"onnxruntime": _onnxruntime, "executorch": _executorch}[runtime](path, threads)
    return _loaded[key]


def predict(runtime: str, name: str, batch, threads: int):
    """Scores of `batch` from the uploaded file `name`."""
    scores = _model(runtime, name, threads)(np.ascontiguousarray(batch.numpy(), dtype=np.float32))
    return tvm.runtime.tensor(np.ascontiguousarray(scores, dtype=np.float32))


def time_ms(runtime: str, name: str, batch, threads: int, warmup: int, repeats: int):
    """Wall-clock milliseconds of each of `repeats` runs of `batch` after `warmup` runs, timed on the device (no RPC round trip)."""
    run, x = _model(runtime, name, threads), np.ascontiguousarray(batch.numpy(), dtype=np.float32)
    for _ in range(warmup):
        run(x)
    out = np.empty(repeats)
    for i in range(repeats):
        t = time.perf_counter()
        run(x)
        out[i] = (time.perf_counter() - t) * 1e3
    return tvm.runtime.tensor(out)


def main(host: str, port: int) -> int:
    cpu = next((a.removeprefix("--emulated=") for a in sys.argv[3:] if a.startswith("--emulated=")), None)
    if cpu:
        description = f"qemu-user {platform.machine()} {cpu}, Python {platform.python_version()}, apache-tvm {tvm.__version__}"
        tvm_ffi.register_global_func("regnas.emulated", lambda: description)
    tvm_ffi.register_global_func("regnas.runtimes", offered)
    tvm_ffi.register_global_func("regnas.predict", predict)
    tvm_ffi.register_global_func("regnas.time_ms", time_ms)
    logging.basicConfig(level=logging.WARNING, format="device: %(message)s")
    try:
        state = PopenRPCServerState(host, port, port + 1, silent=True)
    except (OSError, ValueError) as exc:
        print(f"error: cannot listen on {host}:{port} ({exc})", flush=True)
        return 2
    print(f"listening {host}:{state.port}", flush=True)
    state.thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))

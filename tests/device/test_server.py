"""regnas's device server run by this host's Python: ONNX Runtime and ExecuTorch artifacts uploaded over RPC and run there.

On this x86 host the device's kernels are this host's, so its predictions must equal the local runtime's exactly;
the emulated aarch64 device (tests/device/test_emulator.py) is where they may differ.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from regnas.device import server
from regnas.errors import Unavailable
from regnas.runtimes import Remote, load_runtime
from tests.device.test_emulator import free_port

pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'regnas[tvm]')")


@pytest.fixture(scope="module")
def host_device():
    """The device server on 127.0.0.1, started the way a board starts it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(server.__file__)), "127.0.0.1", str(port)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line == f"listening 127.0.0.1:{port}", line
    yield Remote("127.0.0.1", port)
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.parametrize("artifact,runtime", [("edge/onnx-int8.onnx", "onnxruntime"), ("phone/executorch-int8.pte", "executorch")])
def test_an_artifact_runs_on_the_device_as_it_runs_here(host_device, built, digits, artifact, runtime):
    from regnas.runtimes.device import DeviceRuntime

    out, _, _ = built
    path = out / artifact
    x = digits["test"].x.numpy()[:150]
    rt = DeviceRuntime(path, 1, host_device, runtime)
    try:
        assert rt.emulated is None and f"{runtime} on the device at {host_device}" == rt.version()
        assert np.array_equal(rt.predict(x), load_runtime(runtime, path).predict(x))
    finally:
        rt.close()


def test_a_runtime_the_device_lacks_is_unavailable_not_an_error(host_device, built):
    from regnas.runtimes.device import DeviceRuntime

    out, _, _ = built
    with pytest.raises(Unavailable, match=f"the device at {host_device} runs no coreml \\(it has onnxruntime, executorch\\)"):
        DeviceRuntime(out / "edge" / "onnx-int8.onnx", 1, host_device, "coreml")

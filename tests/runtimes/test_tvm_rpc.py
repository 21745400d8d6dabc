"""TVM over RPC, on loopback against a real `tvm.exec.rpc_server` process: same predictions as locally."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from regnas.errors import RegnasError
from regnas.evaluate import predict
from regnas.exporters import ExportJob
from regnas.exporters.tvm import compile_library
from regnas.runtimes import Remote, load_runtime

pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'regnas[tvm]')")


@pytest.fixture(scope="module")
def rpc_server():
    """A TVM RPC server on 127.0.0.1; its port is read from the line it logs when bound."""
    cmd = [sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", "19190", "--port-end", "19290"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    port = None
    for line in proc.stdout:
        if m := re.search(r"bind to 127\.0\.0\.1:(\d+)", line):
            port = int(m.group(1))
            break
    assert port, "the RPC server did not start"
    yield Remote("127.0.0.1", port)
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def library(digits, digits_supernet, tmp_path_factory):
    net, _ = digits_supernet
    from regnas.evaluate import Evaluator

    model = Evaluator(net, digits).subnet(net.space.smallest())
    work = tmp_path_factory.mktemp("tvm")
    job = ExportJob(model, digits.input_shape, digits["calib"].x.numpy(), work, work)
    return compile_library(job.onnx(), digits.input_shape, work / "model.so"), model


def test_library_runs_the_same_locally_and_over_rpc(rpc_server, library, digits):
    path, model = library
    x = digits["test"].x.numpy()
    local = load_runtime("tvm", path).predict(x)
    remote = load_runtime("tvm", path, remote=rpc_server)
    assert np.array_equal(remote.predict(x), local)
    assert np.array_equal(local, predict(model, digits["test"].x))
    ms = remote.time_ms(x[:1], warmup=2, repeats=5)
    assert ms.shape == (5,) and (ms > 0).all()


def test_bench_over_rpc_reports_percentiles(rpc_server, library, tmp_path, capsys):
    from regnas.cli import main

    path, _ = library
    out = tmp_path / "bench.json"
    assert main(["bench", str(path), "--rpc", f"{rpc_server.host}:{rpc_server.port}", "--repeats", "20", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["remote"] == f"127.0.0.1:{rpc_server.port}"
    assert 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"] and result["mean_ms"] > 0


def test_unreachable_rpc_address_is_a_one_line_error(library, capsys):
    path, _ = library
    with pytest.raises(RegnasError, match="cannot reach the TVM RPC server at 127.0.0.1:9"):
        load_runtime("tvm", path, remote=Remote("127.0.0.1", 9))
    from regnas.cli import main

    assert main(["bench", str(path), "--rpc", "nowhere"]) == 2
    assert "is not host:port" in capsys.readouterr().err
    assert main(["bench", str(path.with_suffix(".onnx")), "--rpc", "127.0.0.1:9"]) == 2


def test_library_for_another_cpu_is_refused_before_upload(rpc_server, library, built):
    """An aarch64 library (the shared build's edge member) sent to this x86 RPC server: one line naming what the
    server is, not a loader crash."""
    import platform

    from regnas.exporters.tvm import CROSS_CC

    arm = built[0] / "edge" / "tvm-fp32-aarch64.so"
    if platform.machine() == "aarch64" or not arm.is_file():
        pytest.skip(f"needs an x86 host with {CROSS_CC} (Debian gcc-aarch64-linux-gnu, installed by scripts/setup.sh as root)")
    path, _ = library
    with pytest.raises(RegnasError, match=f"is an {platform.machine()} machine, not aarch64"):
        load_runtime("tvm", arm, remote=rpc_server)
    assert load_runtime("tvm", path, remote=rpc_server).emulated is None

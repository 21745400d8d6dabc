"""The emulated aarch64 device: set-up errors, and the digits build's aarch64 library checked over RPC end to end."""

from __future__ import annotations

import json
import socket

import pytest

from regnas.device import emulator
from regnas.errors import RegnasError
from regnas.io import write_json
from tests.conftest import run

pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'regnas[tvm]')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_emulate_without_sysroot_names_the_setup_command(tmp_path, monkeypatch):
    monkeypatch.setenv("REGNAS_CACHE", str(tmp_path))
    code, _, err = run("device", "emulate", "--port", str(free_port()))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "regnas device setup" in err  # qemu missing names it too, after the Debian package


def test_sysroot_of_another_tvm_needs_a_rebuild(tmp_path, monkeypatch):
    monkeypatch.setattr(emulator, "qemu", lambda: "/usr/bin/qemu-aarch64-static")
    write_json(tmp_path / emulator.STAMP, {"apache-tvm": "0.0.1"})
    with pytest.raises(RegnasError, match="has apache-tvm 0.0.1, this host .*regnas device setup --force"):
        emulator.require_sysroot(tmp_path)


@pytest.fixture(scope="module")
def device():
    """The emulated device from the cached sysroot (`regnas device setup`, which CI's .ci/run runs)."""
    try:
        root = emulator.require_sysroot()
    except RegnasError as exc:
        pytest.skip(f"no emulated device here: {exc}")
    with emulator.start(port=free_port(), root=root) as running:
        yield running


@pytest.mark.slow
def test_aarch64_library_checked_on_the_emulated_device(device, built_copy, tmp_path):
    """Status ok, and the same predictions as the x86 library of the same graph (the issue's end-to-end check)."""
    out = built_copy
    if not (out / "edge" / "tvm-fp32-aarch64.so").is_file():
        pytest.skip("the build has no aarch64 library (needs Debian's gcc-aarch64-linux-gnu)")
    code, stdout, stderr = run("check", str(out), "--rpc", device.address)
    assert code in (0, 1), stderr
    arts = {a["path"]: a for a in json.loads((out / "report.json").read_text())["artifacts"]}
    arm = arts["edge/tvm-fp32-aarch64.so"]
    assert arm["status"] == "ok" and "emulated: qemu-user aarch64" in arm["device"]
    assert arm["vs_host"] == {"artifact": "edge/tvm-fp32-x86_64.so", "flips": 0, "disagreements": 0, "classes": {}}
    assert arm["top1"] == arts["edge/tvm-fp32-x86_64.so"]["top1"]
    assert arts["edge/tvm-fp32-x86_64.so"]["device"] is None and arts["edge/tvm-fp32-x86_64.so"]["vs_host"] is None
    assert "0 disagreements, 0 flips vs edge/tvm-fp32-x86_64.so" in stdout
    assert "ran on" in (out / "summary.md").read_text()
    assert arts["edge/tvm-fp32-x86_64.so"]["runs"] == []  # a per-architecture build runs on the device as its own build
    # The edge's ONNX Runtime int8 model also runs on the device, with ARM's kernels, and is compared with its run here.
    (onnx,) = [r for r in arts["edge/onnx-int8.onnx"]["runs"] if r["device"]]
    assert onnx["runtime"] == "onnxruntime" and onnx["status"] == "ok" and "neoverse-n1" in onnx["device"]
    vs = onnx["vs"]
    assert vs["artifact"] == "edge/onnx-int8.onnx in onnxruntime on this host" and sum(vs["classes"].values()) == vs["disagreements"]
    assert onnx["verdict"] and len(onnx["nfr_interval"]) == 2 and onnx["seconds"] > 0
    # The phone's programs need ExecuTorch on the device, which the emulated one lacks: said, not failed.
    for name in ("phone/executorch-fp32.pte", "phone/executorch-int8.pte"):
        (phone,) = arts[name]["runs"]
        assert phone["status"].startswith("skipped: ") and "runs no executorch (it has onnxruntime)" in phone["status"]
    assert not [r for r in arts["server/onnx-int8.onnx"]["runs"] if r["device"]]  # the server target names no arch

    code, stdout, stderr = run(
        "bench", str(out / "edge" / "tvm-fp32-aarch64.so"), "--rpc", device.address, "--repeats", "5", "--warmup", "1"
    )
    assert code == 0 and json.loads(stdout)["emulated"].startswith("qemu-user aarch64")
    assert "say nothing about the real device's latency" in stderr

    lut = tmp_path / "lut.json"
    code, _, stderr = run("profile", "--target", "edge", "--rpc", device.address, "--out", str(lut), "--repeats", "1", "--warmup", "1")
    assert code == 2 and "is emulated" in stderr and not lut.exists()


def test_busy_port_is_a_one_line_error(device):
    with pytest.raises(RegnasError, match="cannot listen on 127.0.0.1:.*pass another --port"):
        emulator.start(port=device.port)

"""Every exporter writes real artifacts from a trained digits subnet; what runs here agrees with torch."""

import sys

import numpy as np
import pytest

from regnas.errors import RegnasError, Unavailable
from regnas.evaluate import Evaluator, predict
from regnas.exporters import ExportJob, create_exporter, exporter_names
from regnas.io import sha256_file
from regnas.runtimes import load_runtime

CASES = [(name, p) for name in exporter_names() for p in create_exporter(name).precisions]


@pytest.fixture(scope="module")
def member(digits, digits_supernet):
    net, _ = digits_supernet
    ev = Evaluator(net, digits)
    space = net.space
    return ev.subnet(space.sample(__import__("random").Random(3))), digits


@pytest.mark.parametrize("name,precision", CASES)
def test_exporter_writes_artifacts_that_run_or_say_why_not(member, tmp_path, name, precision):
    net, data = member
    job = ExportJob(net, data.input_shape, data["calib"].x.numpy(), tmp_path, tmp_path / "scratch")
    job.scratch.mkdir()
    exported = create_exporter(name).export(job, precision)
    assert exported and all(e.format == name and e.precision == precision for e in exported)
    x, ref = data["test"].x.numpy(), predict(net, data["test"].x)
    ran = 0
    for e in exported:
        if e.status != "ok":
            assert e.status.startswith("skipped: ") and not e.path.exists()
            if e.runtime == "tensorrt":
                assert e.command.startswith("trtexec --onnx=") and f"--{precision}" in e.command
            continue
        assert e.path.exists() and len(sha256_file(e.path)) == 64
        try:
            preds = load_runtime(e.runtime, e.path).predict(x)
        except Unavailable as exc:
            assert e.runtime in ("coreml", "tvm"), exc  # Core ML predicts on macOS only; aarch64 TVM needs --rpc
            if e.runtime == "tvm":
                assert e.path.read_bytes()[:4] == b"\x7fELF" and e.path.read_bytes()[18] == 0xB7  # EM_AARCH64
            continue
        ran += 1
        agree = np.mean(preds == ref)
        # fp32 must be exact; fp16 close; int8 with its default options may saturate (what flip-aware quantization fixes)
        floor = {"fp32": 1.0, "fp16": 0.97, "int8": 0.5}[precision]
        assert agree >= floor, f"{e.path.name} agrees with torch on {agree:.1%}"
    assert ran or name == "coreml"  # everything else has a build that runs on this machine


def test_unknown_exporter_and_missing_backend_are_one_line_errors(monkeypatch):
    from regnas.targets import parse_target

    with pytest.raises(RegnasError, match="unknown exporter 'openvino'"):
        parse_target({"name": "x", "exporters": ["openvino"], "budget": {"flops": 1}}, "x.toml")
    with pytest.raises(RegnasError, match="exporter onnx takes a list of precisions"):
        parse_target({"name": "x", "exporters": {"onnx": ["int4"]}, "budget": {"flops": 1}}, "x.toml")
    monkeypatch.setitem(sys.modules, "coremltools", None)
    with pytest.raises(RegnasError, match=r"pip install 'regnas\[coreml\]'"):
        create_exporter("coreml").check_available()


def test_flip_aware_quantization_searches_the_grid_and_keeps_the_best(member, tmp_path):
    from regnas.artifacts import flip_aware
    from regnas.targets import Target

    net, data = member
    job = ExportJob(net, data.input_shape, data["calib"].x.numpy(), tmp_path, tmp_path / "scratch")
    job.scratch.mkdir()
    strict = Target("strict", {"flops": 1.0}, max_nfr_vs_fp32=-1.0)  # below any NFR: always search
    val = data["val"]
    exporter = create_exporter("onnx")
    exported, record = flip_aware(exporter, job, "int8", strict, (val.x.numpy(), predict(net, val.x), val.y.numpy()), lambda _m: None)
    tried = record["tried"]
    assert len(tried) == len(exporter.option_grid("int8")) and record["selected_on"] == "val"
    best = min(tried, key=lambda t: (t["nfr_val"], -t["top1_val"]))
    assert record["after"] == best and record["after"]["nfr_val"] <= record["before"]["nfr_val"]
    assert exported[0].options == best["options"]
    kept = load_runtime("onnxruntime", exported[0].path).predict(val.x.numpy())
    from regnas.flips import nfr

    assert nfr(predict(net, val.x), kept, val.y.numpy()) == pytest.approx(best["nfr_val"])

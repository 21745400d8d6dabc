"""`regnas export` / `regnas check` on a real digits build: artifacts, flips vs fp32 and vs the previous member, exit codes."""

import json

import onnx
import pytest

from regnas.cli import main
from regnas.io import sha256_file
from regnas.search import SearchConfig
from regnas.workflow.build import BuildOptions, build

TOML = """name = "{name}"
runtime = "onnxruntime"
max_nfr_vs_fp32 = {limit}
{extra}[exporters]
onnx = ["fp32", "int8"]
{runtimes}[budget]
flops_fraction = {fraction}
"""
BOX = ('arch = "aarch64"\n', '[runtimes]\nonnx = ["onnxruntime", "openvino"]\n')
"""The large member's target: an aarch64 box that runs its ONNX files in ONNX Runtime and OpenVINO."""


@pytest.fixture(scope="module")
def exported(digits_supernet, tmp_path_factory):
    """A two-member family built from the shared supernet without artifacts, then exported and checked by `regnas
    export`: (its directory, the export's exit status)."""
    _, ckpt = digits_supernet
    root = tmp_path_factory.mktemp("checked")
    (root / "targets").mkdir()
    for name, fraction, (extra, runtimes) in (("small", 0.4, ("", "")), ("large", 0.8, BOX)):
        (root / "targets" / f"{name}.toml").write_text(TOML.format(name=name, limit=0.5, fraction=fraction, extra=extra, runtimes=runtimes))
    out = root / "build"
    opts = BuildOptions(
        targets="small,large",
        out=out,
        supernet=ckpt / "supernet.safetensors",
        search=SearchConfig(population=4, generations=1),
        export=False,
        targets_dir=root / "targets",
        finetune_mode="none",
    )
    build(opts)
    return out, main(["export", str(out)])


def test_export_then_check_fills_the_artifact_contract(exported):
    family_dir, code = exported
    assert code == 0
    report = json.loads((family_dir / "report.json").read_text())
    arts = report["artifacts"]
    assert [(a["target"], a["format"], a["precision"]) for a in arts] == [
        ("small", "onnx", "fp32"),
        ("small", "onnx", "int8"),
        ("large", "onnx", "fp32"),
        ("large", "onnx", "int8"),
    ]
    for a in arts:
        assert {"target", "format", "precision", "path", "sha256", "runtime", "status", "top1", "nfr_vs_fp32", "nfr_vs_prev"} <= set(a)
        assert a["status"] == "ok" and a["sha256"] == sha256_file(family_dir / a["path"]) and not a["path"].startswith("/")
    fp32 = {a["target"]: a for a in arts if a["precision"] == "fp32"}
    members = {m["target"]: m for m in report["family"]}
    for name, a in fp32.items():  # the fp32 export is the member itself
        assert a["nfr_vs_fp32"] == 0 and a["top1"] == pytest.approx(members[name]["top1"])
    assert fp32["small"]["nfr_vs_prev"] is None
    assert fp32["large"]["nfr_vs_prev"] == pytest.approx(members["large"]["nfr_vs_prev"])
    int8 = next(a for a in arts if a["target"] == "small" and a["precision"] == "int8")
    assert int8["quantization"]["selected_on"] == "val" and int8["options"]["activation_type"] in ("QUInt8", "QInt8")
    matrix = report["check"]["flip_matrix"]
    assert len(matrix["labels"]) == 4 and all(matrix["nfr"][i][i] == 0 for i in range(4))
    assert report["check"]["passed"] and "onnx-int8.onnx" in (family_dir / "summary.md").read_text()
    # The large target deploys its ONNX files in OpenVINO too: each is judged there, beside its agreement with ONNX Runtime.
    assert all(a["runs"] == [] for a in arts if a["target"] == "small")
    for a in (a for a in arts if a["target"] == "large"):
        (ov,) = a["runs"]
        assert ov["runtime"] == "openvino" and ov["device"] is None and ov["status"] == "ok" and ov["verdict"]
        assert ov["vs"]["artifact"] == f"{a['target']}/{a['path'].split('/')[-1]} in onnxruntime on this host"
        assert ov["vs"]["disagreements"] == sum(ov["vs"]["classes"].values()) <= 269  # the digits test split
    large_int8 = next(a for a in arts if a["target"] == "large" and a["precision"] == "int8")
    q = large_int8["quantization"]  # flip-aware quantization counted its val flips in both runtimes, and kept the worst
    assert q["runtimes"] == ["onnxruntime", "openvino"]
    assert q["before"]["flips_val"] == max(r["flips_val"] for r in q["before"]["by_runtime"].values())
    assert "Other runs" in (family_dir / "summary.md").read_text() and "openvino" in (family_dir / "report.html").read_text()


def test_a_device_that_cannot_be_reached_skips_its_runs_and_keeps_this_hosts(exported, capsys):
    family_dir, _ = exported
    assert main(["check", str(family_dir), "--rpc", "127.0.0.1:9"]) == 0
    captured = capsys.readouterr()
    assert "cannot reach the TVM RPC server at 127.0.0.1:9" in captured.err
    arts = json.loads((family_dir / "report.json").read_text())["artifacts"]
    for a in arts:
        assert a["status"] == "ok" and a["verdict"]
        device = [r for r in a["runs"] if r["device"]]
        if a["target"] == "large":  # an aarch64 target: its device runs are skipped, saying why in one line
            (run,) = device
            assert run["status"].startswith("skipped: cannot reach") and "\n" not in run["status"]
        else:
            assert not device


def _negated(path):
    """The ONNX model at `path` with its logits negated: it predicts its least likely class, wrong almost everywhere."""
    model = onnx.load(str(path))
    name = model.graph.output[0].name
    for node in model.graph.node:
        for i, out in enumerate(node.output):
            if out == name:
                node.output[i] = f"{name}_raw"
    model.graph.node.append(onnx.helper.make_node("Neg", [f"{name}_raw"], [name]))
    return model.SerializeToString()


def test_check_fails_naming_an_artifact_over_its_threshold(exported, capsys):
    family_dir, _ = exported
    report = json.loads((family_dir / "report.json").read_text())
    small = family_dir / "small" / "onnx-fp32.onnx"
    original = small.read_bytes()
    small.write_bytes(_negated(small))  # the small target now ships a broken model: flips on most test images
    strict = json.loads(json.dumps(report))
    next(a for a in strict["artifacts"] if a["path"] == "small/onnx-fp32.onnx")["sha256"] = sha256_file(small)
    next(t for t in strict["targets"] if t["name"] == "small")["max_nfr_vs_fp32"] = 0.0
    (family_dir / "report.json").write_text(json.dumps(strict))
    try:
        assert main(["check", str(family_dir)]) == 1
        out = capsys.readouterr().out
        assert "check FAILED: small/onnx-fp32.onnx: " in out and "test images vs its fp32 model" in out
        assert not json.loads((family_dir / "report.json").read_text())["check"]["passed"]
    finally:
        small.write_bytes(original)
        (family_dir / "report.json").write_text(json.dumps(report))
    assert main(["check", str(family_dir)]) == 0


def test_tampered_artifact_and_missing_report_exit_2(exported, tmp_path, capsys):
    family_dir, _ = exported
    path = family_dir / "large" / "onnx-int8.onnx"
    original = path.read_bytes()
    path.write_bytes(original + b"\0")
    try:
        assert main(["check", str(family_dir)]) == 2
        err = capsys.readouterr().err
        assert "large/onnx-int8.onnx no longer matches its sha256" in err and err.count("\n") == 1
    finally:
        path.write_bytes(original)
    assert main(["check", str(tmp_path)]) == 2
    assert "has no report.json; run regnas build" in capsys.readouterr().err
    assert main(["export", str(tmp_path)]) == 2


def test_verdicts_carry_their_interval_and_strict_fails_what_269_images_cannot_decide(exported, capsys):
    family_dir, _ = exported
    report = json.loads((family_dir / "report.json").read_text())
    tight = json.loads(json.dumps(report))
    for t in tight["targets"]:
        t["max_nfr_vs_fp32"] = 0.002  # 0 flips of 269 cannot show 0.2%: the upper bound is 1.4%
    (family_dir / "report.json").write_text(json.dumps(tight))
    try:
        code = main(["check", str(family_dir)])
        out = capsys.readouterr().out
        checked = json.loads((family_dir / "report.json").read_text())
        for a in checked["artifacts"]:
            low, high = a["nfr_interval"]
            assert low <= a["nfr_vs_fp32"] <= high and a["flips"] == round(a["nfr_vs_fp32"] * 269)
            if a["flips"] == 0:
                assert a["verdict"] == "inconclusive: needs about 1,856 test images"
            assert a["verdict"] == "failed" if low > 0.002 else a["verdict"].startswith("inconclusive")
        assert code == (1 if checked["check"]["failures"] else 0)  # only a sure regression fails without --strict
        assert checked["check"]["inconclusive"] and "check inconclusive for" in out
        assert main(["check", "--strict", str(family_dir)]) == 1
        assert "check FAILED (--strict)" in capsys.readouterr().out
    finally:
        (family_dir / "report.json").write_text(json.dumps(report))

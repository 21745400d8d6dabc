"""`regnas gate` on real digits models: saved members, ONNX exports and prediction files."""

import json
from xml.etree import ElementTree as ET

import numpy as np
import pytest
import torch

from regnas import builddir
from regnas.cli import main
from regnas.evaluate import predict, recalibrate_bn
from regnas.flips import upper_bound
from regnas.workflow.gate import decide


def gate(reference, candidate, *extra, split="test"):
    """Run `regnas gate` on digits; returns the exit code."""
    args = ["gate", "--reference", str(reference), "--candidate", str(candidate), "--data", "digits"]
    return main(args + (["--split", split] if split else []) + list(extra))


def save_member(net, space, arch, calib, out):
    subnet = recalibrate_bn(space.extract(net.model, arch), calib)
    builddir.save_member(out, space, arch, subnet, out.name)
    return subnet.to(memory_format=torch.contiguous_format)


def export_onnx(model, path, input_shape=(1, 8, 8)):
    model.eval()
    torch.onnx.export(
        model,
        torch.zeros(1, *input_shape),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        dynamo=False,
    )
    return path


@pytest.fixture(scope="module")
def models(digits_supernet, digits, tmp_path_factory):
    net, _ = digits_supernet
    space = net.space
    root = tmp_path_factory.mktemp("gate")
    small = save_member(net, space, space.smallest(), digits["calib"].x, root / "build" / "phone")
    large = save_member(net, space, space.largest(), digits["calib"].x, root / "build" / "server")
    (root / "build" / "report.json").write_text("{}")
    export_onnx(large, root / "large.onnx")
    test = digits["test"]
    preds = {"small": predict(small, test.x), "large": predict(large, test.x)}
    return root, preds


def test_upper_bound_is_the_exact_binomial_bound():
    assert upper_bound(0, 100, 0.95) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert upper_bound(5, 100, 0.95) > 0.05 > upper_bound(5, 10000, 0.95) - 0.0
    assert upper_bound(100, 100, 0.95) == 1.0
    r = decide(np.array([1, 1, 0]), np.array([1, 0, 0]), np.array([1, 1, 0]), 0.5, 0.5, 0.95)
    assert r.flips == 1 and r.flipped == [{"index": 1, "label": 1, "reference": 1, "candidate": 0}]
    assert not r.passed  # one flip in three: the bound is far above 50%


def test_member_vs_onnx_counts_real_flips_and_writes_reports(models, tmp_path, capsys, digits):
    root, preds = models
    labels = digits["test"].y.numpy()
    expected = int(((preds["small"] == labels) & (preds["large"] != labels)).sum())
    out = {k: tmp_path / f"gate.{k}" for k in ("json", "xml", "md")}
    reports = ["--json", str(out["json"]), "--junit", str(out["xml"]), "--markdown", str(out["md"])]
    assert gate(root / "build" / "phone", root / "large.onnx", *reports, "--max-nfr", "1", "--max-top1-drop", "1") == 0
    result = json.loads(out["json"].read_text())
    assert result["flips"] == expected and result["n"] == len(labels) and result["passed"] is True
    assert {"nfr", "nfr_upper", "flips", "n", "top1_reference", "top1_candidate", "passed"} <= set(result)
    assert result["nfr_upper"] >= result["nfr"]
    assert len(result["flipped"]) == min(expected, 20)
    suite = ET.parse(out["xml"]).getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "0"
    assert "regnas gate" in out["md"].read_text()
    assert "gate passed" in capsys.readouterr().out


def test_strict_limit_fails_with_exit_1(models, tmp_path):
    root, preds = models
    np.save(tmp_path / "ref.npy", preds["small"])
    (tmp_path / "cand.json").write_text(json.dumps({"predictions": preds["large"].tolist()}))
    xml = tmp_path / "j.xml"
    code = gate(tmp_path / "ref.npy", tmp_path / "cand.json", "--max-nfr", "0", "--junit", str(xml))
    assert code == 1
    assert ET.parse(xml).getroot().get("failures") in ("1", "2")


def test_a_zero_limit_is_judged_on_the_count(models, tmp_path, capsys):
    root, preds = models
    np.save(tmp_path / "ref.npy", preds["small"])
    np.save(tmp_path / "same.npy", preds["small"])
    assert gate(tmp_path / "ref.npy", tmp_path / "same.npy", "--max-nfr", "0") == 0
    assert "gate passed: 0 negative flips" in capsys.readouterr().out
    assert decide(np.array([1, 1]), np.array([1, 0]), np.array([1, 1]), 0.0, 1.0, 0.95).reasons == [
        "1 negative flips where --max-nfr 0 allows none"
    ]


def test_identical_models_pass_and_small_sets_do_not_pass_by_luck(models, tmp_path):
    root, preds = models
    member = str(root / "build" / "server")
    assert gate(member, root / "large.onnx", "--max-nfr", "0.02") == 0
    tiny = np.array([0, 1] * 10)
    assert decide(tiny, tiny, tiny, 0.05, 0.0, 0.95).passed is False  # 20 samples cannot show NFR <= 5%


def _write(path, data):
    path.write_bytes(data)
    return path


def _bad_onnx(path, out_features, spatial=False):
    class Net(torch.nn.Module):
        def forward(self, x):
            return x[:, :1] if spatial else torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1).repeat(1, out_features)

    return export_onnx(Net(), path)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda d, p: np.save(d / "short.npy", p["small"][:10]) or d / "short.npy", "10 predictions but the data has"),
        (lambda d, p: _bad_onnx(d / "three.onnx", 3), "scores 3 classes but the data has 10"),
        (lambda d, p: _bad_onnx(d / "spatial.onnx", 1, spatial=True), "not [N, classes]"),
        (lambda d, p: _write(d / "corrupt.onnx", b"junk"), "not a loadable ONNX model"),
        (lambda d, p: d / "missing.onnx", "not found"),
        (lambda d, p: d / "build", "is a build directory; name a member"),
        (lambda d, p: np.save(d / "neg.npy", p["small"] - 20) or d / "neg.npy", "predicts class -20, outside the data's classes 0 to 9"),
        (lambda d, p: np.save(d / "minus1.npy", np.minimum(p["small"], -1)) or d / "minus1.npy", "predicts class -1"),
        (lambda d, p: np.save(d / "nan.npy", np.full((len(p["small"]), 10), np.nan)) or d / "nan.npy", "contain NaN"),
        (lambda d, p: d / "build" / "phone", "are the same"),
    ],
)
def test_bad_inputs_exit_2(models, capsys, make, message):
    root, preds = models
    bad = make(root, preds)
    code = gate(root / "build" / "phone", bad)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_input_shape_mismatch_exits_2(tmp_path, capsys):
    big = export_onnx(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10)), tmp_path / "rgb.onnx", (3, 16, 16))
    other = tmp_path / "copy.onnx"
    other.write_bytes(big.read_bytes())
    assert gate(big, other, split=None) == 2
    assert "expects inputs 3×16×16 but the data is 1×8×8" in capsys.readouterr().err


def test_the_example_workflow_gate_step_runs_locally(models, digits, tmp_path):
    """Run the GitHub Actions example's own gate step, as CI would, on real models."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root, _ = models
    workflow = yaml.safe_load((Path(__file__).parents[2] / "examples/github-actions/regnas-gate.yml").read_text())
    steps = {s.get("name"): s for s in workflow["jobs"]["gate"]["steps"]}
    holdout = digits.whole()  # 1797 samples: enough for a 0-flip bound under the workflow's 1%
    np.savez(tmp_path / "holdout.npz", x=holdout.x.numpy()[:, 0], y=holdout.y.numpy())
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "REFERENCE": str(root / "build" / "server"),
        "CANDIDATE": str(root / "large.onnx"),
        "DATA": str(tmp_path / "holdout.npz"),
        "GITHUB_OUTPUT": str(tmp_path / "output"),
    }
    subprocess.run(["bash", "-e", "-c", steps["Flip gate"]["run"]], cwd=tmp_path, env=env, check=True)
    assert (tmp_path / "output").read_text().strip() == "code=0"
    assert "regnas gate" in (tmp_path / "gate.md").read_text()
    assert json.loads((tmp_path / "gate.json").read_text())["flips"] == 0
    assert "gate.md" in steps["Comment on the pull request"]["with"]["script"]

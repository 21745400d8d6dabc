"""Deployed models (`--deployed TARGET=PATH`): validation, predictions on val and test, the reward's λ3, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from regnas.cli import main
from regnas.deployed import load_deployed, parse_deployed
from regnas.distill import DistillConfig
from regnas.errors import RegnasError
from regnas.evaluate import Evaluator, predict
from regnas.search import Reward, SearchConfig, evolve, parse_reward
from regnas.workflow.build import BuildOptions, build, deployed_rewards


@pytest.mark.parametrize(
    "spec,match",
    [
        ("phone", "is not TARGET=PATH"),
        ("tablet=x.npy", "target 'tablet', which this build does not have; its targets are phone, edge"),
        ("phone=missing.npy", "deployed model for phone not found: missing.npy"),
    ],
)
def test_bad_deployed_specs_are_one_line_errors(spec, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RegnasError, match=match) as err:
        parse_deployed([spec], ["phone", "edge"])
    assert "\n" not in str(err.value)


def test_a_target_deployed_twice_is_refused(tmp_path):
    path = tmp_path / "p.npy"
    np.save(path, np.zeros(3, dtype=np.int64))
    with pytest.raises(RegnasError, match="names target 'phone' twice"):
        parse_deployed([f"phone={path}", f"phone={path}"], ["phone"])


def test_saved_predictions_cover_the_whole_set_and_are_cut_to_each_split(digits, tmp_path):
    whole = digits.whole()
    preds = (whole.y.numpy() + 1) % digits.num_classes  # wrong everywhere: every member right somewhere flips positively
    path = tmp_path / "old.npy"
    np.save(path, preds)
    (d,) = load_deployed(parse_deployed([f"phone={path}"], ["phone"]), digits).values()
    for split in ("val", "test"):
        assert np.array_equal(d.predictions[split], preds[digits[split].index])
    labels = digits["test"].y.numpy()
    vs = d.versus(labels, labels)  # a perfect new model: no negative flips, a positive flip on every image
    assert vs["flips"] == 0 and vs["positive_flips"] == len(labels) and vs["top1_deployed"] == 0.0 and vs["nfr_interval"][0] == 0
    np.save(path, preds[:-1])
    with pytest.raises(RegnasError, match="predictions but the data has"):
        load_deployed({"phone": path}, digits)


def test_the_reward_weighs_flips_against_the_deployed_model():
    r = parse_reward("1,5,5")
    assert (r.top1, r.nfr, r.deployed) == (1, 5, 5) and r.describe() == "1,5,5"
    assert r(0.9, 0.01, 0.02) == pytest.approx(0.9 - 0.05 - 0.1)
    correct, flipped, lost = np.array([1, 1, 0]), np.array([0, 1, 0]), np.array([1, 0, 0])
    assert r.per_sample(correct, flipped, lost).tolist() == [-4, -4, 0]
    with pytest.raises(RegnasError, match="'λ1,λ2' or 'λ1,λ2,λ3'"):
        parse_reward("1,5,5,5")
    main, without = deployed_rewards([parse_reward("1,5")])[0], deployed_rewards([parse_reward("1,5")])[-1]
    assert main.deployed == 5 and without == Reward(1, 5)  # λ3 defaults to λ2; the plain reward is searched beside it
    with pytest.raises(RegnasError, match="--reward 1,5,5"):
        deployed_rewards([parse_reward("1,0")])


def test_the_search_counts_flips_against_the_deployed_model(digits, digits_supernet):
    net, _ = digits_supernet
    ev = Evaluator(net, digits)
    labels = ev.labels("val")
    old = predict(ev.subnet(net.space.smallest()), ev.images("val"))
    cfg = SearchConfig(population=4, generations=1, screen=100)
    best = evolve(ev, net.space.flops(net.space.largest()), Reward(1.0, 0.0, deployed=3.0), cfg=cfg, deployed=old).best
    assert best.nfr_deployed is not None and best.reward == pytest.approx(best.top1 - 3.0 * best.nfr_deployed)
    assert best.nfr_deployed == pytest.approx(float(((old == labels) & (predict(ev.subnet(best.arch), ev.images("val")) != labels)).mean()))
    plain = evolve(ev, net.space.flops(net.space.largest()), Reward(1.0, 0.0), cfg=cfg, deployed=old).best
    assert plain.nfr_deployed is None  # λ3 = 0: the deployed model plays no part


TOML = 'name = "{name}"\nruntime = "onnxruntime"\n[exporters]\nonnx = ["fp32"]\n[budget]\nflops_fraction = {fraction}\n'


@pytest.fixture(scope="module")
def deployed_build(digits, digits_supernet, tmp_path_factory):
    """A two-member family built against a deployed model for its large target (saved predictions of the smallest subnet)."""
    _, ckpt = digits_supernet
    root = tmp_path_factory.mktemp("deployed")
    (root / "targets").mkdir()
    for name, fraction in (("small", 0.4), ("large", 0.8)):
        (root / "targets" / f"{name}.toml").write_text(TOML.format(name=name, fraction=fraction))
    net, _ = digits_supernet
    old = predict(Evaluator(net, digits).subnet(net.space.smallest()), digits.whole().x)
    np.save(root / "old-large.npy", old)
    opts = BuildOptions(
        targets="small,large",
        out=root / "build",
        supernet=ckpt / "supernet.safetensors",
        search=SearchConfig(population=4, generations=1),
        export=False,
        targets_dir=root / "targets",
        deployed=(f"large={root / 'old-large.npy'}",),
        finetune=DistillConfig(epochs=1),
    )
    return root, build(opts), old


def test_a_build_against_a_deployed_model_reports_what_it_bought(deployed_build, digits):
    root, report, old = deployed_build
    dep = report["deployed"]
    assert dep["reward"] == "1,5,5" and dep["without_reward"] == "1,5"
    (m,) = dep["members"]
    assert m["target"] == "large" and m["with"]["n"] == len(digits["test"])
    assert m["with"]["deployed"].endswith("old-large.npy") and 0 <= m["with"]["nfr_interval"][0] <= m["with"]["nfr"]
    large = next(r for r in report["family"] if r["target"] == "large")
    assert large["vs_deployed"] == m["with"] and "vs_deployed" not in report["family"][0]
    assert [p["reward"] for p in report["reward_sweep"]][:2] == ["1,5,5", "1,5"]
    # Every member against each deployed model: the heatmap's deployed rows (its own member is the record above).
    (row,) = dep["flip_matrix"]
    assert len(row) == len(report["family"]) and row[1] == m["with"]["nfr"] and dep["flip_matrix_without"][0][1] == m["without"]["nfr"]
    assert report["finetune"]["mode"] == "joint"  # the default fine-tune, pulled towards the deployed predictions too
    assert report["finetune"]["config"]["deployed_weight"] == pytest.approx(0.02 * 5)  # priced by λ3
    written = json.loads((root / "build" / "report.json").read_text())
    assert written["deployed"] == dep and "Against the deployed models" in (root / "build" / "summary.md").read_text()
    # The build keeps what it was judged against, and the gate reads it from there, on the build's own test split.
    assert m["kept"] == "deployed/large.npy" and np.array_equal(np.load(root / "build" / m["kept"]), old)
    out = root / "gate.json"
    code = main(["gate", "--build", str(root / "build"), "--target", "large", "--max-nfr", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert code == 0 and result["n"] == len(digits["test"]) and result["flips"] == m["with"]["flips"]
    assert result["reference"].startswith("large deployed") and result["candidate"].endswith("large")
    assert main(["gate", "--build", str(root / "build"), "--target", "small"]) == 2  # built without one for small
    assert main(["gate", "--build", str(root / "build"), "--target", "large", "--data", "digits"]) == 2


def test_the_example_upgrade_workflow_gates_the_build(deployed_build, tmp_path):
    """Run the release workflow's gate step, as CI would, on the build."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root, report, _ = deployed_build
    workflow = yaml.safe_load((Path(__file__).parents[1] / "examples/github-actions/regnas-upgrade.yml").read_text())
    steps = {s.get("name"): s for s in workflow["jobs"]["upgrade"]["steps"]}
    assert "--deployed" in steps["Build against the deployed models"]["run"]
    (tmp_path / "build").symlink_to(root / "build")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TARGETS": "large",
        "GITHUB_OUTPUT": str(tmp_path / "output"),
    }
    subprocess.run(["bash", "-e", "-c", steps["Gate every member against production"]["run"]], cwd=tmp_path, env=env, check=True)
    flips = report["deployed"]["members"][0]["with"]
    code = (tmp_path / "output").read_text().strip()
    assert code in ("code=0", "code=1") and json.loads((tmp_path / "gate-large.json").read_text())["flips"] == flips["flips"]
    assert "regnas gate" in (tmp_path / "gate.md").read_text()


def test_deployed_rows_of_the_wrong_shape_are_refused(deployed_build, tmp_path, capsys):
    """The heatmap's deployed rows are read only with one row per deployed model and one column per member."""
    import shutil

    root, _, _ = deployed_build
    out = tmp_path / "build"
    shutil.copytree(root / "build", out)
    report = json.loads((out / "report.json").read_text())
    assert main(["report", str(out)]) == 0  # the family's heatmap with the deployed row renders
    report["deployed"]["flip_matrix"] = [[0.0]]
    (out / "report.json").write_text(json.dumps(report))
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert "deployed.flip_matrix is not a 1x2 matrix (deployed models x members)" in err and err.count("\n") == 1, err

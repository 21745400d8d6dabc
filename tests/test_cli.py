"""`regnas build` / `regnas train` end to end through the command line, on real digits data."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from regnas.cli import main
from regnas.data import to_float
from regnas.spaces import create_space, space_class
from tests.conftest import FAST, run


@pytest.mark.slow
def test_build_writes_the_report_contract(built):
    out, stdout, stderr = built
    report = json.loads((out / "report.json").read_text())
    fam = report["family"]
    assert [m["target"] for m in fam] == ["phone", "edge", "server"]
    for m in fam:
        assert {"target", "arch", "flops", "budget_flops", "params", "top1", "nfr_vs_prev"} <= set(m)
        assert m["flops"] <= m["budget_flops"] and 0 <= m["top1"] <= 1
    assert fam[0]["nfr_vs_prev"] is None and all(0 <= m["nfr_vs_prev"] <= 1 for m in fam[1:])
    assert [(n["smaller"], n["larger"]) for n in report["nesting"]] == [("phone", "edge"), ("edge", "server")]
    assert all(n["contains"] and n["literal"] and 0 < n["shared_weight_fraction"] <= 1 for n in report["nesting"])
    assert [m["target"] for m in report["baseline"]["family"]] == ["phone", "edge", "server"]
    assert "search: generation" in stderr and "train: epoch 1/1" in stderr
    stages = [line.split(":")[1].strip() for line in stderr.splitlines() if line.startswith("regnas: stage ")]
    assert stages == ["stage 1/4", "stage 2/4", "stage 3/4", "stage 4/4"]  # train, search, export, check (--no-finetune)
    assert "family" in stdout and "report.json" in stdout
    assert all("predicted_latency_ms" in m for m in fam)
    reward = report["config"]["reward"]
    assert (reward["top1"], reward["nfr"]) == (1.0, 5.0) and "finetune" not in report  # the default reward; --no-finetune


@pytest.mark.slow
def test_build_exports_and_checks_every_target_format(built):
    out, stdout, _ = built
    report = json.loads((out / "report.json").read_text())
    arts = {(a["target"], a["format"], a["precision"], a["path"].split("/")[-1]): a for a in report["artifacts"]}
    formats = {(t, f) for t, f, _, _ in arts}
    wanted = {"phone": ("coreml", "executorch"), "edge": ("tvm", "onnx"), "server": ("onnx", "tensorrt")}
    assert formats == {(t, f) for t, fs in wanted.items() for f in fs}
    for a in arts.values():
        assert a["status"] == "ok" or a["status"].startswith("skipped: ")
        if a["status"] == "ok":
            assert 0 <= a["top1"] <= 1 and 0 <= a["nfr_vs_fp32"] <= 1 and (out / a["path"]).exists()
    assert "macOS" in arts["phone", "coreml", "int8", "coreml-int8.mlpackage"]["status"]
    assert arts["edge", "tvm", "fp32", "tvm-fp32-x86_64.so"]["status"] == "ok"
    assert arts["edge", "tvm", "fp32", "tvm-fp32-x86_64.so"]["nfr_vs_fp32"] == 0
    assert "--rpc" in arts["edge", "tvm", "fp32", "tvm-fp32-aarch64.so"]["status"]
    engine = arts["server", "tensorrt", "int8", "tensorrt-int8.engine"]
    assert engine["status"].startswith("skipped: no ") and engine["command"].startswith("trtexec --onnx=")
    assert arts["server", "onnx", "fp32", "onnx-fp32.onnx"]["nfr_vs_fp32"] == 0
    assert arts["server", "onnx", "fp16", "onnx-fp16.onnx"]["nfr_vs_prev"] is None  # edge ships no fp16 ONNX
    matrix = report["check"]["flip_matrix"]  # rows: the older artifact, columns: the newer
    prev, new = (matrix["labels"].index(f"{t}/onnx-int8.onnx") for t in ("edge", "server"))
    assert arts["server", "onnx", "int8", "onnx-int8.onnx"]["nfr_vs_prev"] == pytest.approx(matrix["nfr"][prev][new])
    failures = report["check"]["failures"]
    failed = {f"{t}/{name}" for (t, _, _, name), a in arts.items() if a["verdict"] == "failed"}
    assert {f.split(":")[0] for f in failures} == failed
    assert ("check FAILED" in stdout) == bool(failures)


@pytest.mark.slow
def test_saved_models_are_standalone_and_nested(built, digits):
    out, _, _ = built
    report = json.loads((out / "report.json").read_text())
    weights = {}
    for m in report["family"]:
        meta = json.loads((out / m["target"] / "arch.json").read_text())
        space = create_space(meta["space"], meta["config"])
        arch = space.from_json(meta["arch"])
        net = space.build_subnet(arch)
        state = load_file(str(out / m["target"] / "model.safetensors"))
        net.load_state_dict(state)
        with torch.no_grad():
            pred = net.eval()(to_float(digits["test"].x)).argmax(1).numpy()
        assert np.mean(pred == digits["test"].y.numpy()) == pytest.approx(m["top1"], abs=1e-9)
        weights[m["target"]] = dict(net.named_parameters())
    for small, large in (("phone", "edge"), ("edge", "server")):
        from regnas.nn import crop_to

        for k, p in weights[small].items():
            assert torch.equal(p, crop_to(weights[large][k], p.shape)), k


@pytest.mark.slow
def test_rerun_resumes_from_the_cache_and_a_given_supernet_searches_the_same_family(built_copy, tmp_path):
    out = built_copy
    code, _, stderr = run("build", "--targets", "phone,edge,server", "--out", str(out), "--no-export", "--no-finetune", *FAST)
    assert code == 0, stderr
    assert "search: reusing" in stderr and "train: epoch" not in stderr
    given = tmp_path / "given"
    given.mkdir()
    (given / "search.json").write_text("{truncated")
    code, _, stderr = run(
        "build", "--out", str(given), "--supernet", str(out / "supernet.safetensors"), "--no-export", "--no-finetune", *FAST
    )
    assert code == 0 and "ignoring unreadable cache" in stderr and "finetune: " not in stderr, stderr
    a = json.loads((out / "report.json").read_text())
    b = json.loads((given / "report.json").read_text())
    assert "finetune" not in b
    assert [m["arch"] for m in a["family"]] == [m["arch"] for m in b["family"]]  # the same seed searches the same family
    assert [m["arch"] for m in a["baseline"]["family"]] == [m["arch"] for m in b["baseline"]["family"]]
    assert not (given / "supernet.safetensors").exists()


def _npz(path, classes):
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (20 * classes, 8, 8), dtype=np.uint8), y=np.repeat(np.arange(classes), 20))
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,message",
    [
        (["--targets", "phone,tablet"], "unknown target 'tablet'"),
        (["--space", "nope"], "unknown search space"),
        (["--data", "imagenet"], "unknown dataset"),
        (["--data", "missing/dir.npz"], "not found"),
        (["--reward", "R7"], "unknown reward"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    code, stdout, stderr = run("build", "--out", str(out), *args)
    assert code == 2 and message in stderr
    assert stderr.strip().count("\n") == 0 and stderr.startswith("regnas: error:")
    assert not out.exists()


def test_mismatching_and_corrupt_checkpoints_exit_2(digits_supernet, tmp_path, capsys):
    _, ckpt_dir = digits_supernet
    three = _npz(tmp_path / "three.npz", 3)
    out = tmp_path / "out"
    assert main(["build", "--data", str(three), "--supernet", str(ckpt_dir / "supernet.safetensors"), "--out", str(out)]) == 2
    assert "was trained on other data or another split" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    assert main(["build", "--supernet", str(corrupt), "--out", str(out)]) == 2
    assert "safetensors" in capsys.readouterr().err
    assert main(["build", "--supernet", str(ckpt_dir / "supernet.safetensors"), "--space", "other", "--out", str(out)]) == 2
    assert not out.exists()


def test_unmeetable_budget_single_class_and_empty_data_exit_2(tmp_path, capsys):
    tiny = tmp_path / "tiny.toml"
    tiny.write_text('name = "tiny"\n[budget]\nflops = 1000\n')
    out = tmp_path / "out"
    assert main(["build", "--targets", str(tiny), "--out", str(out)]) == 2
    assert "below the smallest mbv3 subnet" in capsys.readouterr().err
    one = tmp_path / "one.npz"
    np.savez(one, x=np.zeros((10, 8, 8), np.uint8), y=np.zeros(10, int))
    assert main(["build", "--data", str(one), "--out", str(out)]) == 2
    assert "single class" in capsys.readouterr().err
    empty = tmp_path / "empty.npz"
    np.savez(empty, x=np.zeros((0, 8, 8), np.uint8), y=np.zeros(0, int))
    assert main(["train", "--data", str(empty), "--out", str(out)]) == 2
    assert "empty" in capsys.readouterr().err
    assert not out.exists()


def test_python_m_and_help():
    code, stdout, _ = run("--help")
    assert code == 0 and "build" in stdout and "train" in stdout
    code, _, stderr = run("build", "--population", "0")
    assert code == 2 and "at least 1" in stderr
    code, _, stderr = run("train", "--out", "unused", "--epochs", "0")
    assert code == 2 and "at least 1" in stderr


EVERY_FORMAT = """name = "all"
max_nfr_vs_fp32 = 0.5
[exporters]
onnx = ["fp32", "int8"]
executorch = ["int8"]
tvm = ["fp32"]
coreml = ["fp16"]
tensorrt = ["int8"]
[budget]
flops_fraction = 0.3
"""


@pytest.mark.slow
def test_vit_builds_with_every_exporter(tmp_path):
    """mbv3 is the `built` fixture; vit (attention, layer norms) goes through every exporter end to end too, with its own
    training recipe. resnet's convolutions are nothing new to the exporters: tests/exporters lowers a resnet subnet."""
    target = tmp_path / "all.toml"
    target.write_text(EVERY_FORMAT)
    out = tmp_path / "build"
    code, _, stderr = run("build", "--targets", str(target), "--space", "vit", "--out", str(out), *FAST)
    assert code == 0, stderr
    trained = json.loads((out / "supernet.json").read_text())["train"]
    assert trained == {**trained, **space_class("vit").recipe}  # the space's own training recipe was used
    report = json.loads((out / "report.json").read_text())
    formats = {(a["format"], a["precision"]) for a in report["artifacts"]}
    every = {("onnx", "fp32"), ("onnx", "int8"), ("executorch", "int8"), ("tvm", "fp32"), ("coreml", "fp16"), ("tensorrt", "int8")}
    assert formats == every
    ran = [a for a in report["artifacts"] if a["status"] == "ok" and a["top1"] is not None]
    assert {a["format"] for a in ran} == {"onnx", "executorch", "tvm", "tensorrt"}  # Core ML predicts on macOS only
    assert all(a["status"] == "ok" or a["status"].startswith("skipped: ") for a in report["artifacts"])


ONNX_ONLY = """
name = "{name}"
runtime = "onnxruntime"
precision = "fp32"
[exporters]
onnx = ["fp32"]
[budget]
flops_fraction = {fraction}
"""


def _digit_photos(root, seed=0):
    """The digits as colour PNGs of 8 to 12 px (each tinted, upscaled to a random size): real images, any size."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    for i, (img, label) in enumerate(zip(d.images[:600], d.target[:600])):
        tint = rng.uniform(0.4, 1.0, 3)
        rgb = (img[:, :, None] / 16.0 * tint * 255).astype(np.uint8)
        size = int(rng.integers(8, 13))
        folder = root / f"digit-{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).resize((size, size)).save(folder / f"{i}.png")
    return root


def test_a_folder_of_colour_photos_of_any_size_builds_and_checks(tmp_path):
    photos = _digit_photos(tmp_path / "photos")
    targets = []
    for name, fraction in (("small", 0.4), ("large", 0.9)):
        targets.append(tmp_path / f"{name}.toml")
        targets[-1].write_text(ONNX_ONLY.format(name=name, fraction=fraction))
    out = tmp_path / "build"
    args = ["build", "--targets", ",".join(map(str, targets)), "--data", str(photos), "--out", str(out), "--no-finetune", *FAST]
    code, _, stderr = run(*args)
    assert code == 2 and "different sizes" in stderr and "--image-size" in stderr and not out.exists()
    # resnet, the default for photos of 16 px and more: 10 of its epochs train faster than 6 of mbv3's
    code, stdout, stderr = run(*args, "--image-size", "8", "--precision", "fp32", "--space", "resnet", "--epochs", "10")
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    config = report["config"]
    assert config["data"]["input_shape"] == [3, 8, 8] and config["data"]["split"]["image_size"] == 8
    assert config["train"]["augment"] == "photo" and config["train"]["precision"] == "fp32"
    cached = list((out / "data").glob("images-*/*.u8"))
    assert {p.stem for p in cached} == {"train", "calib", "val", "test"}
    assert sum(p.stat().st_size for p in cached) == 600 * 3 * 8 * 8  # uint8, one byte per pixel, each image once
    assert all(m["top1"] > 0.5 for m in report["family"])  # far above chance (10%)
    code, stdout, stderr = run("check", str(out))
    assert code == 0, stderr
    assert "onnx-fp32.onnx" in stdout

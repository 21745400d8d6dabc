"""The catalogue of bad input: each case exits 2 with one line naming the problem and the fix, and writes nothing.

Cases that need a trained supernet or exported artifacts reuse the session's shared digits fixtures.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from regnas.cli import main
from regnas.errors import RegnasError
from regnas.io import atomic_path, ensure_writable_dir, write_json


def fails_with(capsys, argv: list[str], message: str) -> str:
    """Run the CLI; assert exit 2 and one stderr line containing `message`."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.strip().count("\n") == 0 and err.startswith("regnas"), err
    return err


def _target(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "toml,message",
    [
        ('name = "../../escape"\n[budget]\nflops = 1e6\n', "plain identifier"),
        ('name = ""\n[budget]\nflops = 1e6\n', "plain identifier"),
        ('name = "x"\n[budget]\nflops = nan\n', "positive number"),
        ('name = "x"\n[budget]\nlatency_ms = inf\n', "positive number"),
        ('name = "x"\nexporters = [["onnx"]]\n[budget]\nflops = 1e6\n', "list of names"),
        ('name = "x"\nlut = "missing.json"\n[budget]\nlatency_ms = 1\n', "does not exist"),
    ],
)
def test_bad_target_files(tmp_path, capsys, toml, message):
    out = tmp_path / "out"
    fails_with(capsys, ["build", "--targets", str(_target(tmp_path, toml)), "--out", str(out)], message)
    assert not out.exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["build", "--epochs", "0"], "argument --epochs: must be at least 1"),
        (["build", "--seed", "-1"], "argument --seed: must be 0 or more"),
        (["build", "--time-budget", "nan"], "argument --time-budget"),
        (["build", "--reward=-1,-1"], "a negative λ1 minimises accuracy"),
        (["build", "--reward", "nan,1"], "must be finite"),
        (["build", "--no-export", "--strict"], "--strict judges the artifact check"),
        (["build", "--finetune", "all"], "unknown --finetune 'all'; use joint"),
        (["build", "--finetune", "--targets", "phone"], "needs a family of 2 or more targets"),
        (["gate", "--reference", "a.npy", "--candidate", "b.npy", "--data", "digits", "--confidence", "0"], "strictly between 0 and 1"),
        (["gate", "--reference", "a.npy", "--candidate", "b.npy", "--data", "digits", "--confidence", "1.5"], "strictly between 0 and 1"),
        (["gate", "--reference", "a.npy", "--candidate", "b.npy", "--data", "digits", "--std", "nan"], "argument --std"),
        (["gate", "--reference", "a.npy", "--candidate", "b.npy", "--data", "digits", "--list", "-5"], "argument --list"),
        (["train", "--out", "x", "--lr", "0"], "argument --lr: must be positive"),
        (["build", "--val-size", "0"], "argument --val-size: must be at least 1"),
        (["build", "--val-size", "1000"], "use at most 539"),
        (["build", "--val-size", "300", "--supernet", "missing.safetensors"], "drop --val-size"),
        (["device", "emulate", "--port", "70000"], "argument --port: must be a TCP port"),
        (["device", "emulate", "--sysroot", "nowhere"], "run regnas device setup --sysroot nowhere first"),
    ],
)
def test_bad_options_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    if argv[0] == "build":
        argv = [*argv, "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as stop:
        code = main(argv)
        raise SystemExit(code)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0, err
    assert not (tmp_path / "out").exists()


def test_an_empty_class_folder_and_tiny_images_are_refused(tmp_path, capsys):
    folder = tmp_path / "images"
    for cls, n in (("cat", 3), ("dog", 0), ("eel", 3)):
        (folder / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / cls / f"{i}.png")
    fails_with(capsys, ["build", "--data", str(folder), "--out", str(tmp_path / "o")], "dog has no images")
    tiny = tmp_path / "tiny.npz"
    np.savez(tiny, x=np.random.default_rng(0).integers(0, 255, (60, 1, 1), np.uint8), y=np.arange(60) % 2)
    fails_with(capsys, ["build", "--data", str(tiny), "--out", str(tmp_path / "o")], "at least 4×4 px")
    fails_with(capsys, ["build", "--data", str(tiny), "--space", "vit", "--out", str(tmp_path / "o")], "at least 4×4 px")
    assert not (tmp_path / "o").exists()


def test_unwritable_outputs_fail_before_the_work(tmp_path, capsys):
    taken = tmp_path / "file"
    taken.write_text("x")
    fails_with(capsys, ["build", "--out", str(taken)], "is a file; pass a directory")
    fails_with(capsys, ["build", "--out", "/proc/regnas-out"], "cannot write to --out")
    fails_with(capsys, ["train", "--out", str(taken / "sub")], "cannot be created")
    args = ["gate", "--reference", "a.npy", "--candidate", "b.npy", "--data", "digits", "--json", str(tmp_path)]
    fails_with(capsys, args, "--json")
    with pytest.raises(RegnasError, match="it is a directory"), atomic_path(tmp_path):
        pass
    with pytest.raises(RegnasError, match="cannot write"), atomic_path("/proc/regnas.json"):
        pass
    assert ensure_writable_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_ragged_predictions_and_a_report_that_is_not_a_build(tmp_path, capsys):
    write_json(tmp_path / "a.json", [[0, 1], [2]])
    write_json(tmp_path / "b.json", [0, 1])
    fails_with(
        capsys, ["gate", "--reference", str(tmp_path / "a.json"), "--candidate", str(tmp_path / "b.json"), "--data", "digits"], "a.json"
    )
    for broken in ([], {"family": [], "baseline": {"family": [], "nesting": []}}, {"family": [], "nesting": [], "baseline": []}):
        write_json(tmp_path / "report.json", broken)
        fails_with(capsys, ["report", str(tmp_path)], "is not a regnas build report")
    write_json(tmp_path / "report.json", {"config": {}, "targets": ["phone"], "family": []})
    fails_with(capsys, ["check", str(tmp_path)], "is not a regnas build report")


def test_broken_supernet_metadata(digits_supernet, tmp_path, capsys):
    _, ckpt = digits_supernet
    tensors = load_file(str(ckpt / "supernet.safetensors"))
    for header, message in (("{not json", "corrupt regnas metadata"), ('{"space": "mbv3"}', "incomplete regnas metadata")):
        path = tmp_path / "bad.safetensors"
        save_file(tensors, str(path), metadata={"regnas": header})
        fails_with(capsys, ["build", "--supernet", str(path), "--out", str(tmp_path / "o")], message)


def test_a_checkpoint_from_another_split_or_data_is_refused(digits_supernet, tmp_path, capsys):
    _, ckpt = digits_supernet
    meta = json.loads((ckpt / "supernet.json").read_text())
    assert meta["split"]["seed"] == 0 and meta["split"]["digest"]
    tensors = load_file(str(ckpt / "supernet.safetensors"))
    meta["split"]["digest"] = "0" * 64  # as if it had been trained on another split of digits
    other = tmp_path / "other.safetensors"
    save_file(tensors, str(other), metadata={"regnas": json.dumps(meta)})
    fails_with(capsys, ["build", "--supernet", str(other), "--out", str(tmp_path / "o")], "other data or another split")
    assert not (tmp_path / "o").exists()


def test_a_time_budget_too_small_for_one_epoch_names_the_minimum(digits, tmp_path, capsys):
    fails_with(capsys, ["train", "--out", str(tmp_path / "t"), "--time-budget", "0.0001"], "raise --time-budget to at least 1")
    assert not (tmp_path / "t").exists()


def test_a_checkpoint_and_optimizer_state_from_different_epochs_are_refused(digits_supernet, digits, tmp_path):
    from regnas.train import TrainConfig, train_supernet

    net, ckpt = digits_supernet
    run = tmp_path / "run"
    shutil.copytree(ckpt, run)
    meta = dict(net.meta, epochs_done=1)  # the weights claim epoch 1, the optimizer state beside them epoch 2
    save_file(load_file(str(run / "supernet.safetensors")), str(run / "supernet.safetensors"), metadata={"regnas": json.dumps(meta)})
    with pytest.raises(RegnasError, match="from epoch 2 but the supernet beside it from epoch 1"):
        train_supernet(digits, run, TrainConfig(**net.meta["train"]))


# Sizes read from files are bounded before anything is allocated; files are size-checked before being read whole.


def test_bench_refuses_an_input_too_large_to_allocate(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 100000, 100000])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3, 100000, 100000])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["scores"])], "huge", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "huge.onnx"))
    fails_with(capsys, ["bench", str(tmp_path / "huge.onnx")], "GiB, more than the 1 GiB regnas bench allocates")


def test_bench_refuses_random_bytes_named_pte(tmp_path, capsys):
    (tmp_path / "noise.pte").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    fails_with(capsys, ["bench", str(tmp_path / "noise.pte")], "is not an ExecuTorch program")


def test_a_huge_lut_file_is_refused_before_it_is_read(tmp_path):
    from regnas.targets.lut import load_lut

    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(20 * 2**30)  # 20 GB, sparse: nothing written
    with pytest.raises(RegnasError, match="MiB regnas reads"):
        load_lut(big)


@pytest.mark.parametrize("width", [3_000_000, 26_000])
def test_a_member_declaring_a_huge_layer_is_refused_before_allocating(built_copy, capsys, width):
    out = built_copy
    arch = json.loads((out / "edge" / "arch.json").read_text())
    arch["config"]["stages"][0]["width"] = width
    (out / "edge" / "arch.json").write_text(json.dumps(arch))
    fails_with(capsys, ["check", str(out)], "space config")


def test_member_weights_hash_the_same_whatever_the_file_header_order(tmp_path):
    import subprocess
    import sys

    from regnas.io import tensors_sha256

    code = (
        "import sys, torch; from regnas.io import save_tensors; "
        "save_tensors(sys.argv[1], {'w': torch.arange(12.).reshape(3, 4), 'b': torch.ones(3), 'n': torch.tensor(7)}, "
        "{k: k for k in 'abcdefghijklmnop'})"
    )
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / f"{name}.safetensors")], check=True)
    assert tensors_sha256(tmp_path / "a.safetensors") == tensors_sha256(tmp_path / "b.safetensors")


def test_check_on_a_read_only_build_stops_before_running_anything(built_copy, capsys):
    import subprocess

    out = built_copy
    bound = subprocess.run(["mount", "--bind", str(out), str(out)], capture_output=True)
    try:
        proc = subprocess.run(["mount", "-o", "remount,bind,ro", str(out)], capture_output=True) if not bound.returncode else bound
        if proc.returncode:
            pytest.skip(f"cannot make a read-only mount here ({proc.stderr.decode().strip()}); needs root")
        fails_with(capsys, ["check", str(out)], "cannot write")
    finally:
        if not bound.returncode:
            subprocess.run(["umount", str(out)], check=False)

"""Atomic writes and hashing: a failure leaves nothing half-written, and directories hash by their contents."""

import pytest
import torch

from regnas.errors import RegnasError
from regnas.io import atomic_path, load_tensors, read_json, save_tensors, sha256_file, sha256_json, write_json


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert read_json(path) == {"a": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_directory_hash_covers_names_and_bytes(tmp_path):
    pkg = tmp_path / "m.mlpackage"
    (pkg / "Data").mkdir(parents=True)
    (pkg / "Data" / "w.bin").write_bytes(b"abc")
    first = sha256_file(pkg)
    (pkg / "Data" / "w.bin").write_bytes(b"abd")
    assert sha256_file(pkg) != first
    (pkg / "Data" / "w.bin").write_bytes(b"abc")
    (pkg / "Data" / "w.bin").rename(pkg / "Data" / "v.bin")
    assert sha256_file(pkg) != first
    assert sha256_json({"b": 1, "a": 2}) == sha256_json({"a": 2, "b": 1})


def test_tensors_round_trip_without_pickle_and_corrupt_files_are_one_line_errors(tmp_path):
    path = tmp_path / "w.safetensors"
    state = {"w": torch.arange(6.0).reshape(2, 3).t()}  # not contiguous: saved as such anyway
    save_tensors(path, state, {"k": "v"})
    assert torch.equal(load_tensors(path)["w"], state["w"])
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(RegnasError, match="not a readable safetensors"):
        load_tensors(path)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(RegnasError, match="is not valid JSON"):
        read_json(tmp_path / "bad.json")


# A full disk is a one-line exit 2 naming where, and leaves the previous state: measured on a real, small file system.


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a given size under tmp_path (root only; skipped where it cannot be mounted)."""
    import subprocess

    mounted = []

    def mount(kib: int):
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)], capture_output=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a small file system here ({proc.stderr.decode().strip()}); needs root")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


def _fill(disk, leave: int = 0):
    """Fill `disk` up to `leave` free bytes."""
    import shutil

    free = shutil.disk_usage(disk).free - leave
    if free > 0:
        (disk / "filler").write_bytes(b"\0" * free)


def test_atomic_writes_on_a_full_disk_are_one_line_and_keep_the_old_file(small_disk):
    disk = small_disk(64)
    write_json(disk / "out.json", {"a": 1})
    _fill(disk)
    with pytest.raises(RegnasError, match=r"no space left on the device writing .*out.json; free space in") as exc:
        write_json(disk / "out.json", {"a": "x" * 100000})
    assert "\n" not in str(exc.value)
    assert read_json(disk / "out.json") == {"a": 1} and sorted(p.name for p in disk.iterdir()) == ["filler", "out.json"]


@pytest.mark.parametrize("command", ["report", "check"])
def test_report_and_check_on_a_full_disk_exit_2_and_keep_the_report(built, small_disk, capsys, command):
    import shutil

    from regnas.cli import main

    size = sum(p.stat().st_size for p in built[0].rglob("*") if p.is_file())
    disk = small_disk(size // 1024 + 4096)
    out = disk / "build"
    shutil.copytree(built[0], out, ignore=shutil.ignore_patterns("report.html", "summary.md", ".regnas.lock"))
    before = (out / "report.json").read_bytes()
    _fill(disk)
    assert main([command, str(out)]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device" in err and err.count("\n") == 1, err
    assert (out / "report.json").read_bytes() == before and not (out / "report.html").exists()


def test_a_build_on_a_full_disk_exits_2(small_disk, digits_supernet, capsys):
    from regnas.cli import main

    _, ckpt = digits_supernet
    disk = small_disk(1024)
    _fill(disk, leave=200 * 1024)  # room for the search cache, not for a member's weights (megabytes)
    args = ["--supernet", str(ckpt / "supernet.safetensors"), "--population", "4", "--generations", "1", "--no-finetune", "--no-export"]
    assert main(["-q", "build", "--out", str(disk / "b"), *args]) == 2
    err = capsys.readouterr().err
    assert "no space left on the device" in err and err.count("\n") == 1, err
    assert not (disk / "b" / "report.json").exists()


def test_copy_into_place_replaces_a_file_or_a_folder_whole(tmp_path):
    from regnas.io import copy_into_place

    src_file, src_dir = tmp_path / "a.bin", tmp_path / "pkg"
    src_file.write_bytes(b"new")
    (src_dir / "sub").mkdir(parents=True)
    (src_dir / "sub" / "w").write_text("weights")
    dst = tmp_path / "out" / "artifact"
    copy_into_place(src_file, dst)  # a missing parent is made
    assert dst.read_bytes() == b"new"
    copy_into_place(src_dir, dst)  # a folder over a file
    assert (dst / "sub" / "w").read_text() == "weights"
    (dst / "stale").write_text("left from before")
    copy_into_place(src_dir, dst)  # a folder over a folder: nothing of the old one stays
    assert sorted(p.name for p in dst.iterdir()) == ["sub"]
    copy_into_place(src_file, dst)  # a file over a folder
    assert dst.read_bytes() == b"new"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["artifact"]  # no temporary left

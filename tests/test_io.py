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

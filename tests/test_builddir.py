"""The build directory's owner: members round-trip, reports are versioned, and a foreign directory is refused."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from regnas import builddir
from regnas.cli import main
from regnas.errors import RegnasError
from regnas.io import sha256_file, write_json
from regnas.spaces import create_space, space_class

ONE = {"target": "phone", "flops": 1, "params": 1, "top1": 0.5, "val_top1": 0.5, "nfr_vs_prev": None, "budget_flops": None, "arch": {}}
SECTION = {"family": [ONE], "nesting": [], "flip_matrix": [[0.0]]}
MINIMAL = {**SECTION, "baseline": SECTION, "targets": []}


def test_member_round_trip_is_the_same_network(tmp_path):
    space = create_space("mbv3", space_class("mbv3").default_config((1, 8, 8), 10))
    torch.manual_seed(0)
    net = space.build_subnet(space.smallest()).eval()
    digest = builddir.save_member(tmp_path / "phone", space, space.smallest(), net, "phone")
    assert builddir.is_member(tmp_path / "phone") and len(digest) == 64
    loaded_space, loaded = builddir.load_member(tmp_path / "phone")
    x = torch.randn(4, 1, 8, 8)
    assert loaded_space.config == space.config
    assert torch.equal(loaded(x), net(x))


def test_report_round_trip_stamps_and_checks_the_format(tmp_path):
    builddir.write_report(tmp_path, MINIMAL)
    assert builddir.is_build(tmp_path)
    assert builddir.read_report(tmp_path)["format"] == builddir.REPORT_FORMAT
    write_json(tmp_path / builddir.REPORT, {**MINIMAL, "format": "regnas-report/0"})
    with pytest.raises(RegnasError, match="report format 'regnas-report/0'"):
        builddir.read_report(tmp_path)


def test_missing_or_foreign_reports_are_one_line_errors(tmp_path):
    with pytest.raises(RegnasError, match="has no report.json; run regnas build"):
        builddir.read_report(tmp_path)
    write_json(tmp_path / builddir.REPORT, {"family": "not a list"})
    with pytest.raises(RegnasError, match="family is not a list"):
        builddir.open_build(tmp_path)


def test_an_unreadable_search_cache_is_no_cache(tmp_path):
    assert builddir.read_search_cache(tmp_path) is None
    (tmp_path / builddir.SEARCH_CACHE).write_text("{truncated")
    assert builddir.read_search_cache(tmp_path) is None
    builddir.write_search_cache(tmp_path, {"key": "k"})
    assert builddir.read_search_cache(tmp_path) == {"key": "k"}


def test_member_records_write_optional_keys_only_when_set_and_refuse_missing_ones():
    rec = builddir.MemberRecord("phone", {"depth": [2]}, 1000, 2000.0, 50, 0.9, None)
    obj = rec.to_json()
    assert "nfr_vs_prev" in obj and obj["nfr_vs_prev"] is None and "weights_sha256" not in obj and "same_as_previous" not in obj
    rec.weights_sha256 = "ab" * 32
    assert builddir.MemberRecord.from_json(rec.to_json(), "r.json") == rec
    with pytest.raises(RegnasError, match="r.json has a malformed member record"):
        builddir.MemberRecord.from_json({"target": "phone"}, "r.json")


# Every path read from a build resolves inside it, and nothing is opened or loaded before that and its hash are checked.


def _copy(built, tmp_path):
    out = tmp_path / "build"
    shutil.copytree(built[0], out, symlinks=True)
    return out, json.loads((out / "report.json").read_text())


def _library_with_a_constructor(tmp_path):
    """A shared library whose constructor writes a marker file when it is loaded."""
    import subprocess

    if shutil.which("gcc") is None:
        pytest.skip("no gcc to build the test library")
    marker = tmp_path / "constructor-ran"
    src = tmp_path / "evil.c"
    src.write_text(f'#include <stdio.h>\n__attribute__((constructor)) static void hit(void) {{ fclose(fopen("{marker}", "w")); }}\n')
    lib = tmp_path / "evil.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib, marker


def _tvm_artifact(report):
    return next(a for a in report["artifacts"] if a["format"] == "tvm" and a["sha256"])


@pytest.mark.parametrize("where", ["parent", "absolute", "elsewhere", "symlink"])
def test_check_refuses_artifacts_outside_the_build_and_loads_nothing(built, tmp_path, capsys, where):
    out, report = _copy(built, tmp_path)
    lib, marker = _library_with_a_constructor(tmp_path)
    artifact = _tvm_artifact(report)
    if where == "parent":
        artifact["path"] = "../../../../../../etc/passwd"
        artifact["sha256"] = sha256_file("/etc/passwd")
    elif where == "absolute":
        artifact["path"], artifact["sha256"], artifact["companions"] = str(lib), sha256_file(lib), {}
    elif where == "elsewhere":  # a member and its artifacts retargeted to a folder beside the build
        shutil.copytree(out / artifact["target"], tmp_path / "elsewhere")
        shutil.copy(lib, tmp_path / "elsewhere" / Path(artifact["path"]).name)
        for m in report["family"]:
            if m["target"] == artifact["target"]:
                m["target"] = "../elsewhere"
        artifact["target"], artifact["sha256"] = "../elsewhere", sha256_file(lib)
        artifact["path"] = f"../elsewhere/{Path(artifact['path']).name}"
    else:
        link = out / artifact["path"]
        link.unlink()
        link.symlink_to(lib)
        artifact["sha256"], artifact["companions"] = sha256_file(lib), {}
    write_json(out / "report.json", report)
    assert main(["check", str(out)]) == 2
    err = capsys.readouterr().err
    reasons = ("not a path inside the build", "leads outside the build", "target is not valid ('../elsewhere')")
    assert err.count("\n") == 1 and any(r in err for r in reasons), err
    assert not marker.exists()


def test_export_replaces_a_linked_package_without_touching_what_it_points_to(tmp_path):
    from regnas.exporters import replace_dir

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    build = tmp_path / "build"
    build.mkdir()
    (build / "model.mlpackage").symlink_to(outside, target_is_directory=True)
    new = tmp_path / "new"
    new.mkdir()
    (new / "Manifest.json").write_text("{}")
    replace_dir(new, build / "model.mlpackage")
    assert (build / "model.mlpackage" / "Manifest.json").is_file() and not (build / "model.mlpackage").is_symlink()
    assert (outside / "keep.txt").read_text() == "mine"


def test_a_build_directory_has_one_writer_at_a_time(tmp_path, capsys):
    import os

    out = tmp_path / "build"
    with builddir.locked(out, "build"):
        assert main(["build", "--out", str(out), "--epochs", "1"]) == 2
        err = capsys.readouterr().err
        assert f"{out} is being written by `regnas build` (pid {os.getpid()}" in err and err.count("\n") == 1
        assert main(["report", str(out)]) == 2  # not a build yet: refused before the lock is even asked for
    with builddir.locked(out, "check"):  # released when its holder is done (and by the OS when it dies)
        pass
    assert not out.exists()  # a lock that guarded nothing leaves nothing behind

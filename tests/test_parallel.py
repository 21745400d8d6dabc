"""Ray-parallel candidate evaluation: the same family as the serial search, and one-line errors for bad addresses."""

import socket

import pytest

from regnas.cli import main
from regnas.search import SearchConfig
from regnas.workflow.build import BuildOptions, build

pytest.importorskip("ray", reason="Ray is the regnas[ray] extra; install it to test parallel search")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_workers_find_the_serial_family(digits_supernet, tmp_path, caplog):
    _, ckpt = digits_supernet
    common = {
        "targets": "phone,server",
        "supernet": ckpt / "supernet.safetensors",
        "search": SearchConfig(population=4, generations=2),
        "export": False,
        "finetune_mode": "none",
    }
    serial = build(BuildOptions(out=tmp_path / "serial", **common))
    with caplog.at_level("INFO", logger="regnas"):
        parallel = build(BuildOptions(out=tmp_path / "ray", workers=2, **common))
    assert "search: evaluating candidates on 2 Ray workers" in caplog.text
    for kind in (lambda r: r["family"], lambda r: r["baseline"]["family"]):
        assert [m["arch"] for m in kind(parallel)] == [m["arch"] for m in kind(serial)]
        assert [m["top1"] for m in kind(parallel)] == [m["top1"] for m in kind(serial)]
    assert parallel["nesting"] == serial["nesting"]


def test_a_ray_address_that_does_not_answer_exits_2_before_writing(digits_supernet, tmp_path, capsys):
    _, ckpt = digits_supernet
    out = tmp_path / "out"
    args = ["build", "--supernet", str(ckpt / "supernet.safetensors"), "--no-export", "--out", str(out)]
    assert main([*args, "--ray-address", f"127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not answer" in err and "ray start --head" in err
    assert main([*args, "--ray-address", "nowhere"]) == 2
    assert "is not host:port" in capsys.readouterr().err
    assert not out.exists()

"""`torchrun --nproc_per_node 2 -m regnas train` on CPU (gloo): one writer, ranks in step, a resumable checkpoint."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from regnas.builddir import LOCK
from regnas.data import load_dataset
from regnas.distributed import World, init_world, state_digest
from regnas.train import load_checkpoint

TRAIN = ["-m", "regnas", "train", "--data", "digits", "--space", "resnet", "--batch-size", "32"]  # resnet: its steps take half mbv3's


def torchrun_cmd(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *TRAIN, *args]


ENV = {**{k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A 2-process, 2-epoch run killed once epoch 1 is saved: (checkpoint dir, what the run printed)."""
    out = tmp_path_factory.mktemp("ddp")
    log = out.parent / "ddp.log"
    with open(log, "w") as f:
        cmd = torchrun_cmd(2, "--out", str(out), "--epochs", "2")
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    try:
        deadline = time.time() + 300
        while "train: epoch 1/2 loss" not in log.read_text():
            assert p.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        kill_workers(str(out))
        p.wait()
    return out, log.read_text()


def kill_workers(marker: str) -> None:
    """SIGKILL every process whose command line names `marker`: torchrun may start its workers in sessions of their own."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    os.kill(int(proc.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass


def test_two_cpu_processes_train_and_only_rank_0_writes(interrupted):
    out, printed = interrupted
    assert sorted(f.name for f in out.iterdir()) == [LOCK, "supernet.json", "supernet.optim.safetensors", "supernet.safetensors"]
    assert printed.count("train: epoch 1/2 loss") == 1  # rank 1 stays silent
    meta = json.loads((out / "supernet.json").read_text())
    assert meta["world_size"] == 2 and meta["epochs_done"] == 1
    assert meta["history"][0]["loss"] > 0 and 0 < meta["history"][0]["train_top1"] <= 1
    net = load_checkpoint(out / "supernet.safetensors", "resnet", load_dataset("digits", 0))
    assert all(torch.isfinite(t).all() for t in net.model.state_dict().values() if t.is_floating_point())


def test_resuming_with_another_world_size_exits_2(interrupted, tmp_path):
    out, _ = interrupted
    shutil.copytree(out, tmp_path / "ckpt")
    p = subprocess.run([sys.executable, *TRAIN, "--out", str(tmp_path / "ckpt"), "--epochs", "2"], capture_output=True, text=True, env=ENV)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "trained by 2 process(es) but this run has 1" in p.stderr and "--nproc_per_node 2" in p.stderr
    assert json.loads((tmp_path / "ckpt" / "supernet.json").read_text())["epochs_done"] == 1


def test_a_killed_run_resumes_under_the_same_world_size(interrupted, tmp_path):
    out, _ = interrupted
    shutil.copytree(out, tmp_path / "ckpt")
    p = subprocess.run(torchrun_cmd(2, "--out", str(tmp_path / "ckpt"), "--epochs", "2"), capture_output=True, text=True, env=ENV)
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("resuming at epoch 2/2") == 1 and "train: epoch 1/2 loss" not in p.stderr
    assert p.stdout.count("wrote ") == 1
    meta = json.loads((tmp_path / "ckpt" / "supernet.json").read_text())
    assert meta["epochs_done"] == 2 and [h["epoch"] for h in meta["history"]] == [1, 2]


def test_a_single_process_is_a_world_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = init_world()
    assert (world.rank, world.size, world.main, world.distributed) == (0, 1, True, False)
    assert world.sum([1.5, 2.0]) == [1.5, 2.0]
    x = torch.arange(6)
    assert world.shard(x).tolist() == x.tolist() and World(1, 2).shard(x).tolist() == [1, 3, 5]


def test_half_configured_torchrun_environment_is_a_one_line_error(monkeypatch):
    from regnas.errors import RegnasError

    monkeypatch.setenv("WORLD_SIZE", "2")
    for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(RegnasError, match="RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT unset; launch with torchrun"):
        init_world()


def test_state_digest_sees_one_changed_weight():
    net = torch.nn.Linear(3, 2)
    before = state_digest(net)
    with torch.no_grad():
        net.weight[0, 0] += 1e-6
    assert state_digest(net) != before


def test_build_refuses_to_run_under_torchrun(monkeypatch, tmp_path):
    from regnas.errors import RegnasError
    from regnas.workflow.build import BuildOptions, build

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RegnasError, match="regnas build runs in one process"):
        build(BuildOptions(targets="phone,edge,server", out=tmp_path / "b"))
    assert not (tmp_path / "b").exists()

"""Shared fixtures: real digits data, a briefly trained supernet on it, and one end-to-end build through the CLI."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per xdist worker, for its CLI runs too: the workers already fill the cores.
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest
import torch
from filelock import FileLock

from regnas.data import load_dataset, to_float
from regnas.targets import BUILTIN_DIR
from regnas.train import TrainConfig, train_supernet

FAST = ["--epochs", "1", "--population", "6", "--generations", "2"]


def run(*args, cwd=None):
    """Run the installed entry point the way a user does; returns (code, stdout, stderr)."""
    p = subprocess.run(
        [sys.executable, "-m", "regnas", *args], capture_output=True, text=True, cwd=cwd, env={**os.environ, "PYTHONHASHSEED": "0"}
    )
    return p.returncode, p.stdout, p.stderr


def logit_gap(new, old, x):
    """Mean squared logit distance, the quantity focal distillation pulls down."""
    x = to_float(x)
    with torch.no_grad():
        return (new(x) - old(x)).pow(2).sum(1).mean().item()


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: a worker per core and one more, which computes while others wait on servers, subprocesses and the emulator."""
    return (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) + 1


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits", seed=0)


def shared_root(tmp_path_factory) -> Path:
    """Where fixtures built once per run live: the run's common temp directory under xdist, so its workers share them."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def digits_supernet(digits, tmp_path_factory):
    """An mbv3 supernet trained for two short epochs on digits (enough for real, non-random predictions). Trained
    once per run, by the first xdist worker to need it; the others resume its finished checkpoint. Tests only read
    its folder."""
    out = shared_root(tmp_path_factory) / "supernet"
    with FileLock(str(out) + ".lock"):
        return train_supernet(digits, out, TrainConfig(epochs=2, batch_size=32, seed=0), "mbv3"), out


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """The built-in targets, with a lax flip limit: a 1-epoch supernet's int8 models flip often, and searching
    quantization options for each is tested in tests/exporters, not here. Without the fine-tune (70 s on
    digits): tests/test_build.py runs it, and its reuse, on a short schedule. Built once per run: xdist workers
    share it through the run's common temp directory, the first to need it building it under a lock. Tests that
    write into it use `built_copy`."""
    root = shared_root(tmp_path_factory)
    out, outcome = root / "built", root / "built.json"
    with FileLock(str(root / "built.lock")):
        if not outcome.is_file():
            lax = root / "lax-targets"
            lax.mkdir(exist_ok=True)
            for toml in BUILTIN_DIR.glob("*.toml"):
                (lax / toml.name).write_text(toml.read_text().replace("max_nfr_vs_fp32 = 0.002", "max_nfr_vs_fp32 = 0.5"))
            result = run("build", "--targets", "phone,edge,server", "--targets-dir", str(lax), "--out", str(out), "--no-finetune", *FAST)
            outcome.write_text(json.dumps(result))
    code, stdout, stderr = json.loads(outcome.read_text())
    assert (out / "report.json").is_file(), stderr
    report = json.loads((out / "report.json").read_text())
    assert code == (0 if report["check"]["passed"] else 1), stderr
    return out, stdout, stderr


@pytest.fixture
def built_copy(built, tmp_path):
    """A copy of the shared build, for tests that write into it (a check, a re-rendered report)."""
    out = tmp_path / "build"
    shutil.copytree(built[0], out)
    return out


def pytest_collection_modifyitems(items):
    """Order for xdist (`--dist worksteal`: each worker takes a run of tests in this order): the first file on the
    shared build comes first, so one worker builds it while the others run files that do not need it; the other
    files on it come last, when it is built."""
    on_build = [i.path for i in items if "built" in i.fixturenames]
    later = set(on_build) - set(on_build[:1])
    items.sort(key=lambda i: i.path in later)


@pytest.fixture(autouse=True)
def _regnas_logs_reach_caplog():
    """`regnas.logs.configure` (run by in-process CLI calls) stops propagation; tests read records through caplog."""
    logging.getLogger("regnas").propagate = True
    yield

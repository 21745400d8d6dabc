"""The runtime contract, for every registered runtime: what it declares, and what a loaded artifact does.

Each runtime runs an fp32 artifact that its own exporter wrote from a small conv net. A runtime that
cannot run on this machine (Core ML off macOS, TensorRT without a GPU) must say why through
`unavailable_reason` and raise `Unavailable` on load; those cases are skipped with that reason.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from regnas.errors import RegnasError, Unavailable
from regnas.exporters import ExportJob, create_exporter, exporter_names
from regnas.runtimes import load_runtime, runtime_class, runtime_for, runtime_names

SHAPE = (1, 8, 8)
CLASSES = 5


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, CLASSES)
    ).eval()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """runtime name → (path of an artifact it runs, or None, and the export's status)."""
    net, out = _net(), {}
    calib = np.random.default_rng(0).random((16, *SHAPE), dtype=np.float32)
    for name in runtime_names():
        exporter = create_exporter(runtime_class(name).exporter)
        precision = "fp32" if "fp32" in exporter.precisions else exporter.precisions[0]
        work = tmp_path_factory.mktemp(name)
        (work / "scratch").mkdir()
        runs = exporter.export(ExportJob(net, SHAPE, calib, work, work / "scratch"), precision)
        reads = runtime_class(name)  # a runtime that is not its suffix's usual reader runs that reader's files
        mine = [e for e in runs if e.runtime == name or (not reads.by_suffix and e.path.name.endswith(reads.suffixes))]
        ok = [e for e in mine if e.status == "ok"]
        out[name] = (ok[0].path, "ok") if ok else (None, mine[0].status if mine else "not exported")
    return net, out


@pytest.mark.parametrize("name", runtime_names())
def test_runtime_declares_what_callers_ask_it(name):
    cls = runtime_class(name)
    assert cls.name == name and cls.suffixes and all(s.startswith(".") for s in cls.suffixes)
    assert cls.exporter in exporter_names() and cls.max_batch >= 1
    assert cls.package_version().startswith(cls.package) or cls.package_version() == "not installed"
    reason = cls.unavailable_reason()
    assert reason is None or (isinstance(reason, str) and reason)


@pytest.mark.parametrize("name", runtime_names())
def test_runtime_runs_its_exporters_artifact_like_torch(name, artifacts):
    net, built = artifacts
    path, status = built[name]
    cls = runtime_class(name)
    if path is None:
        assert status.startswith("skipped: "), status  # an exporter that cannot build here says why
        pytest.skip(f"{name}: no artifact on this machine ({status})")
    if not cls.runs_here(path):
        with pytest.raises(Unavailable):
            load_runtime(name, path)
        pytest.skip(f"{name}: {cls.unavailable_reason() or 'runs on a device over RPC only'}")
    rt = load_runtime(name, path)
    usual = runtime_for(path)  # the suffix leads back to the same runtime, or to the usual reader of its files
    assert type(usual) is cls if cls.by_suffix else (usual.by_suffix and usual.exporter == cls.exporter)
    assert len(rt.input_shape) == 3 and all(d in (None, want) for d, want in zip(rt.input_shape, SHAPE))
    x = np.random.default_rng(1).random((cls.max_batch + 2, *SHAPE), dtype=np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    scores = np.concatenate([rt.scores(x[i : i + cls.max_batch]) for i in range(0, len(x), cls.max_batch)])
    assert scores.shape == (len(x), CLASSES) and np.allclose(scores, ref, atol=1e-4)
    assert np.array_equal(rt.predict(x), ref.argmax(1))  # predict batches past max_batch itself
    ms = rt.time_ms(x[:1], warmup=1, repeats=3)
    assert ms.shape == (3,) and (ms > 0).all()
    assert rt.version() != "unknown"
    assert all(p.is_file() for p in cls.companions(path))


@pytest.mark.parametrize("name", runtime_names())
def test_runtime_refuses_a_truncated_artifact_in_one_line(name, artifacts, tmp_path):
    _, built = artifacts
    path, _ = built[name]
    cls = runtime_class(name)
    if path is None or not cls.runs_here(path) or not path.is_file():
        pytest.skip(f"{name}: no single-file artifact that runs on this machine")
    bad = tmp_path / path.name
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(RegnasError) as err:
        load_runtime(name, bad).predict(np.zeros((1, *SHAPE), dtype=np.float32))
    assert "\n" not in str(err.value) and str(bad) in str(err.value)

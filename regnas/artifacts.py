"""Export a built family to every format its targets ask for, with flip-aware quantization.

Each target's member is exported by the exporters its TOML names, at their precisions. A
quantized artifact whose predictions on val (never test) flip more than the target's
`max_nfr_vs_fp32` against the fp32 model is re-quantized over its exporter's option grid, and
the option with the fewest flips (then the best top-1) is kept; before and after are recorded.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from regnas.data import Dataset
from regnas.errors import RegnasError, Unavailable
from regnas.evaluate import predict
from regnas.exporters import Exported, Exporter, ExportJob, create_exporter
from regnas.family import load_member
from regnas.flips import nfr, top1
from regnas.io import sha256_file
from regnas.runtimes import load_runtime
from regnas.targets import Target


@dataclass
class Artifact:
    """One exported build of one family member, as listed in report.json's `artifacts`."""

    target: str
    format: str
    precision: str
    path: str
    sha256: str | None
    runtime: str
    status: str
    top1: float | None = None
    nfr_vs_fp32: float | None = None
    nfr_vs_prev: float | None = None
    command: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return f"{self.target}/{Path(self.path).name}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Artifact:
        try:
            return cls(**obj)
        except TypeError as exc:
            raise RegnasError(f"report.json has a malformed artifact entry ({exc}); re-run regnas export") from exc


def _val_flips(exported: Exported, x: np.ndarray, fp32: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    preds = load_runtime(exported.runtime, exported.path).predict(x)
    return {"nfr_val": nfr(fp32, preds, labels), "top1_val": top1(preds, labels)}


def flip_aware(
    exporter: Exporter, job: ExportJob, precision: str, target: Target, val: tuple[np.ndarray, np.ndarray, np.ndarray], log: Callable
) -> tuple[list[Exported], dict[str, Any] | None]:
    """Export with the default options; if the runnable artifact flips too much on val, search the grid and keep the best."""
    grid = exporter.option_grid(precision)
    exported = exporter.export(job, precision, grid[0])
    runnable = [e for e in exported if e.status == "ok" and e.runtime in ("onnxruntime", "executorch")]
    if len(grid) == 1 or not runnable:
        return exported, None
    x, fp32, labels = val
    before = {"options": runnable[0].options, **_val_flips(runnable[0], x, fp32, labels)}
    record = {"selected_on": "val", "threshold": target.max_nfr_vs_fp32, "before": before, "after": before, "tried": [before]}
    if before["nfr_val"] <= target.max_nfr_vs_fp32:
        return exported, record
    log(f"export: {target.name} {exporter.name}-{precision} flips {before['nfr_val']:.2%} of val; searching quantization options")
    best, best_opts = before, grid[0]
    for opts in grid[1:]:
        trial = exporter.export(job, precision, opts)
        run = next(e for e in trial if e.status == "ok" and e.runtime == runnable[0].runtime)
        score = {"options": run.options, **_val_flips(run, x, fp32, labels)}
        record["tried"].append(score)
        if (score["nfr_val"], -score["top1_val"]) < (best["nfr_val"], -best["top1_val"]):
            best, best_opts = score, opts
    exported = exporter.export(job, precision, best_opts)
    record["after"] = best
    log(f"export: {target.name} {exporter.name}-{precision} kept {best['options']} ({best['nfr_val']:.2%} val flips)")
    return exported, record


def export_family(out: Path, targets: list[Target], data: Dataset, log: Callable = print) -> list[Artifact]:
    """Export every member under `out/<target>/` with its target's exporters; artifacts in target order."""
    for t in targets:
        for name in t.exporters:
            create_exporter(name).check_available()
    calib = data["calib"].x.numpy()
    val_x, val_y = data["val"].x, data["val"].y.numpy()
    artifacts: list[Artifact] = []
    for target in targets:
        _, net = load_member(out / target.name)
        fp32_val = predict(net, val_x)
        with tempfile.TemporaryDirectory() as scratch:
            job = ExportJob(net, tuple(val_x.shape[1:]), calib, out / target.name, Path(scratch))
            for name, precisions in target.exporters.items():
                exporter = create_exporter(name)
                for precision in precisions:
                    log(f"export: {target.name} {name} {precision}")
                    exported, quant = flip_aware(exporter, job, precision, target, (val_x.numpy(), fp32_val, val_y), log)
                    for e in exported:
                        written = e.status == "ok" and e.path.exists()
                        artifacts.append(
                            Artifact(
                                target=target.name,
                                format=e.format,
                                precision=e.precision,
                                path=str(e.path.relative_to(out)),
                                sha256=sha256_file(e.path) if written else None,
                                runtime=e.runtime,
                                status=e.status,
                                command=e.command,
                                options=e.options,
                                quantization=quant if e.runtime in ("onnxruntime", "executorch") else None,
                            )
                        )
    return artifacts


def verify_artifact(out: Path, artifact: Artifact) -> None:
    """Fail unless an exported artifact is on disk with the bytes report.json recorded."""
    if artifact.sha256 is None:
        return
    path = out / artifact.path
    if not path.exists():
        raise RegnasError(f"artifact {artifact.label} is missing ({path}); re-run regnas export {out}")
    if sha256_file(path) != artifact.sha256:
        raise RegnasError(f"artifact {artifact.label} no longer matches its sha256 in report.json; re-run regnas export {out}")


def open_artifact(out: Path, artifact: Artifact, threads: int = 1, remote=None):
    """Load an artifact's runtime after verifying its bytes; Unavailable when it cannot run here."""
    if artifact.status != "ok" and artifact.sha256 is None:
        raise Unavailable(artifact.status.removeprefix("skipped: "))
    verify_artifact(out, artifact)
    return load_runtime(artifact.runtime, out / artifact.path, threads, remote)

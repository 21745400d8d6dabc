"""The post-export flip check: run every artifact on the test split and count what export cost.

For each artifact that runs here (cross-compiled TVM libraries: on the RPC device): top-1, NFR against its own fp32 model
(the member as built), NFR against the previous member's artifact of the same format and
precision, and a flip matrix across all of them. An artifact above its target's
`max_nfr_vs_fp32` fails the check (exit 1). Artifacts whose bytes changed since export are bad
input (exit 2); ones that cannot run here are `skipped: <reason>`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from regnas.artifacts import Artifact, open_artifact, verify_artifact
from regnas.data import Dataset, load_dataset
from regnas.errors import RegnasError, Unavailable
from regnas.evaluate import predict
from regnas.family import load_member
from regnas.flips import flip_matrix, nfr, top1
from regnas.io import read_json, write_json
from regnas.runtimes import Remote
from regnas.runtimes.tvm import library_meta
from regnas.targets import Target, parse_target


@dataclass
class CheckResult:
    """Checked artifacts, the cross-artifact flip matrix and the failures (empty when passed)."""

    artifacts: list[Artifact]
    matrix: dict[str, Any]
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    def section(self) -> dict[str, Any]:
        return {"split": "test", "passed": self.passed, "failures": self.failures, "flip_matrix": self.matrix}


def load_build(out: Path) -> tuple[dict[str, Any], list[Target], Dataset]:
    """A build directory's report, targets (budget order) and dataset, checked for consistency."""
    report = read_json(out / "report.json", "build report")
    try:
        cfg = report["config"]
        targets = [parse_target(t, f"{out / 'report.json'} target {t.get('name')}") for t in report["targets"]]
        data = load_dataset(cfg["data"].get("spec", cfg["data"]["name"]), cfg["seed"])
        digest = cfg["data"]["digest"]
    except (KeyError, TypeError) as exc:
        raise RegnasError(f"{out / 'report.json'} is not a regnas build report (missing {exc}); re-run regnas build") from exc
    if data.digest != digest:
        raise RegnasError(f"the data behind {out} changed since the build ({cfg['data']['spec']}); re-run regnas build")
    return report, targets, data


def check(
    out: Path, artifacts: list[Artifact], targets: list[Target], data: Dataset, remote: Remote | None = None, log: Callable = print
) -> CheckResult:
    """Run every artifact on the test split and compare it with its fp32 model and the previous member."""
    test = data["test"]
    labels = test.y.numpy()
    x = test.x.numpy()
    for a in artifacts:
        verify_artifact(out, a)
    limits = {t.name: t.max_nfr_vs_fp32 for t in targets}
    order = [t.name for t in targets]
    fp32 = {name: predict(load_member(out / name)[1], test.x) for name in {a.target for a in artifacts}}
    preds: dict[int, np.ndarray] = {}
    failures = []
    for i, a in enumerate(artifacts):
        device = remote if a.runtime == "tvm" and not library_meta(out / a.path).get("host", True) else None
        try:
            rt = open_artifact(out, a, remote=device)
            p = rt.predict(x)
        except Unavailable as exc:
            a.status, a.top1, a.nfr_vs_fp32, a.nfr_vs_prev = f"skipped: {exc}", None, None, None
            log(f"check: {a.label} skipped: {exc}")
            continue
        preds[i] = p
        a.status, a.top1, a.nfr_vs_fp32 = "ok", top1(p, labels), nfr(fp32[a.target], p, labels)
        log(f"check: {a.label} top-1 {a.top1:.2%}, NFR vs fp32 {a.nfr_vs_fp32:.2%}")
        if a.nfr_vs_fp32 > limits.get(a.target, 1.0):
            failures.append(f"{a.label}: NFR vs its fp32 model {a.nfr_vs_fp32:.2%} exceeds max_nfr_vs_fp32 {limits[a.target]:.2%}")
    for i, a in enumerate(artifacts):
        a.nfr_vs_prev = None
        if i not in preds or a.target not in order or order.index(a.target) == 0:
            continue
        prev = order[order.index(a.target) - 1]
        match = [j for j, b in enumerate(artifacts) if b.target == prev and Path(b.path).name == Path(a.path).name and j in preds]
        if match:
            a.nfr_vs_prev = nfr(preds[match[0]], preds[i], labels)
    ran = sorted(preds)
    matrix = {"labels": [artifacts[i].label for i in ran], "nfr": flip_matrix([preds[i] for i in ran], labels)}
    return CheckResult(artifacts, matrix, failures)


def save_check(out: Path, report: dict[str, Any], result: CheckResult) -> dict[str, Any]:
    """Write the artifacts and check section into report.json (atomically) and refresh the HTML and markdown."""
    from regnas.report import write_reports

    report["artifacts"] = [a.to_json() for a in result.artifacts]
    report["check"] = result.section()
    write_json(out / "report.json", report)
    write_reports(out, report)
    return report

"""The post-export flip check: run every artifact on the test split and count what export cost.

For each artifact that runs here (cross-compiled TVM libraries: on the RPC device): top-1, NFR against its own fp32 model
(the member as built) with its exact binomial interval, NFR against the previous member's
artifact of the same format and precision, and a flip matrix across all of them. The verdict
carries the uncertainty: `failed` when the interval lies above the target's `max_nfr_vs_fp32`
(exit 1), `passed` when it lies within, otherwise `inconclusive: needs about N test images`.
Artifacts whose bytes changed since export are bad input (exit 2); ones that cannot run here are
`skipped: <reason>`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from regnas.artifacts import PREDICT_THREADS, artifact_path, export_family, open_artifact, verify_artifact
from regnas.builddir import ArtifactRecord, BuildReport, load_member, locked, member_dir, open_build, write_report
from regnas.data import Dataset
from regnas.errors import RegnasError, Unavailable
from regnas.evaluate import predict
from regnas.flips import flip_matrix, judge, negative_flips, nfr, top1
from regnas.runtimes import Remote, runtime_class
from regnas.targets import Target

logger = logging.getLogger(__name__)

CONFIDENCE = 0.95
"""Confidence of each artifact's two-sided NFR interval."""


@dataclass
class CheckResult:
    """Checked artifacts, the cross-artifact flip matrix and the failures (empty when passed)."""

    artifacts: list[ArtifactRecord]
    matrix: dict[str, Any]
    failures: list[str]
    inconclusive: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    def section(self) -> dict[str, Any]:
        return {
            "split": "test",
            "confidence": CONFIDENCE,
            "passed": self.passed,
            "failures": self.failures,
            "inconclusive": self.inconclusive,
            "flip_matrix": self.matrix,
        }


def check(out: Path, artifacts: list[ArtifactRecord], targets: list[Target], data: Dataset, remote: Remote | None = None) -> CheckResult:
    """Run every artifact on the test split and compare it with its fp32 model and the previous member."""
    test = data["test"]
    labels = test.y.numpy()
    x = test.x.numpy()
    for a in artifacts:
        verify_artifact(out, a)
    limits = {t.name: t.max_nfr_vs_fp32 for t in targets}
    order = [t.name for t in targets]
    fp32 = {name: predict(load_member(member_dir(out, name))[1], test.x) for name in {a.target for a in artifacts}}
    preds: dict[int, np.ndarray] = {}
    failures, inconclusive = [], []
    for i, a in enumerate(artifacts):
        device = remote if a.sha256 and runtime_class(a.runtime).needs_device(artifact_path(out, a)) else None
        a.device = None
        try:
            rt = open_artifact(out, a, PREDICT_THREADS, remote=device)
            p = rt.predict(x)
        except Unavailable as exc:
            a.status, a.top1, a.nfr_vs_fp32, a.nfr_vs_prev, a.flips, a.nfr_interval, a.verdict = f"skipped: {exc}", *[None] * 6
            logger.info(f"check: {a.label} skipped: {exc}")
            continue
        preds[i] = p
        a.device = None if device is None else str(device) + (f" (emulated: {rt.emulated})" if rt.emulated else "")
        a.status, a.top1, a.nfr_vs_fp32 = "ok", top1(p, labels), nfr(fp32[a.target], p, labels)
        v = judge(int(negative_flips(fp32[a.target], p, labels).sum()), len(labels), limits.get(a.target, 1.0), CONFIDENCE)
        a.flips, a.nfr_interval, a.verdict = v.flips, [v.low, v.high], v.status
        logger.info(f"check: {a.label} top-1 {a.top1:.2%}, {v.flips} flips vs fp32 ({a.nfr_vs_fp32:.2%}, {v.status})")
        where = f"{a.label}: {v.flips} flips in {v.n} test images vs its fp32 model, NFR {a.nfr_vs_fp32:.2%} "
        where += f"[{v.low:.2%}, {v.high:.2%}] against max_nfr_vs_fp32 {v.limit:.2%}"
        if v.status == "failed":
            failures.append(where)
        elif not v.decided:
            inconclusive.append(f"{where}: {v.status.removeprefix('inconclusive: ')}")
    compare_with_host(artifacts, preds, labels)
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
    return CheckResult(artifacts, matrix, failures, inconclusive)


def _same_graph(a: ArtifactRecord, b: ArtifactRecord) -> bool:
    source = a.options.get("compiled_from_sha256")
    return (a.target, a.format, a.precision, source) == (b.target, b.format, b.precision, b.options.get("compiled_from_sha256"))


def compare_with_host(artifacts: list[ArtifactRecord], preds: dict[int, np.ndarray], labels: np.ndarray) -> None:
    """Set `vs_host` of each artifact that ran on a device: its flips against this host's build of the same graph."""
    for i, a in enumerate(artifacts):
        host = [j for j, b in enumerate(artifacts) if j in preds and b.device is None and j != i and _same_graph(a, b)]
        if a.device is None or i not in preds or not host:
            a.vs_host = None
            continue
        ref = preds[host[0]]
        a.vs_host = {
            "artifact": artifacts[host[0]].label,
            "flips": int(negative_flips(ref, preds[i], labels).sum()),
            "disagreements": int((ref != preds[i]).sum()),
        }
        vs = a.vs_host
        logger.info(f"check: {a.label} on {a.device}: {vs['flips']} flips, {vs['disagreements']} disagreements vs {vs['artifact']}")


def check_build(out: Path, remote: Remote | None = None, export: bool = False) -> BuildReport:
    """Check a build's artifacts (exporting them first when asked), record the result in its report and return it."""
    with locked(out, "export" if export else "check"):
        return _check_build(out, remote, export)


def _check_build(out: Path, remote: Remote | None, export: bool) -> BuildReport:
    build = open_build(out)
    report, targets, data = build.report, build.targets, build.data
    if export:
        artifacts = export_family(out, targets, data)
    elif report.get("artifacts"):
        artifacts = [ArtifactRecord.from_json(a) for a in report["artifacts"]]
    else:
        raise RegnasError(f"{out} has no artifacts; run regnas export {out} first")
    return save_check(out, report, check(out, artifacts, targets, data, remote))


def save_check(out: Path, report: dict[str, Any], result: CheckResult) -> BuildReport:
    """Write the artifacts and check section into report.json (atomically), refresh the HTML and markdown, and return
    the report as records."""
    from regnas.report import write_reports

    report["artifacts"] = [a.to_json() for a in result.artifacts]
    report["check"] = result.section()
    write_report(out, report)
    records = BuildReport.from_json(out, report)
    write_reports(records)
    return records

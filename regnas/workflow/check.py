"""The post-export flip check: run every artifact on the test split and count what export cost.

For each artifact that runs here (cross-compiled TVM libraries: on the RPC device): top-1, NFR against its own fp32 model
(the member as built) with its exact binomial interval, NFR against the previous member's
artifact of the same format and precision, and a flip matrix across all of them. The verdict
carries the uncertainty: `failed` when the interval lies above the target's `max_nfr_vs_fp32`
(exit 1), `passed` when it lies within, otherwise `inconclusive: needs about N test images`.
Artifacts whose bytes changed since export are bad input (exit 2); ones that cannot run here are
`skipped: <reason>`.

An artifact is judged the same way in every runtime its target deploys it with (`runtimes`: ONNX files
in ONNX Runtime and OpenVINO), and, with `--rpc`, on the device when its target is of the device's
architecture (the phone's and edge's artifacts on an aarch64 board or `regnas device emulate`), where
ARM kernels round differently. Each such run also records how it agrees with the artifact's own run
here: flips, disagreements, and the true classes of the images they disagree on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from regnas.artifacts import PREDICT_THREADS, artifact_path, export_family, open_artifact, verify_artifact
from regnas.builddir import ArtifactRecord, BuildReport, RunRecord, load_member, locked, member_dir, open_build, write_report
from regnas.data import Dataset
from regnas.errors import RegnasError, Unavailable
from regnas.evaluate import predict
from regnas.flips import flip_matrix, judge, negative_flips, nfr, top1
from regnas.runtimes import Remote, Runtime, load_runtime, runtime_class
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


@dataclass
class _Judged:
    """What the check found so far: failure and inconclusive lines, and the data every run is judged on."""

    labels: np.ndarray
    classes: list[str]
    failures: list[str] = field(default_factory=list)
    inconclusive: list[str] = field(default_factory=list)

    def judge(self, rec: ArtifactRecord | RunRecord, label: str, p: np.ndarray, fp32: np.ndarray, limit: float) -> None:
        """Set a run's top-1, NFR against its fp32 model, interval and verdict, and note a failed or undecided one."""
        labels = self.labels
        rec.top1, rec.nfr_vs_fp32 = top1(p, labels), nfr(fp32, p, labels)
        v = judge(int(negative_flips(fp32, p, labels).sum()), len(labels), limit, CONFIDENCE)
        rec.flips, rec.nfr_interval, rec.verdict = v.flips, [v.low, v.high], v.status
        logger.info(f"check: {label} top-1 {rec.top1:.2%}, {v.flips} flips vs fp32 ({rec.nfr_vs_fp32:.2%}, {v.status})")
        where = f"{label}: {v.flips} flips in {v.n} test images vs its fp32 model, NFR {rec.nfr_vs_fp32:.2%} "
        where += f"[{v.low:.2%}, {v.high:.2%}] against max_nfr_vs_fp32 {v.limit:.2%}"
        if v.status == "failed":
            self.failures.append(where)
        elif not v.decided:
            self.inconclusive.append(f"{where}: {v.status.removeprefix('inconclusive: ')}")

    def versus(self, artifact: str, ref: np.ndarray, p: np.ndarray) -> dict[str, Any]:
        """How run `p` agrees with `ref` (the same graph's run named `artifact`): flips, disagreements and their classes."""
        differ = ref != p
        counts = np.bincount(self.labels[differ], minlength=len(self.classes))
        classes = {self.classes[c]: int(n) for c, n in sorted(enumerate(counts), key=lambda cn: -cn[1]) if n}
        flips = int(negative_flips(ref, p, self.labels).sum())
        return {"artifact": artifact, "flips": flips, "disagreements": int(differ.sum()), "classes": classes}


@dataclass(frozen=True)
class _Device:
    """The RPC device the check runs aarch64 targets' artifacts on: its address, CPU architecture and emulation, or why it
    cannot be reached (its runs are then skipped with that reason, and this host's results stand)."""

    remote: Remote
    arch: str | None = None
    emulated: str | None = None
    unreachable: str | None = None

    @classmethod
    def ask(cls, remote: Remote) -> _Device:
        from regnas.runtimes.tvm import connect, emulation, remote_arch

        try:
            session = connect(remote)
        except RegnasError as exc:
            logger.warning(f"check: {exc}; the device's runs are skipped")
            return cls(remote, unreachable=str(exc))
        return cls(remote, remote_arch(session), emulation(session))

    def serves(self, target: Target) -> bool:
        """Whether the target's artifacts run on this device (a device that does not say its arch serves every target with one)."""
        return target.arch is not None and self.arch in (None, target.arch)

    def __str__(self) -> str:
        return str(self.remote) + (f" (emulated: {self.emulated})" if self.emulated else "")


def check(out: Path, artifacts: list[ArtifactRecord], targets: list[Target], data: Dataset, remote: Remote | None = None) -> CheckResult:
    """Run every artifact on the test split and compare it with its fp32 model and the previous member; then run it in the
    other runtimes its target names, and on the RPC device when its target is of the device's architecture."""
    test = data["test"]
    x = test.x.numpy()
    for a in artifacts:
        verify_artifact(out, a)
    by_name = {t.name: t for t in targets}
    order = [t.name for t in targets]
    fp32 = {name: predict(load_member(member_dir(out, name))[1], test.x) for name in {a.target for a in artifacts}}
    device = _Device.ask(remote) if remote is not None else None
    found = _Judged(test.y.numpy(), list(data.class_names))
    preds: dict[int, np.ndarray] = {}
    for i, a in enumerate(artifacts):
        limit = by_name[a.target].max_nfr_vs_fp32 if a.target in by_name else 1.0
        a.runs = []
        p = _own_run(out, a, device, x)
        if p is None:
            continue
        preds[i] = p
        found.judge(a, a.label, p, fp32[a.target], limit)
        if a.target in by_name:
            more = _runs(a, by_name[a.target], device)
            a.runs = [_other_run(out, a, runtime, where, x, p, fp32[a.target], limit, found) for runtime, where in more]
    compare_with_host(artifacts, preds, found)
    for i, a in enumerate(artifacts):
        a.nfr_vs_prev = None
        if i not in preds or a.target not in order or order.index(a.target) == 0:
            continue
        prev = order[order.index(a.target) - 1]
        match = [j for j, b in enumerate(artifacts) if b.target == prev and Path(b.path).name == Path(a.path).name and j in preds]
        if match:
            a.nfr_vs_prev = nfr(preds[match[0]], preds[i], found.labels)
    ran = sorted(preds)
    matrix = {"labels": [artifacts[i].label for i in ran], "nfr": flip_matrix([preds[i] for i in ran], found.labels)}
    return CheckResult(artifacts, matrix, found.failures, found.inconclusive)


def _own_run(out: Path, a: ArtifactRecord, device: _Device | None, x: np.ndarray) -> np.ndarray | None:
    """The artifact's predictions in its own runtime (a library built for another CPU: on the RPC device), or None with
    its status saying why it cannot run (a device run that cannot start says why, and the check goes on)."""
    on = device if device and a.sha256 and runtime_class(a.runtime).needs_device(artifact_path(out, a)) else None
    remote = None if on is None else on.remote
    a.device = a.seconds = None
    try:
        p, rt, a.seconds = _predict(lambda: open_artifact(out, a, PREDICT_THREADS, remote=remote), x, on)
    except Unavailable as exc:
        a.status, a.top1, a.nfr_vs_fp32, a.nfr_vs_prev, a.flips, a.nfr_interval, a.verdict = f"skipped: {exc}", *[None] * 6
        logger.info(f"check: {a.label} skipped: {exc}")
        return None
    a.status = "ok"
    a.device = None if remote is None else str(remote) + (f" (emulated: {rt.emulated})" if rt.emulated else "")
    return p


def _predict(load: Callable[[], Runtime], x: np.ndarray, device: _Device | None) -> tuple[np.ndarray, Runtime, float]:
    """Predictions of the runtime `load` opens (closed after: a device serves one session at a time) and the seconds they
    took. A device run that cannot start (unreachable, refused there) is Unavailable with why; a local one's bad input
    stays a RegnasError."""
    t0 = time.perf_counter()
    if device is not None and device.unreachable:
        raise Unavailable(device.unreachable)
    try:
        rt = load()
        try:
            p = rt.predict(x)
        finally:
            rt.close()
    except Unavailable:
        raise
    except RegnasError as exc:
        if device is None:
            raise
        raise Unavailable(str(exc)) from exc
    return p, rt, round(time.perf_counter() - t0, 2)


def _runs(a: ArtifactRecord, target: Target, device: _Device | None) -> list[tuple[str, _Device | None]]:
    """The artifact's other runs: each other runtime its target names for its format here, then its own runtime on the
    device when the target is of the device's architecture (a per-architecture build runs there as its own build)."""
    if a.device is not None:
        return []
    out: list[tuple[str, _Device | None]] = [(r, None) for r in target.check_runtimes(a.format, a.runtime)[1:]]
    if device is not None and device.serves(target) and not runtime_class(a.runtime).per_arch:
        out.append((a.runtime, device))
    return out


def _other_run(
    out: Path,
    a: ArtifactRecord,
    runtime: str,
    device: _Device | None,
    x: np.ndarray,
    own: np.ndarray,
    fp32: np.ndarray,
    limit: float,
    found: _Judged,
) -> RunRecord:
    """One more run of an artifact, judged as its own run is, and compared with its own run here."""
    run = RunRecord(runtime, None if device is None else str(device), "ok")
    path, remote = artifact_path(out, a), None if device is None else device.remote
    try:
        p, _, run.seconds = _predict(lambda: load_runtime(runtime, path, PREDICT_THREADS, remote), x, device)
    except Unavailable as exc:
        run.status = f"skipped: {exc}"
        logger.info(f"check: {a.label} in {run.label} skipped: {exc}")
        return run
    found.judge(run, f"{a.label} in {run.label}", p, fp32, limit)
    run.vs = found.versus(f"{a.label} in {a.runtime} on this host", own, p)
    logger.info(f"check: {a.label} in {run.label}: {run.vs['disagreements']} disagreements with {a.runtime} on this host")
    return run


def _same_graph(a: ArtifactRecord, b: ArtifactRecord) -> bool:
    source = a.options.get("compiled_from_sha256")
    return (a.target, a.format, a.precision, source) == (b.target, b.format, b.precision, b.options.get("compiled_from_sha256"))


def compare_with_host(artifacts: list[ArtifactRecord], preds: dict[int, np.ndarray], found: _Judged) -> None:
    """Set `vs_host` of each artifact that ran on a device: its flips against this host's build of the same graph."""
    for i, a in enumerate(artifacts):
        host = [j for j, b in enumerate(artifacts) if j in preds and b.device is None and j != i and _same_graph(a, b)]
        if a.device is None or i not in preds or not host:
            a.vs_host = None
            continue
        a.vs_host = vs = found.versus(artifacts[host[0]].label, preds[host[0]], preds[i])
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

"""The build directory: its layout, and the one place that reads and writes it.

    BUILD/
      report.json            the build's record (REPORT_FORMAT): family, baseline, targets, config,
                             artifacts and check; report.html and summary.md are rendered from it
      search.json            the search cache, keyed by everything the search depends on
      supernet.safetensors   the trained supernet (when the build trained it; `train.CHECKPOINT`)
      data/                  an image folder's images, decoded once into uint8 (`regnas.images`)
      <target>/arch.json     a member: space, config and arch ...
      <target>/model.safetensors   ... and its standalone weights (hashed in report.json)
      <target>/<artifacts>   exported builds of the member (`artifacts.py` names them)

Everything else reads a build through `read_report`, `open_build` and `load_member`, so a change
of layout or of the report's format is made here once, and an old or foreign directory is refused
with one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path, PurePath
from typing import Any

from torch import nn

from regnas.data import Dataset, SplitFractions, load_recorded_split
from regnas.errors import RegnasError
from regnas.io import atomic_path, load_tensors, read_json, save_tensors, sha256_file, tensors_sha256, write_json
from regnas.schema import anything, flag, list_of, mapping, maybe, number, record, such_that, text
from regnas.spaces import Arch, SearchSpace, create_space
from regnas.targets import Target, parse_target

logger = logging.getLogger(__name__)

REPORT = "report.json"
SEARCH_CACHE = "search.json"
ARCH = "arch.json"
DATA_CACHE = "data"
"""The folder of a build (or a training run's --out) where an image folder's decoded images are cached."""
WEIGHTS = "model.safetensors"
BUILD_CONFIG = "build.toml"
"""A build's effective settings (`regnas.config` writes and reads the TOML), from which it can be rebuilt."""
REPORT_FORMAT = "regnas-report/1"
"""The report.json layout this regnas writes and reads; bumped when a reader could misread an older one."""


@dataclass
class MemberRecord:
    """One member of a family (or of the baseline) as report.json lists it: arch and cost, its test numbers,
    and what the search saw on val. Keys after `flips_per_class` are written only when set."""

    target: str
    arch: dict[str, Any]
    flops: int
    budget_flops: float | None
    params: int
    top1: float
    nfr_vs_prev: float | None
    val_top1: float | None = None
    val_nfr_vs_prev: float | None = None
    evaluated: int | None = None
    val_margin: dict[str, Any] | None = None
    flips_per_class: list[int] | None = None
    predicted_latency_ms: float | None = None
    budget_latency_ms: float | None = None
    same_as_previous: bool | None = None
    weights_sha256: str | None = None
    vs_deployed: dict[str, Any] | None = None
    """Against its target's deployed model on test (`--deployed`): NFR with its interval, flips, positive flips."""
    val_top1_floor: float | None = None
    """The val top-1 the search held it to (the baseline member's at its budget less `--top1-slack`)."""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: v for k, v in out.items() if v is not None or k not in _SET_ONLY}

    @classmethod
    def from_json(cls, obj: Any, source: str) -> MemberRecord:
        try:
            return cls(**{f.name: obj[f.name] for f in fields(cls) if f.name in obj or f.default is MISSING})
        except (KeyError, TypeError) as exc:
            raise RegnasError(f"{source} has a malformed member record (missing {exc}); re-run regnas build") from exc


_SET_ONLY = ("budget_latency_ms", "same_as_previous", "weights_sha256", "vs_deployed", "val_top1_floor")


class Verdict(StrEnum):
    """An artifact's flip check: its flips against its fp32 model, with their interval, against the target's limit."""

    PASSED = "passed"
    """The whole interval lies within the limit."""
    FAILED = "failed"
    """The whole interval lies above it: a regression (exit 1)."""
    INCONCLUSIVE = "inconclusive"
    """The interval straddles it: more test images would tell (exit 1 only with --strict)."""

    @classmethod
    def of(cls, text: str | None) -> Verdict | None:
        """The verdict a report's text records (`inconclusive: needs about N test images` is INCONCLUSIVE)."""
        return None if text is None else cls(text.split(":", 1)[0])


@dataclass
class RunRecord:
    """One more run of an artifact in the check, beside its own runtime on this host: another runtime its target deploys
    it with, or its runtime on the RPC device."""

    runtime: str
    device: str | None
    """The RPC device it ran on (and what emulates it), or None for this host."""
    status: str
    top1: float | None = None
    nfr_vs_fp32: float | None = None
    flips: int | None = None
    nfr_interval: list[float] | None = None
    verdict: str | None = None
    vs: dict[str, Any] | None = None
    """Against the artifact's own run on this host: flips, disagreements, and the true classes of the images they disagree on."""
    seconds: float | None = None
    """Wall time of its predictions on the test split (upload and load included)."""

    @property
    def label(self) -> str:
        return self.runtime + (f" on {self.device}" if self.device else " on this host")

    @property
    def judged(self) -> Verdict | None:
        return Verdict.of(self.verdict)


@dataclass
class ArtifactRecord:
    """One exported build of one family member, as listed in report.json's `artifacts`."""

    target: str
    format: str
    precision: str
    path: str
    sha256: str | None
    runtime: str
    status: str
    """`ok`, or `skipped: why` (a runtime this host lacks, an exporter that failed)."""
    top1: float | None = None
    nfr_vs_fp32: float | None = None
    nfr_vs_prev: float | None = None
    flips: int | None = None
    nfr_interval: list[float] | None = None
    verdict: str | None = None
    """The check's verdict as text (`Verdict` names its kind: `judged`)."""
    command: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None
    companions: dict[str, str] = field(default_factory=dict)
    """sha256 of the files beside the artifact that decide how it runs (a TVM library's sidecar), by name."""
    device: str | None = None
    """Where the check ran it when not here: the RPC address, and what emulates it if anything does."""
    vs_host: dict[str, Any] | None = None
    """For an artifact checked on a device: flips and disagreements against this host's build of the same graph."""
    seconds: float | None = None
    """Wall time of the check's predictions on the test split in its own runtime (loading included)."""
    runs: list[RunRecord] = field(default_factory=list)
    """Its other runs in the check: the other runtimes its target names for it, and the RPC device of its target's arch."""

    @property
    def label(self) -> str:
        return f"{self.target}/{Path(self.path).name}"

    @property
    def ran(self) -> bool:
        """Whether the check ran it (else `status` says why not)."""
        return self.status == "ok"

    @property
    def judged(self) -> Verdict | None:
        return Verdict.of(self.verdict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ArtifactRecord:
        try:
            return cls(**{**obj, "runs": [RunRecord(**r) for r in obj.get("runs", [])]})
        except TypeError as exc:
            raise RegnasError(f"report.json has a malformed artifact entry ({exc}); re-run regnas export") from exc


@dataclass
class BuildReport:
    """A build's report.json as records: the family and baseline members, the artifacts and the check's outcome.

    `sections` holds the whole report as written (search candidates, LUTs, timings, flip matrices), for what
    has no record of its own; the CLI, the Python API and `regnas check` read the records."""

    out: Path
    family: list[MemberRecord]
    baseline: list[MemberRecord]
    artifacts: list[ArtifactRecord]
    failures: list[str]
    """One line per artifact whose check failed."""
    inconclusive: list[str]
    """One line per artifact whose check could not tell on this many test images."""
    sections: dict[str, Any]

    @property
    def checked(self) -> bool:
        """Whether the artifacts were checked (not a --no-export build)."""
        return "check" in self.sections

    @property
    def passed(self) -> bool:
        """No artifact's check failed (a build without a check has nothing that failed)."""
        return not self.failures

    def exit_code(self, strict: bool = False) -> int:
        """The CLI's exit status for this build: 1 when an artifact failed its check (or, `strict`, was inconclusive)."""
        return 1 if self.failures or (strict and self.inconclusive) else 0

    def member(self, target: str) -> MemberRecord:
        """The family member built for `target`."""
        for m in self.family:
            if m.target == target:
                return m
        raise RegnasError(f"{self.out} has no member for target {target!r}; its targets are {', '.join(m.target for m in self.family)}")

    @classmethod
    def from_json(cls, out: str | Path, report: dict[str, Any]) -> BuildReport:
        source = str(Path(out) / REPORT)
        check = report.get("check") or {}
        return cls(
            Path(out),
            [MemberRecord.from_json(m, source) for m in report["family"]],
            [MemberRecord.from_json(m, source) for m in (report.get("baseline") or {}).get("family", [])],
            [ArtifactRecord.from_json(a) for a in report.get("artifacts") or []],
            list(check.get("failures", [])),
            list(check.get("inconclusive", [])),
            report,
        )

    @classmethod
    def read(cls, out: str | Path) -> BuildReport:
        """The report of the build directory `out` (checked as `read_report` does)."""
        return cls.from_json(out, read_report(out))


LOCK = ".regnas.lock"
"""The lock file a command holds while it writes a build directory (or a training run's --out)."""


@contextlib.contextmanager
def locked(out: Path, command: str) -> Iterator[None]:
    """Hold `out`'s lock while `command` writes it: a second writer exits 2 naming the holder instead of overwriting.

    The lock is the operating system's (flock): it goes with the process, so a killed command leaves no stale lock.
    """
    import fcntl

    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RegnasError(f"cannot write {out} ({exc.strerror or exc}); choose a writable location") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another regnas process"
            raise RegnasError(f"{out} is being written by {holder}; wait for it to finish, or use another directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"`regnas {command}` (pid {os.getpid()}, since {time.strftime('%H:%M:%S')})".encode(), 0)
        yield
    finally:
        os.close(fd)
        if created and os.listdir(out) == [LOCK]:  # a command that wrote nothing leaves nothing behind
            (out / LOCK).unlink()
            for d in created:
                with contextlib.suppress(OSError):
                    d.rmdir()


def inside(out: Path, rel: str | PurePath, what: str) -> Path:
    """`out / rel`, refused in one line unless `rel` is a relative path without `..` that resolves, symlinks
    followed, inside `out`: a report names the files of its own build, and nothing outside it is ever opened."""
    rel = PurePath(rel)
    if not rel.parts or rel.is_absolute() or ".." in rel.parts:
        raise RegnasError(f"{what} {str(rel)!r} in {out / REPORT} is not a path inside the build; rebuild it with regnas build")
    path = out / rel
    root, resolved = out.resolve(), path.resolve()
    if resolved != root and root not in resolved.parents:
        raise RegnasError(f"{what} {path} leads outside the build (to {resolved}); remove the link or rebuild with regnas build")
    return path


def member_dir(out: Path, target: Any) -> Path:
    """A member's folder `out/<target>`, for a target name read from a report."""
    if not isinstance(target, str) or len(PurePath(target).parts) != 1:
        raise RegnasError(f"member {target!r} in {out / REPORT} is not a target name; rebuild it with regnas build")
    return inside(out, target, "member")


def is_member(path: Path) -> bool:
    """Whether `path` is a member folder of a build (`BUILD/<target>`)."""
    return (path / ARCH).is_file()


def is_build(path: Path) -> bool:
    """Whether `path` is a build directory."""
    return (path / REPORT).is_file()


def save_member(folder: Path, space: SearchSpace, arch: Arch, net: nn.Module, target: str) -> str:
    """Write a member (standalone weights, then the arch that makes the folder a member) atomically; the weights'
    sha256 for the report. A write that fails midway leaves no arch.json without its weights."""
    save_tensors(folder / WEIGHTS, net.state_dict(), {"space": space.name, "target": target})
    write_json(folder / ARCH, {"space": space.name, "config": space.config, "arch": space.to_json(arch)})
    return tensors_sha256(folder / WEIGHTS)


def load_member(folder: str | Path) -> tuple[SearchSpace, nn.Module]:
    """A member saved by `save_member` (`BUILD/<target>/`), as a standalone eval-mode network."""
    folder = Path(folder)
    meta = read_json(folder / ARCH, "member arch file")
    try:
        space = create_space(meta["space"], meta["config"])
    except (KeyError, TypeError) as exc:
        raise RegnasError(f"{folder / ARCH} is not a regnas arch file (missing {exc}); rebuild it with regnas build") from exc
    net = space.build_subnet(space.from_json(meta["arch"]))
    state = load_tensors(folder / WEIGHTS, "member weights")
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise RegnasError(f"{folder / WEIGHTS} does not match {folder / ARCH}; rebuild the family") from exc
    return space, net.eval()


def _weights_match(weights: Path, digest: Any) -> bool:
    """Whether a member's weights are the ones its report recorded (by their tensors; a report written before
    tensors were hashed recorded the file's bytes)."""
    return weights.is_file() and digest in (tensors_sha256(weights), sha256_file(weights))


def read_report(out: str | Path) -> dict[str, Any]:
    """A build directory's report.json, its format and the sections every reader needs checked."""
    path = Path(out) / REPORT
    if not path.is_file():
        raise RegnasError(f"{out} has no {REPORT}; run regnas build --out {out} first")
    report = read_json(path, "build report")
    problem = _shape_problem(report)
    if problem:
        raise RegnasError(f"{path} is not a regnas build report ({problem}); rebuild it with regnas build")
    if report.get("format") != REPORT_FORMAT:
        raise RegnasError(
            f"{path} has report format {report.get('format')!r}, this regnas reads {REPORT_FORMAT!r}; rebuild it with regnas build"
        )
    return report


RATE = number(0, 1)
_MEMBER = record(
    {
        "target": such_that(text, lambda v: len(PurePath(v).parts) == 1),
        "flops": number(0),
        "params": number(0, integer=True),
        "top1": RATE,
        "val_top1": RATE,
        "nfr_vs_prev": maybe(RATE),
        "budget_flops": maybe(number(0)),
        "arch": mapping(anything),
    },
    {
        "budget_latency_ms": maybe(number(0)),
        "predicted_latency_ms": maybe(number(0)),
        "same_as_previous": flag,
        "flips_per_class": maybe(list_of(number(0, integer=True))),
        "weights_sha256": maybe(text),
        "val_top1_floor": maybe(RATE),
    },
)
_SECTION = {
    "family": list_of(_MEMBER, min_length=1),
    "nesting": list_of(record({"smaller": text, "larger": text, "contains": flag, "literal": flag, "shared_weight_fraction": RATE})),
    "flip_matrix": list_of(list_of(RATE)),
}
"""What the family and the baseline each record: members, nesting between consecutive ones, flips between all."""
_NFR_VAL = record({"nfr_val": RATE, "options": anything})
_VS = record(
    {"flips": number(0, integer=True), "disagreements": number(0, integer=True), "artifact": text},
    {"classes": mapping(number(0, integer=True))},
)
"""One run's agreement with another of the same graph: flips, disagreements, and their images' true classes."""
_VS_DEPLOYED = record(
    {
        "deployed": text,
        "nfr": RATE,
        "flips": number(0, integer=True),
        "nfr_interval": list_of(RATE, length=2),
        "positive_flips": number(0, integer=True),
        "top1_deployed": RATE,
        "n": number(1, integer=True),
    }
)
"""A member against its target's deployed model on test (`--deployed`)."""
_DEPLOYED_MEMBER = record(
    {"target": text, "kept": text, "with": _VS_DEPLOYED, "without": _VS_DEPLOYED, "top1_with": RATE, "top1_without": RATE}
)
_ARTIFACT = record(
    {"target": text, "format": text, "precision": text, "path": text, "sha256": maybe(text), "runtime": text, "status": text},
    {
        "top1": maybe(RATE),
        "nfr_vs_fp32": maybe(RATE),
        "nfr_vs_prev": maybe(RATE),
        "flips": maybe(number(0, integer=True)),
        "nfr_interval": maybe(list_of(RATE, length=2)),
        "verdict": maybe(text),
        "command": maybe(text),
        "options": mapping(anything),
        "companions": mapping(text),
        "device": maybe(text),
        "vs_host": maybe(_VS),
        "seconds": maybe(number(0)),
        "runs": list_of(
            record(
                {"runtime": text, "device": maybe(text), "status": text},
                {
                    "top1": maybe(RATE),
                    "nfr_vs_fp32": maybe(RATE),
                    "flips": maybe(number(0, integer=True)),
                    "nfr_interval": maybe(list_of(RATE, length=2)),
                    "verdict": maybe(text),
                    "vs": maybe(_VS),
                    "seconds": maybe(number(0)),
                },
            )
        ),
        "quantization": maybe(
            record(
                {"before": _NFR_VAL, "after": _NFR_VAL},
                {
                    "kept_float": list_of(text),
                    "max_slowdown": number(0),
                    "latency_ms": record({}, {"chosen": number(0), "fully_quantized": number(1e-12)}),
                },
            )
        ),
    },
)
_LUT_VALIDATION = record(
    {"within_10pct": RATE, "spearman": number(-1, 1), "measured_ms": list_of(number(0), min_length=1), "predicted_ms": list_of(number(0))}
)


def _candidate(v: Any, at: str) -> str | None:
    """A searched arch as [FLOPs, val top-1, ...]."""
    ok = isinstance(v, list) and len(v) >= 2 and number(0)(v[0], at) is None and RATE(v[1], at) is None
    return None if ok else f"{at} is not a [flops, top-1] point"


REPORT_SCHEMA = record(
    {**_SECTION, "baseline": record(_SECTION)},
    {
        "format": text,
        "targets": list_of(mapping(anything)),
        "config": record(
            {},
            {
                "data": record({}, {"class_names": list_of(text), "input_shape": list_of(number(1, integer=True))}),
                "reward": mapping(anything),
            },
        ),
        "finetune": record({"mode": text, "before": list_of(record({"target": text, "top1": RATE, "nfr_vs_prev": maybe(RATE)}))}),
        "deployed": record(
            {"reward": text, "without_reward": text, "members": list_of(_DEPLOYED_MEMBER)},
            {"flip_matrix": list_of(list_of(RATE)), "flip_matrix_without": list_of(list_of(RATE))},
        ),
        "artifacts": list_of(_ARTIFACT),
        "check": record(
            {},
            {
                "passed": flag,
                "failures": list_of(text),
                "inconclusive": list_of(text),
                "flip_matrix": maybe(record({"labels": list_of(text), "nfr": list_of(list_of(RATE))})),
            },
        ),
        "luts": mapping(record({"provenance": mapping(anything)}, {"validation": maybe(_LUT_VALIDATION)})),
        "reward_sweep": list_of(record({"reward": text, "mean_top1": RATE, "mean_nfr": RATE})),
        "search": mapping(mapping(list_of(_candidate))),
        "plan_s": mapping(anything),
        "timing_s": mapping(anything),
    },
)
"""Every field a reader of report.json relies on: what `read_report` checks before anything consumes it."""


def _square(matrix: list[list[float]], n: int, at: str) -> str | None:
    return None if len(matrix) == n and all(len(r) == n for r in matrix) else f"{at} is not a {n}x{n} matrix"


def _deployed_problem(report: dict[str, Any]) -> str | None:
    """The deployed models' flip rows must have one row per deployed model and one column per member."""
    deployed = report.get("deployed") or {}
    for key in ("flip_matrix", "flip_matrix_without"):
        rows, n = deployed.get(key), len(report["family"])
        if rows is not None and (len(rows) != len(deployed["members"]) or any(len(r) != n for r in rows)):
            return f"deployed.{key} is not a {len(deployed['members'])}x{n} matrix (deployed models x members)"
    return None


def _shape_problem(report: Any) -> str | None:
    """What makes `report` unreadable as a build report: its schema, then what its parts must agree on."""
    if not isinstance(report, dict):
        return f"a JSON {type(report).__name__}, not an object"
    if problem := REPORT_SCHEMA(report, ""):
        return problem
    for at, section in (("", report), ("baseline.", report["baseline"])):
        if problem := _square(section["flip_matrix"], len(section["family"]), f"{at}flip_matrix"):
            return problem
    classes = report.get("config", {}).get("data", {}).get("class_names")
    for at, section in (("", report), ("baseline.", report["baseline"])):
        for i, m in enumerate(section["family"]):
            if classes is not None and m.get("flips_per_class") is not None and len(m["flips_per_class"]) != len(classes):
                return f"{at}family[{i}].flips_per_class has {len(m['flips_per_class'])} entries for {len(classes)} classes"
    if problem := _deployed_problem(report):
        return problem
    matrix = (report.get("check") or {}).get("flip_matrix")
    if matrix and (problem := _square(matrix["nfr"], len(matrix["labels"]), "check.flip_matrix.nfr")):
        return problem
    for name, lut in report.get("luts", {}).items():
        v = lut.get("validation")
        if v and len(v["predicted_ms"]) != len(v["measured_ms"]):
            return f"luts.{name}.validation has {len(v['predicted_ms'])} predictions for {len(v['measured_ms'])} measurements"
    return None


def write_report(out: Path, report: dict[str, Any]) -> None:
    """Write report.json atomically, stamped with this regnas's format."""
    write_json(out / REPORT, {**report, "format": REPORT_FORMAT})


def write_build_config(out: Path, text: str) -> None:
    """Write `out/build.toml` atomically."""
    with atomic_path(out / BUILD_CONFIG) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_finetuned(out: Path, key: str) -> list[nn.Module] | None:
    """The fine-tuned members an earlier run of this build saved under the same fine-tune `key`, or None.

    Only when its report names that key and every member's weights still have the bytes it reported.
    """
    try:
        report = read_report(out)
    except RegnasError:
        return None
    if report.get("finetune", {}).get("key") != key:
        return None
    nets = []
    for m in report["family"]:
        folder = member_dir(out, m["target"])
        weights = inside(out, PurePath(m["target"], WEIGHTS), "member weights")
        if not _weights_match(weights, m.get("weights_sha256")):
            return None
        nets.append(load_member(folder)[1])
    logger.info(f"finetune: reusing the fine-tuned members in {out}")
    return nets


def read_search_cache(out: Path) -> dict[str, Any] | None:
    """The build's search cache, or None when there is none or it cannot be read (it is only a cache)."""
    path = out / SEARCH_CACHE
    try:
        cached = read_json(path, "search cache") if path.is_file() else None
    except RegnasError as exc:
        logger.info(f"search: ignoring unreadable cache ({exc})")
        return None
    return cached if isinstance(cached, dict) else None


def write_search_cache(out: Path, cache: dict[str, Any]) -> None:
    write_json(out / SEARCH_CACHE, cache)


@dataclass
class Build:
    """A build directory opened for checking or export: its report, targets (budget order) and its own data split."""

    out: Path
    report: dict[str, Any]
    targets: list[Target]
    data: Dataset
    family: list[MemberRecord]


def open_build(out: str | Path) -> Build:
    """Open a build: its report, targets and data split, with every member's weights verified against the report.

    Member weights whose bytes changed since the build are bad input, like changed artifacts.
    """
    out = Path(out)
    report = read_report(out)
    source = out / REPORT
    try:
        cfg = report["config"]
        spec = cfg["data"].get("spec", cfg["data"]["name"])
        split = cfg["data"].get("split") or {"seed": cfg["seed"], "fractions": asdict(SplitFractions()), "digest": cfg["data"]["digest"]}
        targets = [parse_target(t, f"{source} target {t.get('name')}") for t in report["targets"]]
        family = [MemberRecord.from_json(m, str(source)) for m in report["family"]]
    except (KeyError, TypeError, AttributeError) as exc:
        raise RegnasError(f"{source} is not a regnas build report ({type(exc).__name__}: {exc}); re-run regnas build") from exc
    try:
        data = load_recorded_split(spec, split, str(source), cache=out / DATA_CACHE)
    except RegnasError as exc:
        raise RegnasError(f"the data behind {out} changed since the build ({spec}): {exc}") from exc
    for m in family:
        member_dir(out, m.target)
        weights = inside(out, PurePath(m.target, WEIGHTS), "member weights")
        if m.weights_sha256 is not None and not _weights_match(weights, m.weights_sha256):
            raise RegnasError(f"the weights of {m.target} ({weights}) changed since the build; re-run regnas build")
    return Build(out, report, targets, data, family)

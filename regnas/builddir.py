"""The build directory: its layout, and the one place that reads and writes it.

    BUILD/
      report.json            the build's record (REPORT_FORMAT): family, baseline, targets, config,
                             artifacts and check; report.html and summary.md are rendered from it
      search.json            the search cache, keyed by everything the search depends on
      supernet.safetensors   the trained supernet (when the build trained it; `train.CHECKPOINT`)
      <target>/arch.json     a member: space, config and arch ...
      <target>/model.safetensors   ... and its standalone weights (hashed in report.json)
      <target>/<artifacts>   exported builds of the member (`artifacts.py` names them)

Everything else reads a build through `read_report`, `open_build` and `load_member`, so a change
of layout or of the report's format is made here once, and an old or foreign directory is refused
with one line.
"""

from __future__ import annotations

import logging
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from torch import nn

from regnas.data import Dataset, SplitFractions, load_recorded_split
from regnas.errors import RegnasError
from regnas.io import load_tensors, read_json, save_tensors, sha256_file, write_json
from regnas.spaces import Arch, SearchSpace, create_space
from regnas.targets import Target, parse_target

logger = logging.getLogger(__name__)

REPORT = "report.json"
SEARCH_CACHE = "search.json"
ARCH = "arch.json"
WEIGHTS = "model.safetensors"
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

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: v for k, v in out.items() if v is not None or k not in _SET_ONLY}

    @classmethod
    def from_json(cls, obj: Any, source: str) -> MemberRecord:
        try:
            return cls(**{f.name: obj[f.name] for f in fields(cls) if f.name in obj or f.default is MISSING})
        except (KeyError, TypeError) as exc:
            raise RegnasError(f"{source} has a malformed member record (missing {exc}); re-run regnas build") from exc


_SET_ONLY = ("budget_latency_ms", "same_as_previous", "weights_sha256")


def is_member(path: Path) -> bool:
    """Whether `path` is a member folder of a build (`BUILD/<target>`)."""
    return (path / ARCH).is_file()


def is_build(path: Path) -> bool:
    """Whether `path` is a build directory."""
    return (path / REPORT).is_file()


def save_member(folder: Path, space: SearchSpace, arch: Arch, net: nn.Module, target: str) -> str:
    """Write a member (arch and standalone weights) atomically; the weights' sha256 for the report."""
    write_json(folder / ARCH, {"space": space.name, "config": space.config, "arch": space.to_json(arch)})
    save_tensors(folder / WEIGHTS, net.state_dict(), {"space": space.name, "target": target})
    return sha256_file(folder / WEIGHTS)


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


def _shape_problem(report: Any) -> str | None:
    """What makes `report` unreadable as a build report, or None."""
    if not isinstance(report, dict):
        return f"a JSON {type(report).__name__}, not an object"
    for section in (report, report.get("baseline")):
        if not isinstance(section, dict):
            return "no baseline section"
        for key in ("family", "nesting"):
            if not isinstance(section.get(key), list) or not all(isinstance(v, dict) for v in section[key]):
                return f"{key} is missing or not a list of records"
    if not isinstance(report.get("targets", []), list) or not all(isinstance(t, dict) for t in report.get("targets", [])):
        return "targets is not a list of target tables"
    return None


def write_report(out: Path, report: dict[str, Any]) -> None:
    """Write report.json atomically, stamped with this regnas's format."""
    write_json(out / REPORT, {**report, "format": REPORT_FORMAT})


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
        weights = out / m["target"] / WEIGHTS
        if not weights.is_file() or sha256_file(weights) != m.get("weights_sha256"):
            return None
        nets.append(load_member(out / m["target"])[1])
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
        data = load_recorded_split(spec, split, str(source))
    except RegnasError as exc:
        raise RegnasError(f"the data behind {out} changed since the build ({spec}): {exc}") from exc
    for m in family:
        weights = out / m.target / WEIGHTS
        if m.weights_sha256 is not None and (not weights.is_file() or sha256_file(weights) != m.weights_sha256):
            raise RegnasError(f"the weights of {m.target} ({weights}) changed since the build; re-run regnas build")
    return Build(out, report, targets, data, family)

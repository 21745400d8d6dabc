"""Targets: the platforms a family is built for, defined in TOML.

A target names its runtime, precision and threads (how its latency is measured), the exporters it
ships with their precisions, the flip threshold its artifacts must meet, and one budget:
absolute `flops`, `flops_fraction` (a share of the largest subnet's FLOPs at the dataset's input
size, so the built-ins fit any dataset) or `latency_ms` (predicted from the target's LUT).
Built-ins live in `builtin/`; users add a TOML file path, or a directory of them (`--targets-dir`).
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regnas.errors import RegnasError

BUILTIN_DIR = Path(__file__).parent / "builtin"
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "description": str,
    "runtime": str,
    "precision": str,
    "threads": int,
    "exporters": (list, dict),
    "budget": dict,
    "max_nfr_vs_fp32": (int, float),
    "max_int8_slowdown": (int, float),
    "lut": str,
    "tvm_target": (str, dict),
    "keep_float": dict,
    "runtimes": dict,
    "arch": str,
}
ARCHES = ("aarch64", "x86_64")
_BUDGETS = ("flops", "flops_fraction", "latency_ms")
DEFAULT_MAX_NFR = 0.002
DEFAULT_MAX_INT8_SLOWDOWN = 1.3


@dataclass(frozen=True)
class Target:
    """A platform, its budget and what it ships."""

    name: str
    budget: dict[str, float]
    description: str = ""
    runtime: str = "onnxruntime"
    precision: str = "fp32"
    threads: int = 1
    exporters: dict[str, tuple[str, ...]] = field(default_factory=dict)
    max_nfr_vs_fp32: float = DEFAULT_MAX_NFR
    max_int8_slowdown: float = DEFAULT_MAX_INT8_SLOWDOWN
    """How many times its fully quantized latency an int8 artifact may take by keeping units in float to cut flips."""
    lut: str | None = None
    tvm_target: str | dict[str, Any] = "llvm"
    keep_float: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Per exporter, units its int8 artifacts always keep in float (graph node or module names, or first / last)."""
    runtimes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Per exporter, every runtime its artifacts are deployed with: each artifact is checked, and quantized, in each."""
    arch: str | None = None
    """The device's CPU architecture (`aarch64`, `x86_64`): `regnas check --rpc` runs the target's artifacts on a device
    of that architecture, beside this host; None for the host's own."""

    def check_runtimes(self, exporter: str, own: str) -> list[str]:
        """The runtimes an artifact of `exporter` that runs in `own` is checked in: its own first, then the others named."""
        return [own, *(r for r in self.runtimes.get(exporter, ()) if r != own)]

    @property
    def latency_ms(self) -> float | None:
        """The latency budget in milliseconds, or None for a FLOP budget."""
        return self.budget.get("latency_ms")

    def budget_flops(self, largest_flops: int) -> int | None:
        """The FLOP budget for a space whose largest subnet costs `largest_flops`; None for a latency budget."""
        if "flops" in self.budget:
            return int(self.budget["flops"])
        if "flops_fraction" in self.budget:
            return int(self.budget["flops_fraction"] * largest_flops)
        return None

    def describe_budget(self) -> str:
        """The budget in words."""
        if "flops" in self.budget:
            return f"{self.budget['flops'] / 1e6:g} MFLOPs"
        if "latency_ms" in self.budget:
            return f"{self.budget['latency_ms']:g} ms on {self.runtime} ({self.precision}, {self.threads} threads)"
        return f"{self.budget['flops_fraction']:.0%} of the largest subnet's FLOPs"

    def to_json(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "description": self.description,
            "runtime": self.runtime,
            "precision": self.precision,
            "threads": self.threads,
            "exporters": {k: list(v) for k, v in self.exporters.items()},
            "budget": dict(self.budget),
            "max_nfr_vs_fp32": self.max_nfr_vs_fp32,
            "max_int8_slowdown": self.max_int8_slowdown,
            "tvm_target": self.tvm_target,
        }
        if self.keep_float:
            out["keep_float"] = {k: list(v) for k, v in self.keep_float.items()}
        if self.runtimes:
            out["runtimes"] = {k: list(v) for k, v in self.runtimes.items()}
        if self.arch:
            out["arch"] = self.arch
        return {**out, "lut": self.lut} if self.lut else out


def _exporters(value: list | dict, source: str) -> dict[str, tuple[str, ...]]:
    """`["onnx", ...]` (every precision each writes) or `{onnx = ["fp32", "int8"], ...}`, validated against the registry."""
    from regnas.exporters import create_exporter, exporter_names

    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
        raise RegnasError(f'{source}: exporters must be a list of names such as ["onnx", "tvm"] or a table, got {value!r}')
    table = {name: None for name in value} if isinstance(value, list) else value
    out = {}
    for name, precisions in table.items():
        if name not in exporter_names():
            raise RegnasError(f"{source}: unknown exporter {name!r}; use one of {', '.join(exporter_names())}")
        allowed = create_exporter(name).precisions
        if precisions is None:
            precisions = list(allowed)
        if not isinstance(precisions, list) or not precisions or any(p not in allowed for p in precisions):
            raise RegnasError(f"{source}: exporter {name} takes a list of precisions from {', '.join(allowed)}, got {precisions!r}")
        out[name] = tuple(precisions)
    return out


def _check_keys(obj: dict[str, Any], source: str) -> None:
    """Every key known and of its type, and the two a target cannot do without."""
    for key, value in obj.items():
        if key not in _FIELDS:
            raise RegnasError(f"{source}: unknown key {key!r}; allowed keys are {', '.join(_FIELDS)}")
        kinds = _FIELDS[key] if isinstance(_FIELDS[key], tuple) else (_FIELDS[key],)
        if not isinstance(value, kinds) or isinstance(value, bool):
            names = " or ".join(k.__name__ for k in kinds)
            raise RegnasError(f"{source}: {key} must be a {names}, got {value!r}")
    if "name" not in obj or "budget" not in obj:
        raise RegnasError(f"{source}: a target needs 'name' and a [budget] table")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", obj["name"]):
        raise RegnasError(
            f"{source}: target name {obj['name']!r} must be a plain identifier (letters, digits, '-' or '_'): it names a build folder"
        )


def _budget(budget: dict[str, Any], source: str) -> dict[str, float]:
    """The [budget] table: exactly one positive budget (a FLOPs fraction at most 1)."""
    kinds = [k for k in budget if k in _BUDGETS]
    if len(kinds) != 1 or len(budget) != 1:
        raise RegnasError(f"{source}: [budget] needs exactly one of {', '.join(_BUDGETS)}, got {sorted(budget)}")
    value = budget[kinds[0]]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise RegnasError(f"{source}: budget {kinds[0]} must be a positive number, got {value!r}")
    if kinds[0] == "flops_fraction" and value > 1:
        raise RegnasError(f"{source}: budget flops_fraction must be in (0, 1], got {value}")
    return {kinds[0]: float(value)}


def _measurement(obj: dict[str, Any], source: str) -> tuple[str, str, int]:
    """How the target's latency is measured: runtime, precision and threads."""
    from regnas.runtimes import runtime_names

    if obj.get("threads", 1) < 1:
        raise RegnasError(f"{source}: threads must be at least 1")
    runtime = obj.get("runtime", "onnxruntime")
    if runtime not in runtime_names():
        raise RegnasError(f"{source}: unknown runtime {runtime!r}; use one of {', '.join(runtime_names())}")
    precision = obj.get("precision", "fp32")
    if precision not in ("fp32", "fp16", "int8"):
        raise RegnasError(f"{source}: precision must be fp32, fp16 or int8, got {precision!r}")
    return runtime, precision, obj.get("threads", 1)


def _limits(obj: dict[str, Any], source: str) -> tuple[float, float]:
    """The check's flip limit and the int8 fallback's latency cap."""
    max_nfr = float(obj.get("max_nfr_vs_fp32", DEFAULT_MAX_NFR))
    if not 0 <= max_nfr <= 1:  # also false for nan
        raise RegnasError(f"{source}: max_nfr_vs_fp32 is a fraction in [0, 1], got {max_nfr}")
    slowdown = float(obj.get("max_int8_slowdown", DEFAULT_MAX_INT8_SLOWDOWN))
    if not slowdown >= 1:  # also true for nan
        raise RegnasError(f"{source}: max_int8_slowdown is a latency multiple of at least 1 (1: no unit kept in float), got {slowdown}")
    return max_nfr, slowdown


def _lut(obj: dict[str, Any], source: str, base: Path | None) -> str | None:
    """The target's own LUT file (relative to the target file's folder), which must exist."""
    lut = obj.get("lut")
    if lut is not None and base is not None and not Path(lut).is_absolute():
        lut = str(base / lut)
    if lut is not None and not Path(lut).is_file():
        raise RegnasError(f"{source}: its lut file {lut} does not exist; run regnas profile --target {obj['name']} --out {lut}")
    return lut


def _keep_float(obj: dict[str, Any], source: str) -> dict[str, tuple[str, ...]]:
    """Units each of the target's exporters keeps in float."""
    keep_float = obj.get("keep_float", {})
    for name, units in keep_float.items():
        if name not in obj.get("exporters", []) or not isinstance(units, list) or not all(isinstance(u, str) for u in units):
            raise RegnasError(f"{source}: keep_float.{name} must be a list of unit names for an exporter this target uses")
    return {k: tuple(v) for k, v in keep_float.items()}


def _runtimes(obj: dict[str, Any], source: str) -> dict[str, tuple[str, ...]]:
    """Per exporter the target uses, the runtimes its artifacts are deployed with, each one that reads that exporter's files."""
    from regnas.runtimes import runtime_class, runtime_names

    out = {}
    for name, runtimes in obj.get("runtimes", {}).items():
        if name not in obj.get("exporters", []) or not isinstance(runtimes, list) or not runtimes:
            raise RegnasError(f"{source}: runtimes.{name} must be a non-empty list of runtime names for an exporter this target uses")
        for r in runtimes:
            if r not in runtime_names() or runtime_class(r).exporter != name:
                readers = [n for n in runtime_names() if runtime_class(n).exporter == name]
                raise RegnasError(f"{source}: runtimes.{name} names {r!r}; {name} artifacts run in {', '.join(readers)}")
        out[name] = tuple(dict.fromkeys(runtimes))
    return out


def parse_target(obj: dict[str, Any], source: str, base: Path | None = None) -> Target:
    """Validate a target definition; every problem is a one-line RegnasError naming `source`."""
    _check_keys(obj, source)
    budget = _budget(obj["budget"], source)
    runtime, precision, threads = _measurement(obj, source)
    max_nfr, slowdown = _limits(obj, source)
    lut, keep_float = _lut(obj, source, base), _keep_float(obj, source)
    if obj.get("arch", ARCHES[0]) not in ARCHES:
        raise RegnasError(f"{source}: arch must be one of {', '.join(ARCHES)}, got {obj['arch']!r}")
    return Target(
        name=obj["name"],
        budget=budget,
        description=obj.get("description", ""),
        runtime=runtime,
        precision=precision,
        threads=threads,
        exporters=_exporters(obj.get("exporters", []), source),
        max_nfr_vs_fp32=max_nfr,
        max_int8_slowdown=slowdown,
        lut=lut,
        tvm_target=obj.get("tvm_target", "llvm"),
        keep_float=keep_float,
        runtimes=_runtimes(obj, source),
        arch=obj.get("arch"),
    )


MAX_TARGET_BYTES = 2**20
"""The largest target file read."""


def load_target_file(path: str | Path) -> Target:
    """Load a target from a TOML file."""
    path = Path(path)
    if not path.is_file():
        raise RegnasError(f"target file not found: {path}; check the path")
    if path.stat().st_size > MAX_TARGET_BYTES:
        raise RegnasError(f"target file {path} is {path.stat().st_size:,} bytes; a target is a short TOML table, check the file")
    try:
        obj = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RegnasError(f"{path} is not valid TOML ({exc}); fix the file") from exc
    return parse_target(obj, str(path), path.parent)


def _load_dir(directory: Path) -> dict[str, Target]:
    if not directory.is_dir():
        raise RegnasError(f"targets directory not found: {directory}; check --targets-dir")
    targets = (load_target_file(p) for p in sorted(directory.glob("*.toml")))
    return {t.name: t for t in targets}


def builtin_targets() -> dict[str, Target]:
    """The targets shipped with regnas, by name."""
    return _load_dir(BUILTIN_DIR)


def available_targets(targets_dir: str | Path | None = None) -> dict[str, Target]:
    """Built-in targets, overridden and extended by the TOML files in `targets_dir`."""
    out = builtin_targets()
    if targets_dir is not None:
        out.update(_load_dir(Path(targets_dir)))
    return out


def resolve_targets(spec: str, targets_dir: str | Path | None = None) -> list[Target]:
    """Targets from a comma-separated list of names (built-in or in `targets_dir`) and TOML paths."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise RegnasError("no targets given; pass --targets phone,edge,server or paths to target TOML files")
    known = available_targets(targets_dir)
    out = []
    for name in names:
        if name in known:
            out.append(known[name])
        elif name.endswith(".toml") or "/" in name:
            out.append(load_target_file(name))
        else:
            raise RegnasError(f"unknown target {name!r}; use one of {', '.join(sorted(known))} or a path to a target .toml file")
    dupes = {t.name for t in out if [u.name for u in out].count(t.name) > 1}
    if dupes:
        raise RegnasError(f"target {sorted(dupes)[0]!r} is given twice; list each target once")
    return out

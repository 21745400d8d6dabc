"""Targets: the platforms a family is built for, defined in TOML.

A target names its runtime, precision, threads and exporters, and a budget: absolute `flops`
or `flops_fraction`, a share of the largest subnet's FLOPs at the dataset's input size (so the
built-ins fit any dataset). Built-ins live in `builtin/`; a user target is a path to a TOML file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regnas.errors import RegnasError

BUILTIN_DIR = Path(__file__).parent / "builtin"
_FIELDS = {"name": str, "description": str, "runtime": str, "precision": str, "threads": int, "exporters": list, "budget": dict}
_BUDGETS = ("flops", "flops_fraction")


@dataclass(frozen=True)
class Target:
    """A platform and its budget."""

    name: str
    budget: dict[str, float]
    description: str = ""
    runtime: str = "onnxruntime"
    precision: str = "fp32"
    threads: int = 1
    exporters: tuple[str, ...] = field(default_factory=tuple)

    def budget_flops(self, largest_flops: int) -> int:
        """The FLOP budget for a space whose largest subnet costs `largest_flops`."""
        if "flops" in self.budget:
            return int(self.budget["flops"])
        return int(self.budget["flops_fraction"] * largest_flops)

    def describe_budget(self) -> str:
        """The budget in words."""
        if "flops" in self.budget:
            return f"{self.budget['flops'] / 1e6:g} MFLOPs"
        return f"{self.budget['flops_fraction']:.0%} of the largest subnet's FLOPs"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "runtime": self.runtime,
            "precision": self.precision,
            "threads": self.threads,
            "exporters": list(self.exporters),
            "budget": dict(self.budget),
        }


def parse_target(obj: dict[str, Any], source: str) -> Target:
    """Validate a target definition; every problem is a one-line RegnasError naming `source`."""
    for key, value in obj.items():
        if key not in _FIELDS:
            raise RegnasError(f"{source}: unknown key {key!r}; allowed keys are {', '.join(_FIELDS)}")
        if not isinstance(value, _FIELDS[key]) or (key == "threads" and isinstance(value, bool)):
            raise RegnasError(f"{source}: {key} must be a {_FIELDS[key].__name__}, got {value!r}")
    if "name" not in obj or "budget" not in obj:
        raise RegnasError(f"{source}: a target needs 'name' and a [budget] table")
    budget = obj["budget"]
    kinds = [k for k in budget if k in _BUDGETS]
    if len(kinds) != 1 or len(budget) != 1:
        raise RegnasError(f"{source}: [budget] needs exactly one of {', '.join(_BUDGETS)}, got {sorted(budget)}")
    value = budget[kinds[0]]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise RegnasError(f"{source}: budget {kinds[0]} must be a positive number, got {value!r}")
    if kinds[0] == "flops_fraction" and value > 1:
        raise RegnasError(f"{source}: budget flops_fraction must be in (0, 1], got {value}")
    if obj.get("threads", 1) < 1:
        raise RegnasError(f"{source}: threads must be at least 1")
    return Target(
        name=obj["name"],
        budget={kinds[0]: float(value)},
        description=obj.get("description", ""),
        runtime=obj.get("runtime", "onnxruntime"),
        precision=obj.get("precision", "fp32"),
        threads=obj.get("threads", 1),
        exporters=tuple(obj.get("exporters", ())),
    )


def load_target_file(path: str | Path) -> Target:
    """Load a target from a TOML file."""
    path = Path(path)
    if not path.is_file():
        raise RegnasError(f"target file not found: {path}; check the path")
    try:
        obj = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RegnasError(f"{path} is not valid TOML ({exc}); fix the file") from exc
    return parse_target(obj, str(path))


def builtin_targets() -> dict[str, Target]:
    """The targets shipped with regnas, by name."""
    targets = (load_target_file(p) for p in sorted(BUILTIN_DIR.glob("*.toml")))
    return {t.name: t for t in targets}


def resolve_targets(spec: str) -> list[Target]:
    """Targets from a comma-separated list of built-in names and TOML paths."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise RegnasError("no targets given; pass --targets phone,edge,server or paths to target TOML files")
    builtins = builtin_targets()
    out = []
    for name in names:
        if name in builtins:
            out.append(builtins[name])
        elif name.endswith(".toml") or "/" in name:
            out.append(load_target_file(name))
        else:
            raise RegnasError(f"unknown target {name!r}; use one of {', '.join(sorted(builtins))} or a path to a target .toml file")
    dupes = {t.name for t in out if [u.name for u in out].count(t.name) > 1}
    if dupes:
        raise RegnasError(f"target {sorted(dupes)[0]!r} is given twice; list each target once")
    return out

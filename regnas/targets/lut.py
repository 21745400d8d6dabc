"""Latency lookup tables: the measured latency of every unit (stem, block configuration, head) of a
search space on one target, and the predictor built from them.

A LUT is JSON: the target's runtime, precision and threads, the space and its config (the input
shape fixes every unit's shape), provenance (host, CPU, runtime version, date, warm-up, repeats),
one entry per unit (median and spread), and, once `regnas targets validate` has run, a
calibration and the validation numbers. A plain sum of unit latencies is biased: every unit timed
alone pays the runtime's per-call overhead, fused graphs are cheaper than their parts, and how much
cheaper depends on the stage (resolution, width). The calibration is a linear model over named
terms, fitted on whole subnets measured end to end by least squares on relative error (the metric
validation reports). Three term sets compete and leave-one-out error on the fitting subnets picks
one, the simplest on a tie:
- `global`: `a·Σ units + b·(number of units) + c`;
- `per_group`: one factor per unit group (`SearchSpace.unit_group`, e.g. a stage) `+ c`;
- `per_group+n`: both the group factors and the unit count.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from regnas.errors import RegnasError
from regnas.io import read_json, sha256_json, write_json
from regnas.spaces import Arch, SearchSpace
from regnas.targets import Target

FORMAT = "regnas-lut/1"
BUILTIN_LUTS = Path(__file__).parent / "luts"
_KEYS = ("format", "target", "runtime", "precision", "threads", "space", "space_config", "provenance", "entries")


def unit_key(unit: Any) -> str:
    """A unit's JSON key in the LUT."""
    return json.dumps(list(unit))


def lut_filename(target: str, space: str, input_shape: tuple[int, ...]) -> str:
    return f"{target}-{space}-{'x'.join(map(str, input_shape))}.json"


@dataclass
class LUT:
    """Measured unit latencies of one space on one target, plus the fitted calibration."""

    target: str
    runtime: str
    precision: str
    threads: int
    space: str
    space_config: dict[str, Any]
    provenance: dict[str, Any]
    entries: dict[str, dict[str, float]] = field(default_factory=dict)
    complete: bool = False
    calibration: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    format: str = FORMAT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def digest(self) -> str:
        """Hash of what predictions depend on: entries and calibration."""
        return sha256_json({"entries": self.entries, "calibration": self.calibration})

    def mismatch(self, target: Target, space: SearchSpace) -> str | None:
        """What this LUT was measured for that differs from this target's runtime/precision and this space and config
        (None when it serves). The class count is not compared: it sizes only the classifier's outputs, a few
        multiply-adds of the head unit, whose measured latency still stands for it."""
        if (self.runtime, self.precision) != (target.runtime, target.precision):
            return f"{self.runtime}/{self.precision}, not {target.runtime}/{target.precision}"
        if self.space != space.name:
            return f"the {self.space} space, not {space.name}"
        mine, theirs = ({k: v for k, v in c.items() if k != "num_classes"} for c in (self.space_config, space.config))
        if mine != theirs:
            keys = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
            return f"a {self.space} config with another {', '.join(keys)}"
        return None

    def plain_ms(self, space: SearchSpace, arch: Arch) -> float:
        """The sum of the arch's unit latencies."""
        try:
            return sum(self.entries[unit_key(u)]["median_ms"] for u in space.units(arch))
        except KeyError as exc:
            raise RegnasError(f"LUT for {self.target} has no entry {exc}; re-run regnas profile --target {self.target}") from exc

    def features(self, space: SearchSpace, arch: Arch, terms: list[str]) -> list[float]:
        """The values of the named calibration terms for `arch`."""
        units = space.units(arch)
        values = {"sum_of_units_ms": self.plain_ms(space, arch), "n_units": float(len(units)), "constant_ms": 1.0}
        for u in units:
            key = f"sum_ms[{space.unit_group(u)}]"
            values[key] = values.get(key, 0.0) + self.entries[unit_key(u)]["median_ms"]
        unknown = [t for t in terms if t not in values and not t.startswith("sum_ms[")]
        if unknown:
            raise RegnasError(f"LUT for {self.target}: unknown calibration term {unknown[0]!r}; re-run regnas targets validate")
        return [values.get(t, 0.0) for t in terms]

    def predict_ms(self, space: SearchSpace, arch: Arch) -> float:
        """Predicted end-to-end latency: calibrated when a calibration was fitted, else the plain sum."""
        if self.calibration is None:
            return self.plain_ms(space, arch)
        return float(np.dot(self.calibration["coef"], self.features(space, arch, self.calibration["terms"])))

    def fit(self, space: SearchSpace, archs: list[Arch], measured: list[float]) -> None:
        """Fit each candidate term set on whole subnets measured end to end; keep the one with the lowest leave-one-out error."""
        y = np.asarray(measured, dtype=float)
        groups = sorted({space.unit_group(u) for u in space.all_units()})
        per_group = [f"sum_ms[{g}]" for g in groups]
        candidates = {
            "global": ["sum_of_units_ms", "n_units", "constant_ms"],
            "per_group": [*per_group, "constant_ms"],
            "per_group+n": [*per_group, "n_units", "constant_ms"],
        }
        usable = {name: terms for name, terms in candidates.items() if len(archs) > len(terms)}
        if not usable:
            raise RegnasError(f"{len(archs)} measured subnets cannot fit a calibration; measure at least 4 (--n-fit)")
        x = {name: np.array([self.features(space, a, terms) for a in archs]) for name, terms in usable.items()}
        loo = {name: _loo_rmspe(x[name], y) for name in usable}
        best = min(usable, key=lambda name: (round(loo[name], 6), len(usable[name])))
        self.calibration = {
            "model": best,
            "terms": usable[best],
            "coef": _fit_relative(x[best], y).tolist(),
            "fitted_on": len(archs),
            "loo_rmspe": loo,
        }


def _fit_relative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares on relative error: minimise Σ((x·c − y) / y)²."""
    coef, *_ = np.linalg.lstsq(x / y[:, None], np.ones_like(y), rcond=None)
    return coef


def _loo_rmspe(x: np.ndarray, y: np.ndarray) -> float:
    """Root-mean-square relative error of each point predicted by a fit on all the others."""
    keep = ~np.eye(len(y), dtype=bool)
    err = [(x[i] @ _fit_relative(x[keep[i]], y[keep[i]]) - y[i]) / y[i] for i in range(len(y))]
    return float(np.sqrt(np.mean(np.square(err))))


def load_lut(path: str | Path) -> LUT:
    """Read and validate a LUT file; a missing key or a corrupt file is a one-line RegnasError."""
    path = Path(path)
    obj = read_json(path, "LUT")
    if not isinstance(obj, dict):
        raise RegnasError(f"{path} is not a regnas LUT (not a JSON object); re-run regnas profile")
    missing = [k for k in _KEYS if k not in obj]
    if missing:
        raise RegnasError(f"{path} is not a regnas LUT (missing {', '.join(missing)}); re-run regnas profile")
    if obj["format"] != FORMAT:
        raise RegnasError(f"{path} has LUT format {obj['format']!r}, this regnas reads {FORMAT!r}; re-run regnas profile")
    bad = [k for k, v in obj["entries"].items() if not isinstance(v, dict) or not isinstance(v.get("median_ms"), (int, float))]
    if bad:
        raise RegnasError(f"{path}: LUT entry {bad[0]} has no median_ms; re-run regnas profile")
    cal = obj.get("calibration")
    terms, coef = (cal.get("terms"), cal.get("coef")) if isinstance(cal, dict) else (None, None)
    if cal is not None and not (isinstance(terms, list) and isinstance(coef, list) and len(terms) == len(coef)):
        raise RegnasError(f"{path}: the calibration needs as many terms as coef; re-run regnas targets validate")
    try:
        return LUT(**obj)
    except TypeError as exc:
        raise RegnasError(f"{path} is not a regnas LUT ({exc}); re-run regnas profile") from exc


def save_lut(path: str | Path, lut: LUT) -> None:
    write_json(path, lut.to_json())


def find_lut(target: Target, space: SearchSpace, lut_dir: str | Path | None = None) -> tuple[Path, LUT] | None:
    """The target's LUT for this space: the target's `lut` file, else `lut_dir`, else the built-in ones.

    A file that exists but was measured for another space, config or runtime is bad input.
    """
    name = lut_filename(target.name, space.name, space.input_shape)
    candidates = [Path(target.lut)] if target.lut else []
    candidates += [Path(lut_dir) / name] if lut_dir else []
    candidates.append(BUILTIN_LUTS / name)
    for path in candidates:
        if path.is_file():
            lut = load_lut(path)
            if (problem := lut.mismatch(target, space)) is not None:
                raise RegnasError(f"{path} was measured for {problem}; re-run regnas profile --target {target.name}")
            if not lut.complete:
                raise RegnasError(f"{path} is an unfinished profile; re-run regnas profile --target {target.name} to finish it")
            return path, lut
    return None

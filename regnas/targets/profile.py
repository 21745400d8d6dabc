"""`regnas profile` and `regnas targets validate`: measure on the device what the LUT predicts.

Every unit is exported alone, in the target's runtime and precision, and timed at batch 1.
Timing is **interleaved**: after a warm-up of each, every round times every item once (a short
burst) in a new shuffled order, and an item's latency is the median over all its rounds. A slow
phase of the host (another process, frequency scaling) then spreads over every item instead of
landing on the few timed during it, which is what made back-to-back timing disagree with itself.
Validation measures random whole subnets the same way, fits the LUT's calibration on a first set,
and scores the plain and calibrated predictions on a second, disjoint set. TVM units are compiled
for the target's `tvm_target` and timed on the device when an RPC address is given; otherwise for
this host.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import math
import os
import platform
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from regnas.errors import RegnasError
from regnas.exporters import ExportJob, create_exporter
from regnas.runtimes import Remote, Runtime, load_runtime, runtime_class
from regnas.spaces import Arch, SearchSpace
from regnas.targets import Target
from regnas.targets.lut import LUT, load_lut, save_lut, unit_key

logger = logging.getLogger(__name__)

CALIB = 32
BURST = 5
"""Timed runs per item per round; `repeats` runs make `ceil(repeats / BURST)` rounds."""
ROUND_WARMUP = 2
"""Untimed runs before each burst: the item before it has just evicted this one's caches."""
MIN_TIMING_S = 60.0
"""Rounds go on until this long has passed, however few `repeats` asked for: every item's samples then span a
minute of host time, so a slow stretch of a few seconds lands in a minority of each item's rounds. (Measured: a
10-round pass of 80 ExecuTorch subnets took 3.4 s, and one taken in a noisy minute read 1.0-1.4x slow, item by item.)"""


def _cpuinfo(key: str) -> str | None:
    """The first `key` line's value in /proc/cpuinfo (Linux); None elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux: x86's avx2, avx512_vnni, ...; Arm's asimd, asimddp, ...); empty elsewhere."""
    return set((_cpuinfo("flags") or _cpuinfo("Features") or "").split())


def export_on_target(module: nn.Module, input_shape: tuple[int, ...], target: Target, work: Path, remote: Remote | None) -> Path:
    """Export `module` in the target's runtime and precision into `work`; the file its runtime loads."""
    module = module.eval()
    rng = torch.Generator().manual_seed(0)
    calib = torch.rand((CALIB, *input_shape), generator=rng).numpy()
    job = ExportJob(module, tuple(input_shape), calib, work, work)
    exporter = create_exporter(runtime_class(target.runtime).exporter)
    try:
        return exporter.build_for_timing(job, target.runtime, target.precision, target.tvm_target if remote else None)
    except RegnasError as exc:
        raise RegnasError(f"target {target.name}: {exc}") from exc


def open_on_target(module: nn.Module, input_shape: tuple[int, ...], target: Target, work: Path, remote: Remote | None) -> Runtime:
    """Export `module` in the target's runtime and precision into `work`, and load it there."""
    return load_runtime(target.runtime, export_on_target(module, input_shape, target, work, remote), target.threads, remote)


def _summary(ms: np.ndarray) -> dict[str, float]:
    return {"median_ms": float(np.median(ms)), "p10_ms": float(np.percentile(ms, 10)), "p90_ms": float(np.percentile(ms, 90))}


def time_interleaved(
    items: Sequence[tuple[str, nn.Module, tuple[int, ...]]],
    target: Target,
    remote: Remote | None,
    warmup: int,
    repeats: int,
    seed: int = 0,
    cache: Path | None = None,
    desc: str = "time",
    progress: bool = False,
) -> list[dict[str, float]]:
    """Median, 10th and 90th percentile latency (ms) at batch 1 of every `(key, module, input_shape)`, timed interleaved.

    With a `cache` directory, each item's export is kept there under its key, so a killed run
    re-exports only what it had not exported (the slow part).
    """
    from tqdm import tqdm

    rounds = max(1, math.ceil(repeats / BURST))
    if remote is not None and (emulated := runtime_class(target.runtime).device_emulation(remote)):
        raise RegnasError(
            f"the device at {remote} is emulated ({emulated}); a latency table needs the real device's timings: "
            "run the RPC server on the board"
        )
    with tempfile.TemporaryDirectory() as tmp:
        root = cache if cache is not None else Path(tmp)
        opened = []
        for key, module, shape in tqdm(items, desc=f"{desc} export {target.name}", unit="item", disable=not progress):
            work = root / hashlib.sha256(key.encode()).hexdigest()[:16]
            done = work / "artifact"
            if done.is_file():
                path = work / done.read_text()
            else:
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir(parents=True)
                path = export_on_target(module, shape, target, work, remote)
                done.write_text(str(path.relative_to(work)))
            rt = load_runtime(target.runtime, path, target.threads, remote)
            x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
            rt.time_ms(x, warmup, 1)
            opened.append((rt, x))
        samples: list[list[np.ndarray]] = [[] for _ in opened]
        order, rng = list(range(len(opened))), random.Random(seed)
        started, done = time.perf_counter(), 0
        with tqdm(total=rounds, desc=f"{desc} {target.name}", unit="round", disable=not progress) as bar:
            while done < rounds or time.perf_counter() - started < MIN_TIMING_S:
                rng.shuffle(order)
                for i in order:
                    rt, x = opened[i]
                    samples[i].append(rt.time_ms(x, ROUND_WARMUP, BURST))
                done += 1
                bar.update()
    return [_summary(np.concatenate(s)) for s in samples]


def timing_method(repeats: int) -> str:
    """How `time_interleaved` times `repeats` runs per item, for provenance."""
    rounds = math.ceil(repeats / BURST)
    return f"interleaved: shuffled rounds of {BURST} runs after {ROUND_WARMUP} untimed, at least {rounds} rounds and {MIN_TIMING_S:g} s"


def provenance(target: Target, remote: Remote | None, warmup: int, repeats: int) -> dict:
    from regnas import __version__

    return {
        "host": str(remote) if remote else platform.node(),
        "cpu": "remote device" if remote else cpu_model(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "runtime": target.runtime,
        "runtime_version": runtime_class(target.runtime).package_version(),
        "threads": target.threads,
        "precision": target.precision,
        "tvm_target": target.tvm_target if target.runtime == "tvm" and remote else ("llvm" if target.runtime == "tvm" else None),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "warmup": warmup,
        "repeats": repeats,
        "timing": timing_method(repeats),
        "batch": 1,
        "regnas": __version__,
    }


def profile(
    target: Target,
    space: SearchSpace,
    out: Path,
    remote: Remote | None = None,
    warmup: int = 10,
    repeats: int = 50,
    progress: bool = True,
) -> LUT:
    """Measure every unit of `space` on `target` into the LUT at `out`, interleaved.

    Exports are kept beside `out` (`<out>.units/`) until the LUT is written, so a killed profile
    resumes without exporting again; units of an unfinished LUT from an older regnas are kept.
    """
    origin = provenance(target, remote, warmup, repeats)
    lut = LUT(target.name, target.runtime, target.precision, target.threads, space.name, space.config, origin)
    if out.is_file():
        old = load_lut(out)
        same = (old.runtime, old.precision, old.threads, old.space, old.space_config) == (
            lut.runtime,
            lut.precision,
            lut.threads,
            lut.space,
            lut.space_config,
        )
        measured_alike = all(old.provenance.get(k) == lut.provenance[k] for k in ("host", "timing"))
        if same and measured_alike:
            lut.entries = old.entries
            if lut.entries:
                logger.info(f"profile: resuming {out} ({len(lut.entries)} units measured)")
    units = space.all_units()
    todo = [u for u in units if unit_key(u) not in lut.entries]
    cache = out.with_name(out.name + ".units")
    if todo:
        items = [(unit_key(u), *space.build_unit(u)) for u in todo]
        timed = time_interleaved(items, target, remote, warmup, repeats, cache=cache, desc="profile", progress=progress)
        lut.entries.update({unit_key(u): t for u, t in zip(todo, timed)})
    lut.complete = True
    save_lut(out, lut)
    shutil.rmtree(cache, ignore_errors=True)
    logger.info(f"profile: {len(units)} units of {space.name} on {target.name} → {out}")
    return lut


def _metrics(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    err = (predicted - measured) / measured
    rho = spearmanr(predicted, measured).statistic if len(measured) > 1 else float("nan")
    return {
        "n": len(measured),
        "within_5pct": float(np.mean(np.abs(err) <= 0.05)),
        "within_10pct": float(np.mean(np.abs(err) <= 0.10)),
        "rmspe": float(np.sqrt(np.mean(err**2))),
        "spearman": float(rho),
    }


def repeatability(
    target: Target, space: SearchSpace, n: int, seed: int = 1, remote: Remote | None = None, warmup: int = 10, repeats: int = 50
) -> dict:
    """Time `n` random subnets in two separate interleaved passes (over the same exports) and score the second against the first.

    This is the ceiling for any predictor on this device: a LUT cannot agree with a measurement
    better than the measurement agrees with itself.
    """
    archs = random_archs(space, n, random.Random(seed), set())
    items = [(str(i), space.build_subnet(a), space.input_shape) for i, a in enumerate(archs)]
    with tempfile.TemporaryDirectory() as cache:  # both passes load the same exports: only the timing repeats
        passes = [
            np.array([t["median_ms"] for t in time_interleaved(items, target, remote, warmup, repeats, seed=i, cache=Path(cache))])
            for i in range(2)
        ]
    return {**_metrics(passes[1], passes[0]), "first_ms": passes[0].tolist(), "second_ms": passes[1].tolist()}


def random_archs(space: SearchSpace, n: int, rng: random.Random, exclude: set) -> list[Arch]:
    """`n` distinct random archs not in `exclude`, the largest and smallest first."""
    out: list[Arch] = []
    for arch in (space.smallest(), space.largest()):
        if arch not in exclude and len(out) < n:
            out.append(arch)
    tries = 0
    while len(out) < n and tries < 100 * n:
        arch = space.sample(rng)
        tries += 1
        if arch not in exclude and arch not in out:
            out.append(arch)
    return out


def validate(
    target: Target,
    space: SearchSpace,
    lut: LUT,
    n: int = 50,
    n_fit: int = 30,
    seed: int = 0,
    remote: Remote | None = None,
    progress: bool = True,
) -> dict:
    """Fit the calibration on `n_fit` random subnets, then score predictions on `n` others (before and after).

    Fit and held-out subnets are timed in one interleaved pass, so both sets see the same host.
    """
    warmup, repeats = lut.provenance.get("warmup", 10), lut.provenance.get("repeats", 50)
    rng = random.Random(seed)
    fit = random_archs(space, n_fit, rng, set())
    held = random_archs(space, n, rng, set(fit))

    items = [(str(i), space.build_subnet(a), space.input_shape) for i, a in enumerate(fit + held)]
    timed = time_interleaved(items, target, remote, warmup, repeats, seed=seed, desc="validate", progress=progress)
    measured = np.array([t["median_ms"] for t in timed])
    fit_ms, held_ms = measured[: len(fit)], measured[len(fit) :]
    lut.calibration = None
    plain = np.array([lut.plain_ms(space, a) for a in held])
    lut.fit(space, fit, fit_ms.tolist())
    calibrated = np.array([lut.predict_ms(space, a) for a in held])
    result = {
        **_metrics(calibrated, held_ms),
        "before_calibration": _metrics(plain, held_ms),
        "n_fit": len(fit),
        "fit_ms": fit_ms.tolist(),
        "measured_ms": held_ms.tolist(),
        "predicted_ms": calibrated.tolist(),
        "plain_ms": plain.tolist(),
        "seed": seed,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    lut.validation = result
    logger.info(
        f"validate {target.name}: within 10% {result['within_10pct']:.0%} (plain sum {result['before_calibration']['within_10pct']:.0%}), "
        f"Spearman {result['spearman']:.3f}, RMSPE {result['rmspe']:.1%} (plain {result['before_calibration']['rmspe']:.1%})"
    )
    return result


def validate_lut(
    target: Target,
    space: SearchSpace,
    lut_path: Path | None,
    lut_dir: Path | None,
    n: int = 50,
    n_fit: int = 30,
    seed: int = 0,
    remote: Remote | None = None,
    progress: bool = True,
) -> tuple[Path, dict]:
    """Validate (and calibrate) the target's LUT, given or found as `find_lut` finds it, and save it back."""
    from regnas.targets.lut import find_lut

    if lut_path:
        path, lut = Path(lut_path), load_lut(lut_path)
        if (problem := lut.mismatch(target, space)) is not None:
            raise RegnasError(f"{path} was measured for {problem}; pick this target's and space's LUT")
    else:
        found = find_lut(target, space, lut_dir)
        if found is None:
            shape = space.input_shape
            raise RegnasError(f"no LUT for {target.name} and {space.name} at {shape}; run regnas profile --target {target.name} first")
        path, lut = found
    target = dataclasses.replace(target, threads=lut.threads)  # measure subnets as the units were measured
    result = validate(target, space, lut, n, n_fit, seed, remote, progress=progress)
    save_lut(path, lut)
    return path, result

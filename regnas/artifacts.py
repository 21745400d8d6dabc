"""Export a built family to every format its targets ask for, with flip-aware quantization.

Each target's member is exported by the exporters its TOML names, at their precisions. A
quantized artifact must show on val (never test) a flip rate against its fp32 model within the
target's `max_nfr_vs_fp32` (the check's own criterion, so the test split tends to pass it too), at
95% confidence over every configuration its search may judge on that val: the first of many noisy
counts to pass is a lucky one otherwise. One that does not is re-quantized over its exporter's
global options, then, if still above, keeps its most flip-sensitive units (ranked on calib, so val
only judges) in float, as few as meet the goal. What that costs is timed in the artifact's runtime
beside the artifact fully quantized (interleaved rounds, a fresh process): where it exceeds the
target's `max_int8_slowdown`, the configuration with the next fewest val flips is timed, and so on.
Where a target deploys a format in several runtimes (its `runtimes`: ONNX files in ONNX Runtime and
OpenVINO), a trial's flips are counted in each that runs here, and the worst one counts.
Before, after and every trial are recorded.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import tempfile
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from regnas.builddir import ArtifactRecord, inside, load_member, member_dir
from regnas.data import Dataset, to_float
from regnas.errors import LoweringFailed, RegnasError, Unavailable
from regnas.evaluate import predict
from regnas.exporters import Exported, Exporter, ExportJob, create_exporter
from regnas.flips import lower_bound, negative_flips, nfr, top1, upper_bound
from regnas.io import copy_into_place, sha256_file
from regnas.quantsim import unit_sensitivity
from regnas.runtimes import Runtime, load_runtime, runtime_class
from regnas.targets import Target

logger = logging.getLogger(__name__)

CONFIDENCE = 0.95
"""Confidence, over every configuration one artifact's search may judge, that the one kept is within its flip limit."""


PREDICT_THREADS = torch.get_num_threads()
"""Runtime threads for predictions (flip counts, not timings): as many as torch computes with (every core unless
OMP_NUM_THREADS says fewer), since nothing else runs meanwhile."""
RANK_SAMPLES = 1000
"""Calib images that score each unit's sensitivity (val judges the configurations, and only that)."""
RANK_CALIB = 128
"""Calibration images per single-unit quantization while ranking (the chosen configuration uses the exporter's own)."""
SCORE_CHUNK = 1000
"""Val images predicted between checks of whether a trial already flips more than it may (`_QuantSearch.score`)."""


class _QuantSearch:
    """Flip-aware quantization of one artifact: trials scored on val against the fp32 model's predictions.

    Exporters write every trial to the artifact's own path, so `last` remembers which options the
    files on disk hold, and each trial's files are kept aside in scratch (`kept`): timing a trial or
    shipping the winner copies back the very bytes that were scored instead of exporting again (an
    ExecuTorch lowering takes 10-20 s).
    """

    def __init__(
        self,
        exporter: Exporter,
        job: ExportJob,
        precision: str,
        runtimes: list[str],
        val: tuple[np.ndarray, np.ndarray, np.ndarray],
    ):
        self.exporter, self.job, self.precision = exporter, job, precision
        self.runtime, self.runtimes = runtimes[0], runtimes
        """The artifact's own runtime (what ranks units and times trials), and every runtime a trial's flips are counted in."""
        self.x, self.fp32, self.labels = val
        self.last: tuple[dict[str, Any], list[Exported]] | None = None
        self.kept: dict[str, tuple[list[Exported], Path]] = {}

    def allowed_flips(self, limit: float, configurations: int = 1) -> int:
        """The most val flips that still show a flip rate within `limit` (the check's `passed`), at 95% confidence
        over `configurations` judged on the same val (Bonferroni).

        Taking the first of several noisy counts that passes keeps a lucky one: a QDQ int8 artifact
        kept at 4 flips of 5,000 val images flipped 32 of 10,000 test images. Where val is too small
        for the corrected bound, the check's own 95%; where too small even for that at 0 flips, the
        most flips that do not show a rate above `limit` (the check's `failed`): on a few hundred
        images one flip is noise, not a reason to search.
        """
        n = len(self.labels)
        for confidence in (1 - (1 - CONFIDENCE) / configurations, CONFIDENCE):
            confident = [k for k in range(int(limit * n) + 1) if upper_bound(k, n, confidence) <= limit]
            if confident:
                return max(confident)
        return max((k for k in range(n + 1) if lower_bound(k, n, CONFIDENCE) <= limit), default=-1)

    def export(self, options: dict[str, Any]) -> tuple[list[Exported], Exported]:
        """The artifact's files written with `options` (exported, or copied back from the trial that wrote them)."""
        if self.last is None or self.last[0] != options:
            key = _key(options)
            if key in self.kept:
                exported, folder = self.kept[key]
                for path in _written(exported):
                    copy_into_place(folder / path.name, path)
            else:
                exported = self.exporter.export(self.job, self.precision, options)
                folder = Path(tempfile.mkdtemp(prefix="trial-", dir=self.job.scratch))
                for path in _written(exported):
                    copy_into_place(path, folder / path.name)
                self.kept[key] = (exported, folder)
            self.last = (options, exported)
        return self.last[1], self._own(self.last[1])

    def snapshot(self, options: dict[str, Any]) -> Path:
        """The runnable file of the trial with `options`, as kept aside (later trials overwrite the artifact's path), to time it:
        exported if it never was, but not copied back onto the artifact's path."""
        if _key(options) not in self.kept:
            self.export(options)
        exported, folder = self.kept[_key(options)]
        return folder / self._own(exported).path.name

    def _own(self, exported: list[Exported]) -> Exported:
        """The exported file the artifact's own runtime runs."""
        return next(e for e in exported if e.status == "ok" and e.runtime == self.runtime)

    def score(self, options: dict[str, Any], stop_above: int | None = None) -> dict[str, Any]:
        """Export with `options` and count its flips against the fp32 model on val, in each runtime: the worst one counts.

        With `stop_above`, counting stops once the flips exceed it: the trial is then known to be worse than one
        already scored, or than the limit, and its `flips_val` is a lower bound (`stopped_after` says after how
        many val images; most trials flip far more than the winner, and predicting all of val is their main cost).
        Options the backend cannot lower score as flipping every val image (`lowering_failed` says why): never chosen."""
        try:
            _, run = self.export(options)
        except LoweringFailed as exc:
            logger.info(f"export: {self.exporter.name}-{self.precision} with {options} skipped: {exc}")
            n = len(self.labels)
            return {"options": options, "flips_val": n, "nfr_val": 1.0, "top1_val": 0.0, "lowering_failed": str(exc)}
        by_runtime = {}
        for runtime in self.runtimes:
            by_runtime[runtime] = self._count(load_runtime(runtime, run.path, PREDICT_THREADS), stop_above)
            if "stopped_after" in by_runtime[runtime]:
                break
        worst = max(by_runtime.values(), key=lambda r: (r["flips_val"], "stopped_after" in r))
        return {"options": run.options, **worst, **({"by_runtime": by_runtime} if len(self.runtimes) > 1 else {})}

    def _count(self, rt: Runtime, stop_above: int | None) -> dict[str, Any]:
        n = len(self.labels)
        step = n if stop_above is None else SCORE_CHUNK
        preds = np.empty(0, dtype=np.int64)
        for i in range(0, n, step):
            preds = np.concatenate([preds, rt.predict(self.x[i : i + step])])
            seen = len(preds)
            flips = int(negative_flips(self.fp32[:seen], preds, self.labels[:seen]).sum())
            if stop_above is not None and flips > stop_above and seen < n:
                return {"flips_val": flips, "nfr_val": flips / n, "top1_val": top1(preds, self.labels[:seen]), "stopped_after": seen}
        return {"flips_val": flips, "nfr_val": nfr(self.fp32, preds, self.labels), "top1_val": top1(preds, self.labels)}

    def rank(self, options: dict[str, Any], units: list[str]) -> list[dict[str, Any]]:
        """Each unit's sensitivity: how far quantizing it alone moves the predictions (changed labels, then mean |Δscore|),
        simulated in PyTorch where the exporter names each unit's module, else by exporting the unit alone."""
        import torch

        x = to_float(self.job.calib[:RANK_SAMPLES])
        modules = self.exporter.unit_modules(self.job, units)
        if len(modules) == len(units):
            key = tuple(modules.items())  # formats built from one ONNX graph (ONNX Runtime, TensorRT) rank the same units
            if key not in self.job.rankings:
                self.job.rankings[key] = unit_sensitivity(self.job.model, modules, to_float(self.job.calib[:RANK_CALIB]), x)
            return self.job.rankings[key]
        with torch.no_grad():
            ref = self.job.model.eval()(torch.from_numpy(x)).numpy()
        out = []
        for unit in units:
            _, run = self.export({**options, "quantize_only": [unit], "calib_samples": RANK_CALIB})
            scores = _scores(self.runtime, run.path, x)
            changed = int((scores.argmax(1) != ref.argmax(1)).sum())
            out.append({"unit": unit, "changed": changed, "drift": float(np.abs(scores - ref).mean())})
        return sorted(out, key=lambda r: (-r["changed"], -r["drift"]))

    def within_slowdown(
        self,
        full: dict[str, Any],
        best: tuple[dict[str, Any], dict[str, Any]],
        trials: list[dict[str, Any]],
        cap: float,
        record: dict[str, Any],
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Of `best` (score, options) and the fallback's `trials`, the one with the fewest val flips whose batch-1 latency
        is within `cap` times the fully quantized one's (`full`, timed side by side); `full` itself where none is.

        Keeping units in float costs more than their share of the work where float and int8 regions meet (each
        boundary adds a quantize or dequantize and breaks fusions), so it is measured, not modelled.
        """
        fully = self.snapshot(full)
        lowered = [t for t in sorted(trials, key=_order) if t is not best[0] and not ({"lowering_failed", "stopped_after"} & t.keys())]
        candidates = [best] + [(t, {**full, "keep_float": t["kept_float"]}) for t in lowered]
        record["max_slowdown"] = cap
        for score, opts in candidates:
            chosen_ms, fully_ms = interleaved_ms(self.runtime, [self.snapshot(opts), fully], self.job.input_shape)
            score["slowdown"] = chosen_ms / fully_ms
            record["latency_ms"] = {"chosen": chosen_ms, "fully_quantized": fully_ms}
            if score["slowdown"] <= cap:
                return score, opts
        logger.info(f"export: every configuration that keeps units in float is slower than {cap:g}x fully quantized; keeping none")
        record["latency_ms"]["chosen"] = record["latency_ms"]["fully_quantized"]
        return self.score(full), full

    @staticmethod
    def fallback_trials(units: int) -> int:
        """The most configurations `fallback` judges over `units` ranked units: doubling, then bisection."""
        return 2 * math.ceil(math.log2(units)) + 1 if units else 0

    def fallback(
        self, options: dict[str, Any], ranked: list[str], allowed: int, to_beat: int | None = None
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The fewest most-sensitive units kept in float that bring val flips within `allowed` (doubling, then bisection).

        Where none does, the trial with the fewest flips, which the caller compares with its best (`to_beat` flips):
        a trial that flips more than both that and `allowed` is stopped early (`score`)."""
        tried: dict[int, dict[str, Any]] = {}

        def trial(k: int) -> dict[str, Any]:
            if k not in tried:
                keep = [*options.get("keep_float", []), *ranked[:k]]
                counted = [t["flips_val"] for t in tried.values() if "stopped_after" not in t]
                bar = min([*counted, *([to_beat] if to_beat is not None else [])], default=None)
                tried[k] = {**self.score({**options, "keep_float": keep}, _stop(allowed, bar)), "kept_float": keep}
            return tried[k]

        k = 1
        while k < len(ranked) and trial(k)["flips_val"] > allowed:
            k *= 2
        k = min(k, len(ranked))
        if trial(k)["flips_val"] > allowed:
            best = min(tried.values(), key=lambda t: (t["flips_val"], len(t["kept_float"])))
            return best, list(tried.values())
        lo = max((j for j in tried if j < k), default=0)  # the largest count known (or assumed, at 0) not to meet the goal
        while k - lo > 1:
            mid = (lo + k) // 2
            lo, k = (lo, mid) if trial(mid)["flips_val"] <= allowed else (mid, k)
        return trial(k), list(tried.values())


def _key(options: dict[str, Any]) -> str:
    return json.dumps(options, sort_keys=True)


def _written(exported: list[Exported]) -> list[Path]:
    """The files an export wrote, with those beside them that decide how they run."""
    files = [f for e in exported if e.status == "ok" for f in (e.path, *runtime_class(e.runtime).companions(e.path))]
    return [f for f in files if f.exists()]


def _scores(runtime: str, path: Path, x: np.ndarray) -> np.ndarray:
    rt = load_runtime(runtime, path, PREDICT_THREADS)
    return np.concatenate([rt.scores(x[i : i + rt.max_batch]) for i in range(0, len(x), rt.max_batch)])


def _time_files(runtime: str, paths: list[str], input_shape: tuple[int, ...], rounds: int, repeats: int) -> list[float]:
    x = np.random.default_rng(0).random((1, *input_shape), dtype=np.float32)
    loaded = [load_runtime(runtime, Path(p)) for p in paths]
    for rt in loaded:
        rt.time_ms(x, warmup=20, repeats=1)
    times: list[list[float]] = [[] for _ in loaded]
    for _ in range(rounds):
        for rt, t in zip(loaded, times):
            t.append(float(np.median(rt.time_ms(x, warmup=2, repeats=repeats))))
    return [float(np.median(t)) for t in times]


def interleaved_ms(runtime: str, paths: list[Path], input_shape: tuple[int, ...], rounds: int = 5, repeats: int = 20) -> list[float]:
    """Batch-1 latency of each file in its runtime, one thread: the median of each round's median over interleaved
    rounds, so a slow phase of the host lands on every file, in a fresh process: in the exporting one an ExecuTorch
    program timed at 0.39 ms took 0.25 ms alone, and back to back one file's 100 runs moved by 30-50%."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_time_files, (runtime, [str(p) for p in paths], tuple(input_shape), rounds, repeats))


def _stop(allowed: int, best: int | None) -> int | None:
    """Flips past which a trial need not be counted: over the limit and over the best found (None: count them all)."""
    return None if best is None else max(allowed, best)


def _better(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a["flips_val"], -a["top1_val"]) < (b["flips_val"], -b["top1_val"])


def _order(trial: dict[str, Any]) -> tuple[int, int]:
    """Fallback trials from the fewest val flips, then the fewest units in float."""
    return trial["flips_val"], len(trial["kept_float"])


def flip_aware(
    exporter: Exporter, job: ExportJob, precision: str, target: Target, val: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[list[Exported], dict[str, Any] | None]:
    """Export with the default options; while the runnable artifact flips more than the target allows on val (never test):
    first the exporter's global options (the one with the fewest flips is kept), then per-unit fallback (the units whose
    quantization alone moves predictions most stay in float, as few as meet the target; where none does, the fewest
    flips found), within the target's latency cap where the artifact's own runtime runs here."""
    forced = list(target.keep_float.get(exporter.name, ())) if precision == "int8" else []
    grid = [{**o, "keep_float": [*forced, *o.get("keep_float", [])]} if forced else o for o in exporter.option_grid(precision)]
    exported = exporter.export(job, precision, grid[0])
    runnable = [e for e in exported if e.status == "ok" and runtime_class(e.runtime).runs_here(e.path)]
    if len(grid) == 1 or not runnable:
        return exported, None
    own = runnable[0]
    runtimes = [r for r in target.check_runtimes(exporter.name, own.runtime) if runtime_class(r).runs_here(own.path)]
    search = _QuantSearch(exporter, job, precision, runtimes, val)
    search.last = (grid[0], exported)
    limit, label = target.max_nfr_vs_fp32, f"{target.name} {exporter.name}-{precision}"
    units = exporter.float_candidates(job, precision)
    configurations = len(grid) + search.fallback_trials(len(units))
    allowed = search.allowed_flips(limit, configurations)
    before = search.score(grid[0])
    record = {"selected_on": "val", "runtime": search.runtime, "threshold": limit, "allowed_val_flips": allowed}
    record |= {"runtimes": runtimes} if len(runtimes) > 1 else {}
    record["configurations"] = configurations
    record |= {"before": before, "after": before, "tried": [before]}
    if before["flips_val"] <= allowed:
        return exported, record
    logger.info(f"export: {label} flips {before['nfr_val']:.2%} of val; searching quantization options")
    best, best_opts = before, grid[0]
    for opts in grid[1:]:  # in the exporter's order, the likeliest to hold first: the first that holds is kept
        score = search.score(opts, _stop(allowed, best["flips_val"]))
        record["tried"].append(score)
        if _better(score, best):
            best, best_opts = score, opts
        if best["flips_val"] <= allowed:
            break
    if best["flips_val"] > allowed and units:
        logger.info(f"export: {label} still flips {best['nfr_val']:.2%} of val; ranking its {len(units)} units by flip sensitivity")
        full = {**{k: v for k, v in best_opts.items() if k != "keep_float"}, **({"keep_float": forced} if forced else {})}
        ranking = search.rank(full, units)
        chosen, trials = search.fallback(full, [r["unit"] for r in ranking], allowed, best["flips_val"])
        record["tried"] += trials
        record["ranking"] = ranking
        if _better(chosen, best):
            best, best_opts = chosen, {**full, "keep_float": chosen["kept_float"]}
        if runtime_class(search.runtime).exporter == exporter.name:  # a stand-in runtime's latency says nothing of the format's
            best, best_opts = search.within_slowdown(full, (best, best_opts), trials, target.max_int8_slowdown, record)
    exported, _ = search.export(best_opts)
    record["after"] = best
    record["kept_float"] = list(best_opts.get("keep_float", []))
    logger.info(f"export: {label} kept {best['options']} ({best['nfr_val']:.2%} val flips)")
    return exported, record


def export_family(out: Path, targets: list[Target], data: Dataset) -> list[ArtifactRecord]:
    """Export every member under `out/<target>/` with its target's exporters; artifacts in target order."""
    for t in targets:
        for name in t.exporters:
            create_exporter(name).check_available()
    calib = data["calib"].x.numpy()
    val_x, val_y = data["val"].x, data["val"].y.numpy()
    artifacts: list[ArtifactRecord] = []
    for target in targets:
        _, net = load_member(out / target.name)
        fp32_val = predict(net, val_x)
        with tempfile.TemporaryDirectory() as scratch:
            job = ExportJob(net, tuple(val_x.shape[1:]), calib, out / target.name, Path(scratch))
            for name, precisions in target.exporters.items():
                exporter = create_exporter(name)
                for precision in precisions:
                    logger.info(f"export: {target.name} {name} {precision}")
                    exported, quant = flip_aware(exporter, job, precision, target, (val_x.numpy(), fp32_val, val_y))
                    for e in exported:
                        written = e.status == "ok" and e.path.exists()
                        artifacts.append(
                            ArtifactRecord(
                                target=target.name,
                                format=e.format,
                                precision=e.precision,
                                path=str(e.path.relative_to(out)),
                                sha256=sha256_file(e.path) if written else None,
                                companions=_companions(e.runtime, e.path) if written else {},
                                runtime=e.runtime,
                                status=e.status,
                                command=e.command,
                                options=e.options,
                                quantization=quant if quant and e.runtime == quant["runtime"] else None,
                            )
                        )
    return artifacts


def _companions(runtime: str, path: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in runtime_class(runtime).companions(path) if p.is_file()}


def artifact_path(out: Path, artifact: ArtifactRecord) -> Path:
    """Where an artifact is: inside its member's folder of the build (anything else is refused, and never opened)."""
    path = inside(out, artifact.path, f"artifact of {artifact.target}")
    if member_dir(out, artifact.target).resolve() not in path.resolve().parents:
        raise RegnasError(
            f"artifact {artifact.path!r} in {out / 'report.json'} is not in its member's folder {artifact.target}/; rebuild it"
        )
    return path


def verify_artifact(out: Path, artifact: ArtifactRecord) -> None:
    """Fail unless an exported artifact (and the files beside it that decide how it runs) is inside its member's folder
    and has the bytes report.json recorded; nothing is opened but to hash it."""
    if artifact.sha256 is None:
        return
    path = artifact_path(out, artifact)
    if not path.exists():
        raise RegnasError(f"artifact {artifact.label} is missing ({path}); re-run regnas export {out}")
    if sha256_file(path) != artifact.sha256:
        raise RegnasError(f"artifact {artifact.label} no longer matches its sha256 in report.json; re-run regnas export {out}")
    for name, digest in artifact.companions.items():
        if not isinstance(name, str) or len(PurePath(name).parts) != 1:
            raise RegnasError(f"companion {name!r} of {artifact.label} in report.json is not a file name; rebuild it")
        side = inside(out, PurePath(artifact.path).with_name(name), f"companion of {artifact.label}")
        if not side.is_file() or sha256_file(side) != digest:
            raise RegnasError(f"{side} (which decides how {artifact.label} runs) changed since export; re-run regnas export {out}")


def open_artifact(out: Path, artifact: ArtifactRecord, threads: int = 1, remote=None):
    """Load an artifact's runtime after verifying its bytes; Unavailable when it cannot run here."""
    if artifact.status != "ok" and artifact.sha256 is None:
        raise Unavailable(artifact.status.removeprefix("skipped: "))
    verify_artifact(out, artifact)
    return load_runtime(artifact.runtime, artifact_path(out, artifact), threads, remote)

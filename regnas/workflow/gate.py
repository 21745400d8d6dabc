"""`regnas gate`: fail CI when a candidate model flips samples its reference got right.

Reference and candidate are ONNX files (any image classifier), family members saved by
`regnas build` (`BUILD_DIR/<target>`), or saved predictions (`.npy` / `.json`). The decision uses
the exact (Clopper-Pearson) one-sided upper confidence bound of the negative flip rate, so a
small evaluation set cannot pass by luck: pass iff `nfr_upper <= max_nfr` and the top-1 drop is
within `max_top1_drop`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import numpy as np

from regnas.builddir import is_build, is_member, load_member
from regnas.data import Split, to_float
from regnas.errors import RegnasError
from regnas.flips import negative_flips, top1, upper_bound
from regnas.io import atomic_path, read_json, write_json


@dataclass(frozen=True)
class Preprocess:
    """How images in [0, 1] become model inputs for an ONNX file: `(x - mean) / std` per channel."""

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        c = x.shape[1]
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        if len(mean) not in (1, c) or len(std) not in (1, c):
            raise RegnasError(f"--mean/--std give {len(mean)}/{len(std)} values but the images have {c} channels; give 1 or {c}")
        return (x - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)


def _check_predictions(pred: np.ndarray, n: int, classes: int, source: str) -> np.ndarray:
    if np.issubdtype(pred.dtype, np.floating) and not np.isfinite(pred).all():
        raise RegnasError(f"{source}: its scores contain NaN or infinite values; fix the model or the predictions")
    if pred.ndim == 2:
        if pred.shape[1] != classes:
            raise RegnasError(f"{source} scores {pred.shape[1]} classes but the data has {classes}; the label sets differ")
        pred = pred.argmax(1)
    if pred.ndim != 1 or not np.issubdtype(pred.dtype, np.integer):
        raise RegnasError(f"{source}: predictions must be integer class indices (or N×classes scores), got {pred.dtype} {pred.shape}")
    if len(pred) != n:
        raise RegnasError(f"{source} has {len(pred)} predictions but the data has {n} samples; use the same data and split")
    if len(pred) and (pred.min() < 0 or pred.max() >= classes):
        bad = int(pred.min()) if pred.min() < 0 else int(pred.max())
        raise RegnasError(f"{source} predicts class {bad}, outside the data's classes 0 to {classes - 1}; the label sets differ")
    return pred.astype(np.int64)


def _model_predictions(net_scores, input_shape: tuple, x: np.ndarray, source: str, batch: int = 500) -> np.ndarray:
    """`net_scores` over batches of `x` (stored images, made model inputs a batch at a time)."""
    expected = tuple(input_shape)
    got = tuple(x.shape[1:])
    if len(expected) != 3 or any(e is not None and e != g for e, g in zip(expected, got)):
        shown = "×".join("?" if e is None else str(e) for e in expected)
        raise RegnasError(
            f"{source} expects inputs {shown} but the data is {'×'.join(map(str, got))}; resize the data or use a matching model"
        )
    return np.concatenate([net_scores(to_float(x[i : i + batch])) for i in range(0, len(x), batch)])


def model_scores(source: str | Path, split: Split, preprocess: Preprocess = Preprocess(), threads: int = 1) -> np.ndarray | None:
    """N×classes scores of a model (an ONNX file or a build member folder) on `split`; None for a predictions file."""
    path = Path(source)
    if path.suffix == ".onnx":
        from regnas.runtimes import runtime_for

        rt = runtime_for(path, threads)
        return _model_predictions(lambda x: rt.scores(preprocess(x)), rt.input_shape, split.x.numpy(), str(path))
    if path.is_dir() and is_member(path):
        import torch

        space, net = load_member(path)

        def scores(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return net(torch.from_numpy(x)).numpy()

        return _model_predictions(scores, space.input_shape, split.x.numpy(), str(path))
    return None


def predictions(source: str | Path, split: Split, classes: int, preprocess: Preprocess = Preprocess(), threads: int = 1) -> np.ndarray:
    """Predicted class per sample of `split` from a model or a predictions file."""
    path = Path(source)
    n = len(split)
    if path.suffix == ".npy":
        if not path.is_file():
            raise RegnasError(f"predictions file not found: {path}; check the path")
        try:
            pred = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise RegnasError(f"{path} is not a readable .npy file ({exc}); save it with numpy.save") from exc
    elif path.suffix == ".json":
        obj = read_json(path, "predictions file")
        try:
            pred = np.asarray(obj.get("predictions") if isinstance(obj, dict) else obj)
        except ValueError:  # ragged nested lists
            pred = np.asarray(None)
        if pred.dtype == object or pred.ndim == 0:
            raise RegnasError(f'{path}: give a JSON list of class indices or {{"predictions": [...]}}')
    elif (scores := model_scores(path, split, preprocess, threads)) is not None:
        pred = scores
    elif path.is_dir() and is_build(path):
        targets = sorted(p.name for p in path.iterdir() if is_member(p))
        raise RegnasError(f"{path} is a build directory; name a member, e.g. {path / (targets[0] if targets else '<target>')}")
    elif not path.exists():
        raise RegnasError(f"model or predictions not found: {path}; check the path")
    else:
        raise RegnasError(f"{path}: give an .onnx model, a build member directory (BUILD_DIR/<target>), or .npy/.json predictions")
    return _check_predictions(pred, n, classes, str(path))


@dataclass
class GateResult:
    """The gate's decision and the evidence for it."""

    n: int
    flips: int
    nfr: float
    nfr_upper: float
    confidence: float
    max_nfr: float
    top1_reference: float
    top1_candidate: float
    top1_drop: float
    max_top1_drop: float
    passed: bool
    reasons: list[str] = field(default_factory=list)
    flipped: list[dict[str, int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: np.ndarray,
    max_nfr: float,
    max_top1_drop: float,
    confidence: float,
    list_limit: int = 20,
) -> GateResult:
    """Compare candidate against reference on labelled data and decide pass or fail."""
    mask = negative_flips(reference, candidate, labels)
    n, flips = len(labels), int(mask.sum())
    rate = flips / n if n else 0.0
    upper = upper_bound(flips, n, confidence)
    t_ref, t_cand = top1(reference, labels), top1(candidate, labels)
    reasons = []
    if max_nfr == 0:  # no bound is ever 0: a zero limit is judged on the count itself
        if flips:
            reasons.append(f"{flips} negative flips where --max-nfr 0 allows none")
    elif upper > max_nfr:
        reasons.append(
            f"NFR upper bound {100 * upper:.2f}% (at {confidence:.0%} confidence; point {100 * rate:.2f}%) exceeds {100 * max_nfr:.2f}%"
        )
    if t_ref - t_cand > max_top1_drop:
        reasons.append(f"top-1 dropped {100 * (t_ref - t_cand):.2f} points, more than {100 * max_top1_drop:.2f}")
    flipped = [
        {"index": int(i), "label": int(labels[i]), "reference": int(reference[i]), "candidate": int(candidate[i])}
        for i in np.flatnonzero(mask)[:list_limit]
    ]
    return GateResult(
        n, flips, rate, upper, confidence, max_nfr, t_ref, t_cand, t_ref - t_cand, max_top1_drop, not reasons, reasons, flipped
    )


def gate(
    reference: str | Path,
    candidate: str | Path,
    data: str,
    split: str | None = None,
    seed: int = 0,
    image_size: int | None = None,
    max_nfr: float = 0.01,
    max_top1_drop: float = 0.01,
    confidence: float = 0.95,
    list_limit: int = 20,
    preprocess: Preprocess = Preprocess(),
    threads: int = 1,
) -> GateResult:
    """`regnas gate`: the candidate's negative flips against the reference on `data` (its `split`, as regnas build
    splits it with `seed`; default the whole set), judged against `max_nfr` and `max_top1_drop`."""
    from regnas.data import load_dataset

    if Path(reference).resolve() == Path(candidate).resolve():
        raise RegnasError(f"--reference and --candidate are the same ({reference}); pass the new model as --candidate")
    dataset = load_dataset(data, seed, image_size=image_size)
    chosen = dataset.split(split)
    ref = predictions(reference, chosen, dataset.num_classes, preprocess, threads)
    cand = predictions(candidate, chosen, dataset.num_classes, preprocess, threads)
    return decide(ref, cand, chosen.y.numpy(), max_nfr, max_top1_drop, confidence, list_limit)


def gate_build(
    out: Path,
    target: str,
    split: str = "test",
    max_nfr: float = 0.01,
    max_top1_drop: float = 0.01,
    confidence: float = 0.95,
    list_limit: int = 20,
    threads: int = 1,
) -> tuple[GateResult, str, str]:
    """`regnas gate --build DIR --target T`: the build's member T against the deployed model it was built against (its copy
    in the build), on the build's own `split` of its data; the result and what was compared."""
    from regnas.builddir import inside, member_dir, open_build
    from regnas.deployed import SPLITS, load_deployed

    if split not in SPLITS:
        raise RegnasError(f"--build gates on the build's {' or '.join(SPLITS)} split, not {split!r}; pass --split test")
    build = open_build(out)
    members = {m["target"]: m for m in build.report.get("deployed", {}).get("members", [])}
    if target not in members:
        have = ", ".join(members) or "none"
        raise RegnasError(f"{out} was built without a deployed model for {target!r} (it has {have}); build with --deployed {target}=PATH")
    reference = inside(out, members[target]["kept"], f"deployed model of {target}")
    candidate = member_dir(out, target)
    chosen = build.data[split]
    ref = load_deployed({target: reference}, build.data, threads)[target].predictions[split]
    cand = predictions(candidate, chosen, build.data.num_classes, threads=threads)
    result = decide(ref, cand, chosen.y.numpy(), max_nfr, max_top1_drop, confidence, list_limit)
    return result, f"{target} deployed ({members[target]['with']['deployed']})", str(candidate)


def markdown(result: GateResult, reference: str, candidate: str) -> str:
    """A pull-request comment."""
    verdict = "✅ passed" if result.passed else "❌ regression"
    lines = [
        f"### regnas gate: {verdict}",
        "",
        f"Reference `{reference}` → candidate `{candidate}` on {result.n} samples.",
        "",
        "| metric | value | limit |",
        "| --- | --- | --- |",
        f"| negative flips | {result.flips} ({100 * result.nfr:.2f}%) | |",
        f"| NFR upper bound ({result.confidence:.0%}) | {100 * result.nfr_upper:.2f}% | ≤ {100 * result.max_nfr:.2f}% |",
        f"| top-1 reference / candidate | {100 * result.top1_reference:.2f}% / {100 * result.top1_candidate:.2f}% "
        f"| drop ≤ {100 * result.max_top1_drop:.2f} pts |",
    ]
    lines += ["", *[f"- {r}" for r in result.reasons]] if result.reasons else []
    if result.flipped:
        lines += [
            "",
            f"<details><summary>First {len(result.flipped)} flipped samples</summary>",
            "",
            "| index | label | reference | candidate |",
            "| --- | --- | --- | --- |",
        ]
        lines += [f"| {f['index']} | {f['label']} | {f['reference']} | {f['candidate']} |" for f in result.flipped]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def junit(result: GateResult, reference: str, candidate: str) -> str:
    """JUnit XML with one test case per criterion, for CI test reporters."""
    suite = ET.Element("testsuite", name="regnas-gate", tests="2", failures=str(len(result.reasons)))
    checks = [
        ("negative_flip_rate", result.nfr_upper <= result.max_nfr, f"NFR upper {result.nfr_upper:.4f} > {result.max_nfr:.4f}"),
        ("top1_drop", result.top1_drop <= result.max_top1_drop, f"top-1 drop {result.top1_drop:.4f} > {result.max_top1_drop:.4f}"),
    ]
    for name, ok, message in checks:
        case = ET.SubElement(suite, "testcase", classname=f"{reference} -> {candidate}", name=name)
        if not ok:
            ET.SubElement(case, "failure", message=message).text = json.dumps(result.to_json()["flipped"])
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def write_outputs(
    result: GateResult, reference: str, candidate: str, json_path: Path | None, junit_path: Path | None, md_path: Path | None
) -> None:
    """Write whichever reports were asked for, each atomically."""
    if json_path:
        write_json(json_path, {**result.to_json(), "reference": reference, "candidate": candidate})
    for path, text in ((junit_path, junit(result, reference, candidate)), (md_path, markdown(result, reference, candidate))):
        if path:
            with atomic_path(path) as tmp:
                tmp.write_text(text)

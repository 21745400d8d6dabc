"""Deployed models: what each target runs in production now, which a new family must not contradict.

`regnas build --deployed phone=PATH` names, per target, an ONNX classifier, a member folder of an earlier
build (`OLD_BUILD/phone`), or saved predictions on the whole data set in its order (`.npy` / `.json`, as
`regnas gate` reads them). Each is validated before anything trains (it exists, runs on the data's
images, predicts its classes) and predicts the val and test splits once: the search counts a member's
flips against it (`λ3` of `--reward λ1,λ2,λ3`), the joint fine-tune pulls the member towards it (its logits,
or its predicted classes where only those are saved; by 0.02·λ3, `distill.DEPLOYED_PULL_PER_LAMBDA`), and the
report says how often each member flips what its deployed model got right, with the exact interval.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regnas.data import Dataset
from regnas.errors import RegnasError
from regnas.flips import interval, negative_flips, top1
from regnas.io import copy_into_place

logger = logging.getLogger(__name__)

SPLITS = ("val", "test")
"""The splits a deployed model predicts: val for the search, test for the report."""


@dataclass
class Deployed:
    """One target's deployed model and its predictions on val and test."""

    target: str
    source: str
    predictions: dict[str, np.ndarray]
    whole: np.ndarray | None = None
    """Saved predictions on the whole data set (None for a model, which is run on the splits it is asked about)."""

    @property
    def digest(self) -> str:
        """What the search's cache key records of it: its predictions, not its path."""
        h = hashlib.sha256()
        for split in SPLITS:
            h.update(np.ascontiguousarray(self.predictions[split], dtype=np.int64).tobytes())
        return h.hexdigest()

    def teacher(self, data: Dataset, threads: int = 1) -> torch.Tensor:
        """What the fine-tune pulls a member towards on every train image: the model's logits, or, for saved predictions,
        its predicted classes."""
        if self.whole is not None:
            return torch.from_numpy(self.whole[data["train"].index])
        from regnas.workflow.gate import model_scores

        scores = model_scores(Path(self.source), data["train"], threads=threads)
        return torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))

    def versus(self, new: np.ndarray, labels: np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
        """How `new` (test predictions) agrees with this model: NFR with its exact interval, and positive flips."""
        old = self.predictions["test"]
        flips = int(negative_flips(old, new, labels).sum())
        low, high = interval(flips, len(labels), confidence)
        return {
            "deployed": self.source,
            "nfr": flips / len(labels),
            "flips": flips,
            "nfr_interval": [low, high],
            "positive_flips": int(negative_flips(new, old, labels).sum()),  # what it got wrong and the new one right
            "top1_deployed": top1(old, labels),
            "n": len(labels),
        }


def parse_deployed(specs: list[str] | tuple[str, ...], targets: list[str]) -> dict[str, Path]:
    """`TARGET=PATH` per deployed model, checked against the build's targets (nothing is read yet)."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise RegnasError(f"--deployed {spec!r} is not TARGET=PATH; pass e.g. --deployed phone=models/phone.onnx")
        if name not in targets:
            raise RegnasError(f"--deployed names target {name!r}, which this build does not have; its targets are {', '.join(targets)}")
        if name in out:
            raise RegnasError(f"--deployed names target {name!r} twice; give one deployed model per target")
        if not Path(path).exists():
            raise RegnasError(f"deployed model for {name} not found: {path}; check the path")
        out[name] = Path(path)
    return out


KEPT = "deployed"
"""The build folder's copy of its deployed models (`deployed/<target>.onnx`, `.npy`, `.json`, or a member folder
`deployed/<target>/`): the build owns what it was judged against, and `regnas gate --build` reads it from there."""


def keep(out: Path, deployed: dict[str, Deployed]) -> dict[str, str]:
    """Copy each deployed model into `out/deployed/` (atomically: a temporary name, then a rename); its path there, per target."""
    kept = {}
    for target, d in deployed.items():
        src = Path(d.source)
        rel = f"{KEPT}/{target}" + ("" if src.is_dir() else src.suffix)
        copy_into_place(src, out / rel)
        kept[target] = rel
    return kept


def load_deployed(specs: dict[str, Path], data: Dataset, threads: int = 1) -> dict[str, Deployed]:
    """Each deployed model's predictions on val and test; a one-line RegnasError for one that does not fit the data."""
    from regnas.workflow.gate import predictions

    out = {}
    for target, path in specs.items():
        whole = None
        if path.suffix in (".npy", ".json"):  # saved predictions: the whole data set, in its order
            whole = predictions(path, data.whole(), data.num_classes)
            preds = {s: whole[data[s].index] for s in SPLITS}
        else:
            preds = {s: predictions(path, data[s], data.num_classes, threads=threads) for s in SPLITS}
        found = Deployed(target, str(path), preds, whole)
        acc = top1(preds["val"], data["val"].y.numpy())
        logger.info(f"deployed: {target} is {path} (val top-1 {acc:.2%})")
        out[target] = found
    return out

"""Agreement metrics between models: accuracy, negative / positive flips, flip impact.

A negative flip of `new` against `old` is a sample `old` gets right and `new` gets wrong.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def _check(labels: np.ndarray, *preds: np.ndarray) -> None:
    for p in preds:
        if p.shape != labels.shape:
            raise ValueError(f"predictions of shape {p.shape} do not match labels of shape {labels.shape}")


def top1(pred: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of correct predictions."""
    _check(labels, pred)
    return float(np.mean(pred == labels)) if len(labels) else 0.0


def negative_flips(old: np.ndarray, new: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Boolean mask of samples `old` gets right and `new` gets wrong."""
    _check(labels, old, new)
    return (old == labels) & (new != labels)


def nfr(old: np.ndarray, new: np.ndarray, labels: np.ndarray) -> float:
    """Negative flip rate: negative flips / N."""
    return float(negative_flips(old, new, labels).mean()) if len(labels) else 0.0


def pfr(old: np.ndarray, new: np.ndarray, labels: np.ndarray) -> float:
    """Positive flip rate: samples `old` gets wrong and `new` gets right, / N."""
    return nfr(new, old, labels)


def nfi(old: np.ndarray, new: np.ndarray, labels: np.ndarray) -> float:
    """Negative flip impact: negative flips / errors of `new` (0 when `new` makes no errors)."""
    errors = int((new != labels).sum())
    return float(negative_flips(old, new, labels).sum() / errors) if errors else 0.0


@dataclass
class FlipStats:
    """How `new` compares with `old` on one labelled set."""

    n: int
    top1_old: float
    top1_new: float
    nfr: float
    pfr: float
    nfi: float
    flips: int

    def to_dict(self) -> dict:
        return asdict(self)


def compare(old: np.ndarray, new: np.ndarray, labels: np.ndarray) -> FlipStats:
    """All flip metrics of `new` against `old`."""
    return FlipStats(
        n=len(labels),
        top1_old=top1(old, labels),
        top1_new=top1(new, labels),
        nfr=nfr(old, new, labels),
        pfr=pfr(old, new, labels),
        nfi=nfi(old, new, labels),
        flips=int(negative_flips(old, new, labels).sum()),
    )


def flip_matrix(preds: list[np.ndarray], labels: np.ndarray) -> list[list[float]]:
    """`m[i][j]` = NFR of model j against reference model i (diagonal 0)."""
    return [[nfr(old, new, labels) for new in preds] for old in preds]

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


def negative_flips_any(olds: list[np.ndarray], new: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Boolean mask of samples some earlier model gets right and `new` gets wrong."""
    _check(labels, new, *olds)
    right_before = np.any([old == labels for old in olds], axis=0) if olds else np.zeros(len(labels), dtype=bool)
    return right_before & (new != labels)


def nfr_any(olds: list[np.ndarray], new: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples some earlier model gets right and `new` gets wrong (what a user who saw all of them notices)."""
    return float(negative_flips_any(olds, new, labels).mean()) if len(labels) else 0.0


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


def upper_bound(flips: int, n: int, confidence: float) -> float:
    """One-sided exact (Clopper-Pearson) upper confidence bound of a flip rate."""
    from scipy.stats import beta

    if n == 0 or flips >= n:
        return 1.0
    return float(beta.ppf(confidence, flips + 1, n - flips))


def lower_bound(flips: int, n: int, confidence: float) -> float:
    """One-sided exact (Clopper-Pearson) lower confidence bound of a flip rate."""
    from scipy.stats import beta

    if n == 0 or flips == 0:
        return 0.0
    return float(beta.ppf(1 - confidence, flips, n - flips + 1))


def interval(flips: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval of a flip rate at `confidence` (each side at (1 + confidence) / 2)."""
    side = (1 + confidence) / 2
    return lower_bound(flips, n, side), upper_bound(flips, n, side)


@dataclass(frozen=True)
class Verdict:
    """A flip count judged against a limit with its uncertainty: passed, failed, or inconclusive with the n that would decide."""

    flips: int
    n: int
    limit: float
    low: float
    high: float
    status: str

    @property
    def decided(self) -> bool:
        return self.status in ("passed", "failed")


def samples_to_decide(rate: float, limit: float, confidence: float = 0.95) -> int | None:
    """About how many samples at the observed `rate` would put the interval wholly on one side of `limit` (None: never)."""
    if rate == limit:
        return None

    def decides(m: int) -> bool:
        low, high = interval(round(rate * m), m, confidence)
        return high <= limit if rate < limit else low > limit

    hi = 16
    while not decides(hi):
        hi *= 2
        if hi > 2**40:
            return None
    lo = hi // 2
    while hi - lo > max(1, lo // 100):
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if decides(mid) else (mid, hi)
    return hi


def judge(flips: int, n: int, limit: float, confidence: float = 0.95) -> Verdict:
    """`failed` when the interval lies above `limit`, `passed` when it lies within, else `inconclusive: needs about N samples`."""
    low, high = interval(flips, n, confidence)
    if low > limit:
        status = "failed"
    elif high <= limit:
        status = "passed"
    else:
        need = samples_to_decide(flips / n if n else 0.0, limit, confidence)
        status = "inconclusive: " + (f"needs about {need:,} test images" if need else "the flip rate sits on the limit")
    return Verdict(flips, n, limit, low, high, status)


def flip_matrix(preds: list[np.ndarray], labels: np.ndarray) -> list[list[float]]:
    """`m[i][j]` = NFR of model j against reference model i (diagonal 0)."""
    return [[nfr(old, new, labels) for new in preds] for old in preds]

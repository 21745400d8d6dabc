"""Families: one arch per target, in budget order, each containing the one before.

`search_family` is REG-NAS: every member is searched among the supersets of the previous one
with the flip-aware reward. `search_baseline` is what a user of OFA would get: each target
searched alone for accuracy. `nesting` measures, on the extracted weights themselves, how much
of each pair is literally shared.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from regnas.builddir import MemberRecord
from regnas.evaluate import Evaluator, predict
from regnas.flips import flip_matrix, negative_flips, nfr, top1
from regnas.nn import crop_slices
from regnas.search import PRESETS, Budget, Reward, SearchConfig, evolve
from regnas.spaces import Arch, SearchSpace

logger = logging.getLogger(__name__)


@dataclass
class Member:
    """One target's arch and how the search rated it on val."""

    target: str
    arch: Arch
    budget_flops: int | None
    val_top1: float
    val_nfr_vs_prev: float | None
    evaluated: int
    candidates: list[tuple[int, float, float | None]] = field(default_factory=list)
    """(FLOPs, val top-1, val NFR vs the previous member) of every arch the search evaluated."""
    budget_latency_ms: float | None = None
    val_margin: dict[str, Any] | None = None
    """The chosen arch's paired reward lead on val over the runner-up, and how many candidates tie with it (`Margin`)."""
    val_top1_floor: float | None = None
    """The val top-1 the search held it to: the accuracy-only member's at its budget less the slack (None: no floor)."""

    def to_json(self, space: SearchSpace) -> dict[str, Any]:
        return {**self.__dict__, "arch": space.to_json(self.arch)}

    @classmethod
    def from_json(cls, space: SearchSpace, obj: dict[str, Any]) -> Member:
        return cls(**{**obj, "arch": space.from_json(obj["arch"]), "candidates": [tuple(c) for c in obj.get("candidates", [])]})


def search_family(
    evaluator: Evaluator,
    budgets: list[tuple[str, Budget | int]],
    reward: Reward,
    cfg: SearchConfig,
    seed: int,
    nested: bool = True,
    deployed: dict[str, np.ndarray] | None = None,
    anchors: list[Member] | None = None,
) -> list[Member]:
    """Search one arch per (target, budget) in the given order (an int budget is FLOPs); nested: each ⊇ the previous.
    `deployed`: per target, its deployed model's val predictions, whose flips the reward's λ3 weighs. `anchors`: the
    accuracy-only members at the same budgets (`search_baseline`), whose val top-1 the members keep to within
    `cfg.top1_slack` points."""
    space = evaluator.space
    members: list[Member] = []
    prev: Arch | None = None
    for i, (name, budget) in enumerate(budgets):
        budget = budget if isinstance(budget, Budget) else Budget.flops(space, budget)
        logger.info(f"search: {'family' if nested else 'baseline'} member {name} (budget {budget.describe()})")
        earlier = [m.arch for m in members] if nested and reward.against == "all" else None
        theirs = (deployed or {}).get(name)
        anchor = anchors[i].arch if anchors else None
        result = evolve(evaluator, budget, reward, prev if nested else None, cfg, seed * 1000 + i, earlier, theirs, anchor)
        best = result.best
        seen = [(c.flops, c.top1, c.nfr) for c in result.candidates]
        flops, ms = (int(budget.limit), None) if budget.unit == "FLOPs" else (None, budget.limit)
        margin = result.margin.to_json() if result.margin is not None else None
        if margin is not None:
            low, high = margin["interval"]
            logger.info(
                f"search: {name} leads the runner-up by {margin['runner_up_gap']:+.4f} reward on val "
                f"(paired 95% [{low:+.4f}, {high:+.4f}]); {margin['tied']} of the {result.finalists - 1} other finalists are within noise"
            )
        members.append(Member(name, best.arch, flops, best.top1, best.nfr, result.evaluated, seen, ms, margin, result.top1_floor))
        prev = best.arch
    return members


def search_baseline(evaluator: Evaluator, budgets: list[tuple[str, Budget | int]], cfg: SearchConfig, seed: int) -> list[Member]:
    """Each target searched alone for accuracy (R0), the independent baseline."""
    return search_family(evaluator, budgets, PRESETS["R0"], cfg, seed, nested=False)


@dataclass
class Nesting:
    """How a smaller model sits inside a larger one."""

    smaller: str
    larger: str
    contains: bool
    literal: bool
    shared_weight_fraction: float
    shared_of_smaller: float

    def to_json(self) -> dict:
        return self.__dict__.copy()


def _common(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = tuple(min(x, y) for x, y in zip(a.shape, b.shape))
    return a[crop_slices(tuple(a.shape), shape)], b[crop_slices(tuple(b.shape), shape)]


def nesting(
    space: SearchSpace, small_name: str, small_arch: Arch, small: nn.Module, large_name: str, large_arch: Arch, large: nn.Module
) -> Nesting:
    """Compare two extracted subnets parameter by parameter.

    `shared_weight_fraction` is the share of the larger model's parameters that are literally
    equal to the smaller's (at the nesting slice); `shared_of_smaller` the share of the smaller's.
    `literal` is whether every parameter of the smaller is the slice of the larger's.
    """
    small_p, large_p = dict(small.named_parameters()), dict(large.named_parameters())
    shared = 0
    literal = set(small_p) <= set(large_p)
    for name, p in small_p.items():
        if name not in large_p:
            continue
        a, b = _common(p.detach(), large_p[name].detach())
        equal = int((a == b).sum())
        shared += equal
        literal &= a.shape == p.shape and equal == p.numel()
    n_small = sum(p.numel() for p in small_p.values())
    n_large = sum(p.numel() for p in large_p.values())
    return Nesting(
        smaller=small_name,
        larger=large_name,
        contains=space.contains(large_arch, small_arch),
        literal=bool(literal),
        shared_weight_fraction=shared / n_large,
        shared_of_smaller=shared / n_small,
    )


@dataclass
class Assessment:
    """A family's extracted subnets, their predictions and its report records on one split."""

    nets: list[nn.Module]
    preds: list[np.ndarray]
    records: list[MemberRecord]
    nesting: list[dict[str, Any]]
    flip_matrix: dict[str, Any]

    @property
    def section(self) -> dict[str, Any]:
        """The report section: member records, nesting per pair and the flip matrix."""
        return {"family": [r.to_json() for r in self.records], "nesting": self.nesting, "flip_matrix": self.flip_matrix}


def _per_class(old: np.ndarray, new: np.ndarray, labels: np.ndarray, classes: int) -> list[int]:
    return np.bincount(labels[negative_flips(old, new, labels)], minlength=classes).tolist()


def assess(evaluator: Evaluator, members: list[Member], split: str = "test", nets: list[nn.Module] | None = None) -> Assessment:
    """Top-1, NFR against the previous member, nesting per pair and the flip matrix on `split`.

    `nets` are the members' networks when they are not the supernet's own subnets (after a fine-tune).
    """
    space = evaluator.space
    labels = evaluator.labels(split)
    nets = nets or [evaluator.subnet(m.arch) for m in members]
    preds = [predict(n, evaluator.images(split)) for n in nets]
    records = [
        MemberRecord(
            target=m.target,
            arch=space.to_json(m.arch),
            flops=space.flops(m.arch),
            budget_flops=m.budget_flops,
            params=space.params(m.arch),
            top1=top1(p, labels),
            nfr_vs_prev=nfr(preds[i - 1], p, labels) if i else None,
            val_top1=m.val_top1,
            val_nfr_vs_prev=m.val_nfr_vs_prev,
            evaluated=m.evaluated,
            val_margin=m.val_margin,
            val_top1_floor=m.val_top1_floor,
            flips_per_class=_per_class(preds[i - 1], p, labels, evaluator.data.num_classes) if i else None,
        )
        for i, (m, p) in enumerate(zip(members, preds))
    ]
    pairs = [
        nesting(space, a.target, a.arch, na, b.target, b.arch, nb).to_json()
        for (a, na), (b, nb) in zip(zip(members, nets), zip(members[1:], nets[1:]))
    ]
    return Assessment(nets, preds, records, pairs, flip_matrix(preds, labels))

"""Evolutionary architecture search under a FLOP or latency budget with the REG-NAS reward.

reward(a) = λ1·Top1(a) − λ2·NFR(a, a_prev) − λ3·NFR(a, deployed), all on the val split; the last term
only where the member's target has a deployed model (`regnas.deployed`). With a previous family member,
every candidate is a superset of it: sampling draws from its supersets, and mutation, crossover
and the budget repair (shrinking one choice at a time) never go below it.

The reward alone would trade any accuracy for agreement: at λ2 = 5 a member that flips 1% fewer images is
worth 5 points of top-1, and on data where larger subnets are clearly better the family's larger members
then stay as accurate as the smaller ones (no ladder). So each member may also have an anchor, the
accuracy-only search's arch at its budget (the independent baseline): candidates whose top-1 falls more
than `SearchConfig.top1_slack` points below the anchor's, on the same images, rank after every
candidate that does not, and the anchor's superset nearest to it within the budget joins the first
population. Where the supernet gives larger subnets little (Fashion-MNIST) the floor seldom binds.

All candidates are scored on the same val samples, so the search also says how sure its choice
is: the winner's reward minus each other candidate's is a mean of per-sample differences, whose
paired interval tells a real lead from val noise (`Margin`). On a large val split the evolution
screens candidates on a fixed subset of it and the best few (the finalists) are scored on all of
it: the choice and its margin are made on all of val.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from regnas.config import count, finite, option, positive
from regnas.errors import RegnasError
from regnas.evaluate import Evaluator
from regnas.flips import negative_flips, negative_flips_any
from regnas.spaces import Arch, SearchSpace

logger = logging.getLogger(__name__)


FLIPS_AGAINST = ("previous", "all")


@dataclass(frozen=True)
class Reward:
    """`λ1·Top1 − λ2·NFR − λ3·NFR_deployed`: the NFR against the previous member or against every earlier one (`against`),
    and against the target's deployed model where it has one."""

    top1: float
    nfr: float
    name: str = "custom"
    against: str = "previous"
    deployed: float = 0.0

    def __call__(self, acc: float, flip_rate: float | None, deployed_rate: float | None = None) -> float:
        return self.top1 * acc - self.nfr * (flip_rate or 0.0) - self.deployed * (deployed_rate or 0.0)

    def per_sample(self, correct: np.ndarray, flipped: np.ndarray | None, flipped_deployed: np.ndarray | None = None) -> np.ndarray:
        """Each sample's share of the reward: the reward is their mean."""
        score = self.top1 * correct.astype(np.float64)
        if flipped is not None:
            score = score - self.nfr * flipped
        return score if flipped_deployed is None else score - self.deployed * flipped_deployed

    def describe(self) -> str:
        """A short name: the preset, or the weights; `+all` when flips count against every earlier member."""
        weights = self.name if self.name != "custom" else f"{self.top1:g},{self.nfr:g}" + (f",{self.deployed:g}" if self.deployed else "")
        return weights + ("+all" if self.against == "all" else "")


PRESETS = {"R0": Reward(1.0, 0.0, "R0"), "R1": Reward(0.0, 1.0, "R1"), "R2": Reward(1.0, 1.0, "R2")}


def parse_reward(spec: str, against: str = "previous") -> Reward:
    """A preset name (R0 accuracy only, R1 flips only, R2 both) or custom `λ1,λ2` or `λ1,λ2,λ3` (λ3: flips against the
    target's deployed model); flips counted `against` previous or all."""
    if against not in FLIPS_AGAINST:
        raise RegnasError(f"unknown --flips-against {against!r}; use previous (the member before) or all (every earlier member)")
    if spec.upper() in PRESETS:
        return replace(PRESETS[spec.upper()], against=against)
    try:
        weights = [float(v) for v in spec.split(",")]
    except ValueError:
        weights = []
    if len(weights) not in (2, 3):
        raise RegnasError(f"unknown reward {spec!r}; use R0, R1, R2 or weights 'λ1,λ2' or 'λ1,λ2,λ3' such as 1,0.5 or 1,5,5")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise RegnasError(f"reward weights {spec!r} must be finite, 0 or more, not all 0 (a negative λ1 minimises accuracy); e.g. 1,0.5")
    return Reward(weights[0], weights[1], against=against, deployed=weights[2] if len(weights) == 3 else 0.0)


@dataclass(frozen=True)
class SearchConfig:
    """Evolution settings; part of the build's cache key."""

    population: int = option(16, "evolution population size", parse=positive)
    generations: int = option(6, "evolution generations", parse=positive)
    parent_ratio: float = 0.25
    mutation_ratio: float = 0.5
    mutate_prob: float = 0.2
    screen: int = option(1000, "val images that score candidates during the evolution (0: all of val)", parse=count)
    """Val images that score candidates during the evolution (0, or a val split no larger: all of it); the
    `finalists` best are then scored on all of val, which chooses. A candidate on 1,000 images costs about a
    third of one on 5,000 (BN recalibration included)."""
    finalists: int = option(8, "best candidates re-scored on all of val, which chooses", parse=positive)
    top1_slack: float = option(
        0.5,
        "val top-1 points a family member may give up against the accuracy-only search at its budget to flip less (negative: no floor)",
        parse=finite,
    )

    def screen_split(self, val_size: int) -> str:
        """The evaluator's name for the images candidates are screened on: `val:N`, or `val` when the screen is all of it."""
        return f"val:{self.screen}" if 0 < self.screen < val_size else "val"


@dataclass(frozen=True)
class Budget:
    """A constraint `cost(arch) <= limit`: FLOPs counted on the space, or milliseconds predicted by a LUT."""

    limit: float
    unit: str
    cost: Callable[[Arch], float]

    @classmethod
    def flops(cls, space: SearchSpace, limit: int) -> Budget:
        return cls(float(limit), "FLOPs", space.flops)

    def describe(self, value: float | None = None) -> str:
        v = self.limit if value is None else value
        return f"{v:,.0f} FLOPs" if self.unit == "FLOPs" else f"{v:.3f} ms"


@dataclass
class Candidate:
    """An evaluated arch."""

    arch: Arch
    flops: int
    top1: float
    nfr: float | None
    reward: float
    nfr_deployed: float | None = None


Z95 = 1.959964
"""Two-sided 95% normal quantile for the paired intervals."""


@dataclass
class Margin:
    """How far the chosen candidate leads the runner-up on val, paired over the same samples.

    `interval` is the 95% interval of the reward difference (best − runner-up); `tied` counts the
    other candidates whose difference from the best is not significant at 95%: the choice among
    them is decided by val noise.
    """

    runner_up_gap: float
    interval: tuple[float, float]
    tied: int

    def to_json(self) -> dict:
        return {"runner_up_gap": self.runner_up_gap, "interval": list(self.interval), "tied": self.tied}


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Mean of `a − b` over the same samples and its 95% normal interval."""
    d = a - b
    mean = float(d.mean())
    half = Z95 * float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else math.inf
    return mean, mean - half, mean + half


@dataclass
class SearchResult:
    """The best candidate and how the search got there."""

    best: Candidate
    candidates: list[Candidate] = field(default_factory=list)
    margin: Margin | None = None
    """None when fewer than two candidates met the val top-1 floor (the floor chose, not the reward)."""
    finalists: int = 0
    """Candidates scored on all of val, among which the best was chosen (all of them without a screen)."""
    top1_floor: float | None = None
    """The val top-1 below which a candidate ranked after the rest (the anchor's less the slack); None without one."""

    @property
    def evaluated(self) -> int:
        return len(self.candidates)


class _Evolution:
    """One search's state: the candidates scored on each split, the val samples behind the margin, the RNG."""

    def __init__(
        self,
        evaluator: Evaluator,
        budget: Budget,
        reward: Reward,
        prev: Arch | None,
        cfg: SearchConfig,
        seed: int,
        refs: list[Arch],
        deployed: np.ndarray | None,
        anchor: Arch | None,
    ):
        self.evaluator, self.space, self.budget, self.reward, self.prev, self.cfg = evaluator, evaluator.space, budget, reward, prev, cfg
        self.refs = refs
        """The members whose flips count (the previous one, or every earlier one)."""
        self.deployed = deployed if reward.deployed else None
        """The target's deployed model's predictions on all of val, when the reward counts flips against it."""
        self.rng = random.Random(seed)
        self.screen = cfg.screen_split(len(evaluator.labels("val")))
        self.scored: dict[str, dict[Arch, Candidate]] = {self.screen: {}, "val": {}}
        self.samples: dict[Arch, np.ndarray] = {}
        self.anchor = anchor if cfg.top1_slack >= 0 else None
        """The accuracy-only search's arch at this budget, whose top-1 less the slack is the floor."""
        self.floors: dict[str, float] = {}

    def floor(self, split: str) -> float:
        """The top-1 a candidate must reach on `split` to rank by reward (0 without an anchor)."""
        if self.anchor is None:
            return 0.0
        if split not in self.floors:
            pred = self.evaluator.predictions(self.anchor, split)
            self.floors[split] = max(0.0, float((pred == self.evaluator.labels(split)).mean()) - self.cfg.top1_slack / 100)
        return self.floors[split]

    def score(self, arch: Arch, split: str) -> Candidate:
        """`arch`'s top-1, flips and reward on `split` (scored once)."""
        seen = self.scored[split]
        if arch not in seen:
            ev = self.evaluator
            labels = ev.labels(split)
            refs = [ev.predictions(a, split) for a in self.refs]
            pred = ev.predictions(arch, split)
            correct = pred == labels
            flipped = negative_flips_any(refs, pred, labels) if refs else None
            lost = None if self.deployed is None else negative_flips(ev.restrict(split, self.deployed), pred, labels)
            acc, flip = float(correct.mean()), None if flipped is None else float(flipped.mean())
            dep = None if lost is None else float(lost.mean())
            seen[arch] = Candidate(arch, self.space.flops(arch), acc, flip, self.reward(acc, flip, dep), dep)
            if split == "val":
                self.samples[arch] = self.reward.per_sample(correct, flipped, lost)
        return seen[arch]

    def ranking(self, split: str) -> Callable[[Candidate], tuple]:
        """The sort key on `split`: candidates below the floor last (the nearer to it the earlier), then by reward."""
        floor = self.floor(split)
        return lambda c: (max(0.0, floor - c.top1), -c.reward, -c.top1, c.flops, self.space.encode(c.arch))

    def unique(self, make: Callable[[], Arch], population: list[Arch]) -> Arch:
        """An arch from `make`, shrunk into the budget, not yet in `population` (after 20 tries, whatever came)."""
        for _ in range(20):
            arch = self.space.shrink_within(make(), self.budget.cost, self.budget.limit, self.rng, self.prev)
            if arch not in population:
                return arch
        return arch

    def first_population(self) -> list[Arch]:
        """Random supersets of the previous member; with an anchor, its nearest superset within the budget first."""
        population: list[Arch] = []
        if self.anchor is not None:
            near = self.anchor if self.prev is None else self.space.union(self.anchor, self.prev)
            population.append(self.space.shrink_within(near, self.budget.cost, self.budget.limit, self.rng, self.prev))
        while len(population) < self.cfg.population:
            population.append(self.unique(lambda: self.space.sample(self.rng, self.prev), population))
        return population

    def next_population(self, ranked: list[Candidate]) -> list[Arch]:
        """The best as parents, then their mutants, then crossovers of them."""
        cfg, space, rng = self.cfg, self.space, self.rng
        n_parents = max(2, round(cfg.parent_ratio * cfg.population))
        parents = [c.arch for c in ranked[:n_parents]]
        population = list(parents)
        for _ in range(round(cfg.mutation_ratio * (cfg.population - n_parents))):
            population.append(self.unique(lambda: space.mutate(rng.choice(parents), rng, cfg.mutate_prob, self.prev), population))
        while len(population) < cfg.population:
            population.append(self.unique(lambda: space.crossover(*rng.sample(parents, 2), rng), population))
        return population

    def run(self) -> SearchResult:
        population, seen, rank = self.first_population(), self.scored[self.screen], self.ranking(self.screen)
        for gen in range(self.cfg.generations):
            self.evaluator.prefetch(population, self.screen)
            ranked = sorted((self.score(a, self.screen) for a in population), key=rank)
            best = min(seen.values(), key=rank)
            progress = f"best reward {best.reward:.4f} top-1 {best.top1:.4f} ({len(seen)} archs)"
            logger.info(f"search: generation {gen + 1}/{self.cfg.generations} {progress}")
            if gen < self.cfg.generations - 1:
                population = self.next_population(ranked)
        if self.screen != "val":
            finalists = [c.arch for c in sorted(seen.values(), key=rank)[: self.cfg.finalists]]
            self.evaluator.prefetch(finalists, "val")
            for arch in finalists:
                self.score(arch, "val")
            logger.info(f"search: {len(finalists)} finalists of {len(seen)} scored on all {len(self.evaluator.labels('val'))} val images")
        final = self.scored["val"]
        ranked = sorted(final.values(), key=self.ranking("val"))
        candidates = [final.get(arch, c) for arch, c in seen.items()]
        floor = self.floor("val") if self.anchor is not None else None
        if floor is not None and ranked[0].top1 < floor:
            logger.warning(
                f"search: no candidate within {self.cfg.top1_slack:g} points of the accuracy-only member's val top-1 "
                f"({100 * floor:.2f}% needed, {100 * ranked[0].top1:.2f}% reached); the nearest is chosen"
            )
        above = [c for c in ranked if floor is None or c.top1 >= floor]  # the reward chose among these; else the floor did
        return SearchResult(ranked[0], candidates, margin(above, self.samples), len(final), floor)


def evolve(
    evaluator: Evaluator,
    budget: Budget | int,
    reward: Reward,
    prev: Arch | None = None,
    cfg: SearchConfig = SearchConfig(),
    seed: int = 0,
    earlier: list[Arch] | None = None,
    deployed: np.ndarray | None = None,
    anchor: Arch | None = None,
) -> SearchResult:
    """Search the supersets of `prev` (all archs when None) within `budget` (an int is FLOPs) for the best reward.

    Flips count against `prev`, or, with `earlier` (every member before this one), against any of them; and against the
    `deployed` model's val predictions where the reward weighs them. `anchor`: the accuracy-only search's arch at this
    budget, whose val top-1 less `cfg.top1_slack` points candidates must reach to rank by reward.
    """
    space = evaluator.space
    if not isinstance(budget, Budget):
        budget = Budget.flops(space, budget)
    lower = prev if prev is not None else space.smallest()
    floor = budget.cost(lower)
    if floor > budget.limit:
        what = "the previous family member" if prev is not None else "the smallest arch"
        raise RegnasError(f"budget {budget.describe()} is below {what} ({budget.describe(floor)}); raise the budget")
    refs = earlier or ([prev] if prev is not None else [])
    return _Evolution(evaluator, budget, reward, prev, cfg, seed, refs, deployed, anchor).run()


def margin(ranked: list[Candidate], samples: dict[Arch, np.ndarray]) -> Margin | None:
    """The best candidate's paired lead over the runner-up, and how many candidates val cannot tell from it."""
    if len(ranked) < 2:
        return None
    best = samples[ranked[0].arch]
    gap, low, high = paired_difference(best, samples[ranked[1].arch])
    tied = sum(paired_difference(best, samples[c.arch])[1] <= 0 for c in ranked[1:])
    return Margin(gap, (low, high), tied)

"""The search-space contract every space implements, and what all spaces share.

A space is built from a config (a JSON-able dict fixed per dataset: input shape, classes,
widths, choices). Its archs are hashable, ordered by `contains`, and JSON-serialisable. The
supernet and the standalone subnets use the same state-dict keys, so `extract` is generic: build
the plain subnet, then copy `crop_to(supernet_tensor, subnet_shape)` into every tensor.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import torch
from torch import nn

from regnas.errors import RegnasError
from regnas.nn import count_macs, crop_to

Arch = Hashable

MIN_SIDE = 4
"""The smallest image side (px) a convolutional space accepts: below it, every map is a pixel or two."""


def stride_plan(size: int, nominal: Sequence[int], drop_order: Sequence[int]) -> list[int]:
    """Strides (stem first, then each stage) for images of `size` px.

    Start from the `nominal` plan (a large-image network's) and set strides to 1, in `drop_order`,
    until the last feature map keeps at least min(4, size // 4) px: a 28 px image then ends at
    4×4 instead of 2×2, and an 8 px one at 2×2. Early stages lose their stride first, where the
    resolution pays most.
    """
    if size < MIN_SIDE:
        raise RegnasError(f"images of {size} px per side are too small for a convolutional space; give at least {MIN_SIDE}×{MIN_SIDE} px")
    strides = list(nominal)
    want = min(4, size // 4)

    def final(plan: list[int]) -> int:
        out = size
        for st in plan:
            out = -(-out // st)
        return out

    for i in drop_order:
        if final(strides) >= want:
            break
        strides[i] = 1
    return strides


NOMINAL_STRIDES = (2, 2, 2, 2, 1)
"""Stem, then four stages: a large-image convolutional network's downsampling (÷16)."""
DROP_ORDER = (1, 0, 2, 3)
"""Which strides small inputs drop first: the first stage's, then the stem's, then later stages'."""


def conv_strides(size: int) -> list[int]:
    """The stem's and four stages' strides for images of `size` px (see `stride_plan`)."""
    return stride_plan(size, NOMINAL_STRIDES, DROP_ORDER)


def _down(size: list[int], stride: int) -> list[int]:
    """Spatial size after a same-padded convolution with this stride."""
    return [-(-s // stride) for s in size]


def stage_resolutions(config: dict[str, Any]) -> list[tuple[list[int], list[int]]]:
    """(input size of the first block, input size of the others) per stage of a convolutional space."""
    hw = _down(config["input_shape"][1:], config["stem_stride"])
    out = []
    for st in config["stages"]:
        after = _down(hw, st["stride"])
        out.append((hw, after))
        hw = after
    return out


@dataclass(frozen=True)
class Gene:
    """One elastic choice of a space: per stage (`stage`) or per block slot (`block`).

    Its `choices` are ordered: a larger value means a superset of weights (more channels, a
    wider kernel), so `contains` compares values and `shrink` steps one choice down. `code` maps
    a value (and its stage) to the integer `encode` reports, e.g. a width multiplier to channels.
    """

    name: str
    choices: tuple
    per: str = "block"
    code: Callable[[Any, int], int] | None = None

    def at_least(self, floor: Any) -> list:
        """The choices a superset of `floor` may take (all of them without a floor)."""
        return [v for v in self.choices if floor is None or v >= floor]

    def below(self, value: Any) -> Any:
        """The next smaller choice."""
        return max(v for v in self.choices if v < value)


Genome = dict[str, list]
"""An arch as lists: "depth" per stage, each stage gene per stage, each block gene per stage per active block."""


class SearchSpace(ABC):
    """A family of nested architectures with a weight-sharing supernet.

    A space declares its genes (`genes`: elastic depth per stage is implicit, from the config's
    `depths`) and the dataclass of its archs (`arch_type`, one field per gene); sampling, mutation,
    crossover, shrinking, containment, encoding and JSON are defined on that table once, here.
    `flat` spaces have a single stage whose arch fields are plain tuples (vit). `recipe` holds the
    supernet training settings (`TrainConfig` fields) where this space's benchmark found others
    than the defaults better, and `policy_recipes` those for one kind of data (by augmentation
    policy) over it.
    """

    name: ClassVar[str]
    arch_type: ClassVar[type]
    flat: ClassVar[bool] = False
    recipe: ClassVar[dict[str, Any]] = {}
    policy_recipes: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self._unit_cost = lru_cache(maxsize=None)(self._count_unit)
        self.genes = self.gene_table()
        self.depths = Gene("depth", tuple(sorted(config["depths"])), "stage")

    @classmethod
    @abstractmethod
    def default_config(cls, input_shape: tuple[int, int, int], num_classes: int) -> dict[str, Any]:
        """The space's config for a dataset of this input shape (C, H, W) and class count."""

    @abstractmethod
    def gene_table(self) -> list[Gene]:
        """The space's elastic choices besides depth, choices read from its config."""

    @property
    def n_stages(self) -> int:
        return 1 if self.flat else len(self.config["stages"])

    @property
    def max_depth(self) -> int:
        return self.depths.choices[-1]

    def genome(self, arch: Arch) -> Genome:
        """The arch's genes as lists (see `Genome`)."""
        g: Genome = {}
        for gene in self.genes:
            v = getattr(arch, gene.name)
            g[gene.name] = [list(b) for b in ([v] if self.flat else v)] if gene.per == "block" else list(v)
        first_block = next(gene.name for gene in self.genes if gene.per == "block")
        return {"depth": [len(b) for b in g[first_block]], **g}

    def make(self, genome: Genome) -> Arch:
        """The arch of a genome; block genes beyond a stage's depth are dropped."""
        fields = {}
        for gene in self.genes:
            v = genome[gene.name]
            v = tuple(tuple(b[:d]) for d, b in zip(genome["depth"], v)) if gene.per == "block" else tuple(v)
            fields[gene.name] = v[0] if self.flat else v
        return self.arch_type(**fields)

    def _floor(self, lower: Genome | None, gene: Gene, s: int, j: int = 0) -> Any:
        """`lower`'s value of `gene` at stage s (block j), or None where it has no such block."""
        if lower is None:
            return None
        if gene.per == "stage":  # depth too
            return lower[gene.name][s]
        return lower[gene.name][s][j] if j < lower["depth"][s] else None

    def _pick(self, rng: random.Random, gene: Gene, lower: Genome | None, s: int, j: int = 0) -> Any:
        return rng.choice(gene.at_least(self._floor(lower, gene, s, j)))

    def _uniform(self, pick: Callable[[tuple], Any]) -> Arch:
        depth = [pick(self.depths.choices)] * self.n_stages
        genome = {"depth": depth}
        for gene in self.genes:
            value = pick(gene.choices)
            genome[gene.name] = [[value] * d for d in depth] if gene.per == "block" else [value] * self.n_stages
        return self.make(genome)

    def largest(self) -> Arch:
        """The arch that contains every other arch."""
        return self._uniform(max)

    def smallest(self) -> Arch:
        """The arch every other arch contains."""
        return self._uniform(min)

    def median(self, samples: int = 21, seed: int = 0) -> Arch:
        """The middle by FLOPs of `samples` archs drawn with `seed`: a typical subnet, to time the build's
        plan with and for benchmarks to report beside the largest and the smallest."""
        rng = random.Random(seed)
        drawn = sorted({self.sample(rng) for _ in range(samples)}, key=lambda a: (self.flops(a), self.encode(a)))
        return drawn[len(drawn) // 2]

    def _complete(self, genome: Genome, rng: random.Random, lower: Genome | None) -> Genome:
        """Block genes for every slot up to the largest depth: the genome's where set, random (⊇ lower) elsewhere."""
        full = {k: [list(v) for v in vs] if isinstance(vs[0], list) else list(vs) for k, vs in genome.items()}
        for gene in self.genes:
            if gene.per == "block":
                for s, blocks in enumerate(full[gene.name]):
                    blocks += [self._pick(rng, gene, lower, s, j) for j in range(len(blocks), self.max_depth)]
        return full

    def sample(self, rng: random.Random, lower: Arch | None = None) -> Arch:
        """A uniformly random arch; with `lower`, a random superset of it."""
        low = None if lower is None else self.genome(lower)
        empty: Genome = {"depth": [self._pick(rng, self.depths, low, s) for s in range(self.n_stages)]}
        for gene in self.genes:
            stages = range(self.n_stages)
            empty[gene.name] = [[] for _ in stages] if gene.per == "block" else [self._pick(rng, gene, low, s) for s in stages]
        return self.make(self._complete(empty, rng, low))

    def mutate(self, arch: Arch, rng: random.Random, prob: float, lower: Arch | None = None) -> Arch:
        """Resample each choice with probability `prob`, staying a superset of `lower`."""
        low = None if lower is None else self.genome(lower)
        g = self._complete(self.genome(arch), rng, low)
        for s in range(self.n_stages):
            for gene in (self.depths, *(x for x in self.genes if x.per == "stage")):
                if rng.random() < prob:
                    g[gene.name][s] = self._pick(rng, gene, low, s)
            for j in range(self.max_depth):
                for gene in (x for x in self.genes if x.per == "block"):
                    if rng.random() < prob:
                        g[gene.name][s][j] = self._pick(rng, gene, low, s, j)
        return self.make(g)

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        """Mix two parents choice by choice; a superset of whatever both contain."""
        ga, gb = self.genome(a), self.genome(b)
        child: Genome = {"depth": [rng.choice((da, db)) for da, db in zip(ga["depth"], gb["depth"])]}
        for gene in self.genes:
            if gene.per == "stage":
                child[gene.name] = [rng.choice(pair) for pair in zip(ga[gene.name], gb[gene.name])]
            else:
                child[gene.name] = [
                    [rng.choice([p for p in (ga, gb) if j < p["depth"][s]])[gene.name][s][j] for j in range(d)]
                    for s, d in enumerate(child["depth"])
                ]
        return self.make(child)

    def shrink(self, arch: Arch, rng: random.Random, lower: Arch | None = None) -> Arch | None:
        """One random step smaller (one choice down one level), staying ⊇ `lower`; None at `lower`."""
        g, low = self.genome(arch), None if lower is None else self.genome(lower)
        moves = []
        for s in range(self.n_stages):
            for gene in (self.depths, *self.genes):
                slots = range(g["depth"][s]) if gene.per == "block" else [None]
                for j in slots:
                    value = g[gene.name][s] if j is None else g[gene.name][s][j]
                    floor = self._floor(low, gene, s, j or 0)
                    if value > (gene.choices[0] if floor is None else floor):
                        moves.append((gene, s, j))
        if not moves:
            return None
        gene, s, j = rng.choice(moves)
        if j is None:
            g[gene.name][s] = gene.below(g[gene.name][s])
        else:
            g[gene.name][s][j] = gene.below(g[gene.name][s][j])
        return self.make(g)

    def shrink_within(self, arch: Arch, cost: Callable[[Arch], float], limit: float, rng: random.Random, lower: Arch | None = None) -> Arch:
        """`arch` shrunk one random choice at a time until `cost` is within `limit` (never below `lower`)."""
        while cost(arch) > limit:
            smaller = self.shrink(arch, rng, lower)
            if smaller is None:
                return arch
            arch = smaller
        return arch

    def union(self, a: Arch, b: Arch) -> Arch:
        """The smallest arch that contains both: each choice the larger of the two, depth the deeper."""
        ga, gb = self.genome(a), self.genome(b)
        depth = [max(x, y) for x, y in zip(ga["depth"], gb["depth"])]
        g: Genome = {"depth": depth}
        for gene in self.genes:
            if gene.per == "stage":
                g[gene.name] = [max(x, y) for x, y in zip(ga[gene.name], gb[gene.name])]
            else:
                g[gene.name] = [
                    [max(p[gene.name][s][j] for p in (ga, gb) if j < p["depth"][s]) for j in range(d)] for s, d in enumerate(depth)
                ]
        return self.make(g)

    def contains(self, big: Arch, small: Arch) -> bool:
        """Whether every choice of `small` is ≤ the matching choice of `big` (literal nesting)."""
        gb, gs = self.genome(big), self.genome(small)
        for s in range(self.n_stages):
            if any(gs[gene.name][s] > gb[gene.name][s] for gene in (self.depths, *self.genes) if gene.per == "stage"):
                return False
            for gene in self.genes:
                if gene.per == "block" and any(v > gb[gene.name][s][j] for j, v in enumerate(gs[gene.name][s])):
                    return False
        return True

    def encode(self, arch: Arch) -> list[int]:
        """Depths, each stage gene per stage, then each block slot's genes (0 for absent blocks), as integers."""
        g = self.genome(arch)
        vec = list(g["depth"])
        for gene in self.genes:
            if gene.per == "stage":
                vec += [self._code(gene, v, s) for s, v in enumerate(g[gene.name])]
        for s in range(self.n_stages):
            for j in range(self.max_depth):
                for gene in self.genes:
                    if gene.per == "block":
                        vec.append(self._code(gene, g[gene.name][s][j], s) if j < g["depth"][s] else 0)
        return vec

    @staticmethod
    def _code(gene: Gene, value: Any, stage: int) -> int:
        return gene.code(value, stage) if gene.code else int(value)

    def to_json(self, arch: Arch) -> dict[str, Any]:
        """The arch as a JSON object: its genome, unwrapped from the single stage for flat spaces."""
        g = self.genome(arch)
        return {k: v[0] for k, v in g.items()} if self.flat else g

    def from_json(self, obj: Any) -> Arch:
        """Parse and validate an arch; raise RegnasError naming what is wrong."""

        def choice(v: Any, gene: Gene) -> Any:
            if isinstance(v, bool) or v not in gene.choices:
                raise ValueError(f"{gene.name} {v!r} must be one of {list(gene.choices)}")
            return gene.choices[gene.choices.index(v)]

        try:
            if not isinstance(obj, dict):
                raise TypeError("not an object")
            keys = ("depth", *(x.name for x in self.genes))
            g = {k: [obj[k]] if self.flat else obj[k] for k in keys}
            if any(not isinstance(v, list) or len(v) != self.n_stages for v in g.values()):
                raise ValueError(f"need {self.n_stages} stages")
            g["depth"] = [choice(d, self.depths) for d in g["depth"]]
            for gene in self.genes:
                if gene.per == "stage":
                    g[gene.name] = [choice(v, gene) for v in g[gene.name]]
                    continue
                for d, blocks in zip(g["depth"], g[gene.name]):
                    if not isinstance(blocks, list) or len(blocks) != d:
                        raise ValueError(f"depth {d} does not match its {gene.name} list {blocks!r}")
                g[gene.name] = [[choice(v, gene) for v in blocks] for blocks in g[gene.name]]
        except (KeyError, TypeError, ValueError) as exc:
            raise RegnasError(f"not a valid {self.name} arch ({exc}); give {self._json_shape()}") from exc
        return self.make(g)

    def _json_shape(self) -> str:
        """What an arch's JSON looks like, for error messages."""
        one, many = ("n", "[...]") if self.flat else ("[...]", "[[...]]")
        parts = [f"'depth': {one}"] + [f"'{g.name}': {many if g.per == 'block' else one}" for g in self.genes]
        return "{" + ", ".join(parts) + "}"

    @abstractmethod
    def units(self, arch: Arch) -> list[Hashable]:
        """The arch as a sequence of independent units (stem, blocks, head), each a hashable key.

        FLOPs and params add up over units, and the latency LUT is keyed by them.
        """

    def unit_group(self, unit: Hashable) -> str:
        """The group of units whose latencies share one calibration factor (default: the unit's kind).

        Spaces whose blocks run at several resolutions and widths group blocks by stage: a runtime's
        bias (fusion, cache use, schedule quality) differs more between stages than within one.
        """
        return str(unit[0])

    @abstractmethod
    def all_units(self) -> list[Hashable]:
        """Every unit any arch of the space can contain: what `regnas profile` measures."""

    @abstractmethod
    def build_unit(self, unit: Hashable) -> tuple[nn.Module, tuple[int, ...]]:
        """A standalone module for one unit and its input shape (C, H, W)."""

    @abstractmethod
    def build_supernet(self) -> nn.Module:
        """A freshly initialised supernet; `supernet(x, arch)` runs the active subnet."""

    @abstractmethod
    def build_subnet(self, arch: Arch, device: str | torch.device = "cpu") -> nn.Module:
        """A plain, standalone network of this arch (weights uninitialised)."""

    @abstractmethod
    def channel_order(self, supernet: nn.Module) -> list[tuple[str, int, torch.Tensor]]:
        """Permutations `(state key, dim, perm)` that put important channels first.

        They must leave the largest subnet's function unchanged, so prefixes keep what matters.
        """

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.config["input_shape"])

    def extract(self, supernet: nn.Module, arch: Arch) -> nn.Module:
        """A standalone copy of the subnet `arch` on the supernet's device, every tensor a literal slice of the supernet's.

        The subnet is built on the meta device and handed the slices, so its weights are never
        initialised only to be overwritten (that was half of an mbv3 extraction's time).
        """
        net = self.build_subnet(arch, device="meta")
        full = supernet.state_dict()
        own = {k: v.shape for k, v in net.state_dict().items()}
        sub = {k: crop_to(full[k], shape).to(memory_format=torch.contiguous_format, copy=True) for k, shape in own.items()}
        net.load_state_dict(sub, assign=True)
        return net

    def flops(self, arch: Arch) -> int:
        """Multiply-accumulates for one input, counted on the standalone units of the arch."""
        return sum(self._unit_cost(u)[0] for u in self.units(arch))

    def params(self, arch: Arch) -> int:
        """Parameter count of the extracted network."""
        return sum(self._unit_cost(u)[1] for u in self.units(arch))

    def _count_unit(self, unit: Hashable) -> tuple[int, int]:
        module, shape = self.build_unit(unit)
        return count_macs(module, shape), sum(p.numel() for p in module.parameters())

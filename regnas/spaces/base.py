"""The search-space contract every space implements, and what all spaces share.

A space is built from a config (a JSON-able dict fixed per dataset: input shape, classes,
widths, choices). Its archs are hashable, ordered by `contains`, and JSON-serialisable. The
supernet and the standalone subnets use the same state-dict keys, so `extract` is generic: build
the plain subnet, then copy `crop_to(supernet_tensor, subnet_shape)` into every tensor.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
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


class SearchSpace(ABC):
    """A family of nested architectures with a weight-sharing supernet."""

    name: ClassVar[str]

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self._unit_cost = lru_cache(maxsize=None)(self._count_unit)

    @classmethod
    @abstractmethod
    def default_config(cls, input_shape: tuple[int, int, int], num_classes: int) -> dict[str, Any]:
        """The space's config for a dataset of this input shape (C, H, W) and class count."""

    @abstractmethod
    def largest(self) -> Arch:
        """The arch that contains every other arch."""

    @abstractmethod
    def smallest(self) -> Arch:
        """The arch every other arch contains."""

    @abstractmethod
    def sample(self, rng: random.Random, lower: Arch | None = None) -> Arch:
        """A uniformly random arch; with `lower`, a random superset of it."""

    @abstractmethod
    def mutate(self, arch: Arch, rng: random.Random, prob: float, lower: Arch | None = None) -> Arch:
        """Resample each choice with probability `prob`, staying a superset of `lower`."""

    @abstractmethod
    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        """Mix two parents choice by choice; a superset of whatever both contain."""

    @abstractmethod
    def shrink(self, arch: Arch, rng: random.Random, lower: Arch | None = None) -> Arch | None:
        """One random step smaller (one choice down one level), staying ⊇ `lower`; None at `lower`."""

    @abstractmethod
    def contains(self, big: Arch, small: Arch) -> bool:
        """Whether every choice of `small` is ≤ the matching choice of `big` (literal nesting)."""

    @abstractmethod
    def encode(self, arch: Arch) -> list[int]:
        """A fixed-length integer vector of the arch (0 for absent blocks)."""

    @abstractmethod
    def to_json(self, arch: Arch) -> dict[str, Any]:
        """The arch as a JSON object."""

    @abstractmethod
    def from_json(self, obj: Any) -> Arch:
        """Parse and validate an arch; raise RegnasError naming what is wrong."""

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
        """A standalone copy of the subnet `arch`, every tensor a literal slice of the supernet's."""
        net = self.build_subnet(arch)
        full = supernet.state_dict()
        sub = {k: crop_to(full[k], v.shape).clone() for k, v in net.state_dict().items()}
        net.load_state_dict(sub)
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

"""`mbv3`: an OFA-style MobileNetV3 space adapted to small inputs.

Four stages of inverted-residual blocks with elastic depth, and per block an elastic depthwise
kernel and expand ratio; squeeze-excite and hard-swish in the later stages as in MobileNetV3.
A smaller arch uses the first blocks of each stage, the first expanded channels of each block
and the centre of each kernel, so its weights are literally part of every larger arch's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from regnas.errors import RegnasError
from regnas.nn import (
    ConvBN,
    DynamicConvBN,
    DynamicSqueezeExcite,
    Hswish,
    SqueezeExcite,
    make_divisible,
    se_channels,
)
from regnas.spaces import register_space
from regnas.spaces.base import SearchSpace, stride_plan

STAGES = (
    {"width": 24, "se": False, "act": "relu"},
    {"width": 40, "se": True, "act": "relu"},
    {"width": 64, "se": False, "act": "hswish"},
    {"width": 96, "se": True, "act": "hswish"},
)
NOMINAL_STRIDES = (2, 2, 2, 2, 1)
"""Stem, then stages: MobileNetV3's downsampling at large inputs (÷16)."""
DROP_ORDER = (1, 0, 2, 3)
"""Which strides small inputs drop first: the first stage's, then the stem's, then later stages'."""


@dataclass(frozen=True, order=True)
class MBV3Arch:
    """Per stage, the kernel and expand ratio of each active block (depth = number of blocks)."""

    kernel: tuple[tuple[int, ...], ...]
    expand: tuple[tuple[int, ...], ...]

    @property
    def depth(self) -> tuple[int, ...]:
        return tuple(len(k) for k in self.kernel)


def _stage_io(config: dict[str, Any]) -> list[tuple[int, int, int]]:
    """(input channels of the first block, width, stride) per stage."""
    out, cin = [], config["stem_width"]
    for st in config["stages"]:
        out.append((cin, st["width"], st["stride"]))
        cin = st["width"]
    return out


def _down(size: list[int], stride: int) -> list[int]:
    """Spatial size after a same-padded convolution with this stride."""
    return [-(-s // stride) for s in size]


def _stage_resolutions(config: dict[str, Any]) -> list[tuple[list[int], list[int]]]:
    """(input size of the first block, input size of the others) per stage."""
    hw = _down(config["input_shape"][1:], config["stem_stride"])
    out = []
    for st in config["stages"]:
        after = _down(hw, st["stride"])
        out.append((hw, after))
        hw = after
    return out


class MBConv(nn.Module):
    """Inverted residual block: 1×1 expand, depthwise k×k, optional SE, 1×1 project."""

    def __init__(self, cin: int, cout: int, kernel: int, expand: int, stride: int, se: bool, act: str):
        super().__init__()
        hidden = make_divisible(cin * expand)
        self.expand = ConvBN(cin, hidden, 1, act=act)
        self.dw = ConvBN(hidden, hidden, kernel, stride, groups=hidden, act=act)
        self.se = SqueezeExcite(hidden, se_channels(hidden)) if se else nn.Identity()
        self.project = ConvBN(hidden, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.residual else y


class ElasticMBConv(nn.Module):
    """The supernet's block: holds the largest kernel and expand ratio, runs any smaller one."""

    def __init__(self, cin: int, cout: int, max_kernel: int, max_expand: int, stride: int, se: bool, act: str):
        super().__init__()
        self.cin = cin
        hidden = make_divisible(cin * max_expand)
        self.expand = DynamicConvBN(cin, hidden, 1, act=act)
        self.dw = DynamicConvBN(hidden, hidden, max_kernel, stride, depthwise=True, act=act)
        self.se = DynamicSqueezeExcite(hidden) if se else nn.Identity()
        self.project = DynamicConvBN(hidden, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor, kernel: int, expand: int) -> torch.Tensor:
        y = self.expand(x, out_channels=make_divisible(self.cin * expand))
        y = self.project(self.se(self.dw(y, kernel=kernel)))
        return x + y if self.residual else y


class _Head(nn.Module):
    """1×1 conv, global pool, feature layer and classifier (fixed across archs)."""

    def __init__(self, cin: int, config: dict[str, Any]):
        super().__init__()
        self.head = ConvBN(cin, config["head_width"], 1, act="hswish")
        self.feature = nn.Linear(config["head_width"], config["feature_width"])
        self.act = Hswish()
        self.dropout = nn.Dropout(config["dropout"])
        self.classifier = nn.Linear(config["feature_width"], config["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x).mean((2, 3))
        return self.classifier(self.dropout(self.act(self.feature(x))))


class MBV3Net(nn.Module):
    """A standalone network of one `mbv3` arch."""

    def __init__(self, config: dict[str, Any], arch: MBV3Arch):
        super().__init__()
        self.stem = ConvBN(config["input_shape"][0], config["stem_width"], 3, config["stem_stride"], act="hswish")
        self.stages = nn.ModuleList()
        for st, (cin, width, stride), ks, es in zip(config["stages"], _stage_io(config), arch.kernel, arch.expand):
            blocks = [
                MBConv(cin if j == 0 else width, width, k, e, stride if j == 0 else 1, st["se"], st["act"])
                for j, (k, e) in enumerate(zip(ks, es))
            ]
            self.stages.append(nn.ModuleList(blocks))
        self.tail = _Head(config["stages"][-1]["width"], config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return self.tail(x)


class MBV3Supernet(nn.Module):
    """The weight-sharing supernet; `forward(x, arch)` runs the subnet `arch`."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        kmax, emax, dmax = max(config["kernels"]), max(config["expands"]), max(config["depths"])
        self.stem = ConvBN(config["input_shape"][0], config["stem_width"], 3, config["stem_stride"], act="hswish")
        self.stages = nn.ModuleList()
        for st, (cin, width, stride) in zip(config["stages"], _stage_io(config)):
            blocks = [
                ElasticMBConv(cin if j == 0 else width, width, kmax, emax, stride if j == 0 else 1, st["se"], st["act"])
                for j in range(dmax)
            ]
            self.stages.append(nn.ModuleList(blocks))
        self.tail = _Head(config["stages"][-1]["width"], config)

    def forward(self, x: torch.Tensor, arch: MBV3Arch) -> torch.Tensor:
        x = self.stem(x)
        for stage, ks, es in zip(self.stages, arch.kernel, arch.expand):
            for block, k, e in zip(stage, ks, es):
                x = block(x, k, e)
        return self.tail(x)


@register_space
class MBV3Space(SearchSpace):
    """OFA-style MobileNetV3: elastic depth {2,3,4}, kernel {3,5,7}, expand {3,4,6}."""

    name = "mbv3"

    @classmethod
    def default_config(cls, input_shape: tuple[int, int, int], num_classes: int) -> dict[str, Any]:
        c, h, w = input_shape
        stem_stride, *strides = stride_plan(min(h, w), NOMINAL_STRIDES, DROP_ORDER)
        stages = [{**s, "stride": st} for s, st in zip(STAGES, strides)]
        return {
            "input_shape": [c, h, w],
            "num_classes": num_classes,
            "stem_width": 16,
            "stem_stride": stem_stride,
            "stages": stages,
            "head_width": 192,
            "feature_width": 256,
            "dropout": 0.1,
            "depths": [2, 3, 4],
            "kernels": [3, 5, 7],
            "expands": [3, 4, 6],
        }

    @property
    def n_stages(self) -> int:
        return len(self.config["stages"])

    def _uniform(self, depth: int, kernel: int, expand: int) -> MBV3Arch:
        return MBV3Arch(((kernel,) * depth,) * self.n_stages, ((expand,) * depth,) * self.n_stages)

    def largest(self) -> MBV3Arch:
        c = self.config
        return self._uniform(max(c["depths"]), max(c["kernels"]), max(c["expands"]))

    def smallest(self) -> MBV3Arch:
        c = self.config
        return self._uniform(min(c["depths"]), min(c["kernels"]), min(c["expands"]))

    @staticmethod
    def _at_least(choices: list[int], floor: int | None) -> list[int]:
        return [v for v in choices if floor is None or v >= floor]

    def _block(self, lower: MBV3Arch | None, s: int, j: int, gene: str) -> int | None:
        """The lower bound's choice for block j of stage s, or None where it has no such block."""
        if lower is None or j >= lower.depth[s]:
            return None
        return (lower.kernel if gene == "kernel" else lower.expand)[s][j]

    def _build(self, depth: list[int], kernel: list[list[int]], expand: list[list[int]]) -> MBV3Arch:
        return MBV3Arch(
            tuple(tuple(k[:d]) for d, k in zip(depth, kernel)),
            tuple(tuple(e[:d]) for d, e in zip(depth, expand)),
        )

    def _full_genes(self, arch: MBV3Arch, rng: random.Random, lower: MBV3Arch | None) -> tuple[list[list[int]], list[list[int]]]:
        """Per-block genes for all max-depth slots: the arch's where active, random (⊇ lower) elsewhere."""
        dmax = max(self.config["depths"])
        kernel, expand = [], []
        for s in range(self.n_stages):
            ks, es = list(arch.kernel[s]), list(arch.expand[s])
            for j in range(len(ks), dmax):
                ks.append(rng.choice(self._at_least(self.config["kernels"], self._block(lower, s, j, "kernel"))))
                es.append(rng.choice(self._at_least(self.config["expands"], self._block(lower, s, j, "expand"))))
            kernel.append(ks)
            expand.append(es)
        return kernel, expand

    def sample(self, rng: random.Random, lower: MBV3Arch | None = None) -> MBV3Arch:
        c, dmax = self.config, max(self.config["depths"])
        depth = [rng.choice(self._at_least(c["depths"], lower.depth[s] if lower else None)) for s in range(self.n_stages)]
        kernel = [
            [rng.choice(self._at_least(c["kernels"], self._block(lower, s, j, "kernel"))) for j in range(dmax)]
            for s in range(self.n_stages)
        ]
        expand = [
            [rng.choice(self._at_least(c["expands"], self._block(lower, s, j, "expand"))) for j in range(dmax)]
            for s in range(self.n_stages)
        ]
        return self._build(depth, kernel, expand)

    def mutate(self, arch: MBV3Arch, rng: random.Random, prob: float, lower: MBV3Arch | None = None) -> MBV3Arch:
        c = self.config
        kernel, expand = self._full_genes(arch, rng, lower)
        depth = list(arch.depth)
        for s in range(self.n_stages):
            if rng.random() < prob:
                depth[s] = rng.choice(self._at_least(c["depths"], lower.depth[s] if lower else None))
            for j in range(len(kernel[s])):
                if rng.random() < prob:
                    kernel[s][j] = rng.choice(self._at_least(c["kernels"], self._block(lower, s, j, "kernel")))
                if rng.random() < prob:
                    expand[s][j] = rng.choice(self._at_least(c["expands"], self._block(lower, s, j, "expand")))
        return self._build(depth, kernel, expand)

    def crossover(self, a: MBV3Arch, b: MBV3Arch, rng: random.Random) -> MBV3Arch:
        depth, kernel, expand = [], [], []
        for s in range(self.n_stages):
            d = rng.choice((a.depth[s], b.depth[s]))
            ks, es = [], []
            for j in range(d):
                donors = [p for p in (a, b) if j < p.depth[s]]
                ks.append(rng.choice(donors).kernel[s][j])
                es.append(rng.choice(donors).expand[s][j])
            depth.append(d)
            kernel.append(ks)
            expand.append(es)
        return self._build(depth, kernel, expand)

    def shrink(self, arch: MBV3Arch, rng: random.Random, lower: MBV3Arch | None = None) -> MBV3Arch | None:
        c = self.config
        floor = lower or self.smallest()
        moves = []
        for s in range(self.n_stages):
            if arch.depth[s] > floor.depth[s]:
                moves.append(("depth", s, 0))
            for j in range(arch.depth[s]):
                for gene, choices in (("kernel", c["kernels"]), ("expand", c["expands"])):
                    value = getattr(arch, gene)[s][j]
                    if value > (self._block(lower, s, j, gene) or min(choices)):
                        moves.append((gene, s, j))
        if not moves:
            return None
        gene, s, j = rng.choice(moves)
        depth = list(arch.depth)
        kernel = [list(k) for k in arch.kernel]
        expand = [list(e) for e in arch.expand]
        if gene == "depth":
            depth[s] = max(d for d in c["depths"] if d < depth[s])
        else:
            genes, choices = (kernel, c["kernels"]) if gene == "kernel" else (expand, c["expands"])
            genes[s][j] = max(v for v in choices if v < genes[s][j])
        return self._build(depth, kernel, expand)

    def contains(self, big: MBV3Arch, small: MBV3Arch) -> bool:
        for s in range(self.n_stages):
            if small.depth[s] > big.depth[s]:
                return False
            for j in range(small.depth[s]):
                if small.kernel[s][j] > big.kernel[s][j] or small.expand[s][j] > big.expand[s][j]:
                    return False
        return True

    def encode(self, arch: MBV3Arch) -> list[int]:
        dmax = max(self.config["depths"])
        vec = list(arch.depth)
        for s in range(self.n_stages):
            for j in range(dmax):
                vec += [arch.kernel[s][j], arch.expand[s][j]] if j < arch.depth[s] else [0, 0]
        return vec

    def to_json(self, arch: MBV3Arch) -> dict[str, Any]:
        return {"depth": list(arch.depth), "kernel": [list(k) for k in arch.kernel], "expand": [list(e) for e in arch.expand]}

    def from_json(self, obj: Any) -> MBV3Arch:
        c = self.config
        try:
            depth, kernel, expand = obj["depth"], obj["kernel"], obj["expand"]
            if not (len(depth) == len(kernel) == len(expand) == self.n_stages):
                raise ValueError(f"need {self.n_stages} stages")
            for d, ks, es in zip(depth, kernel, expand):
                if d not in c["depths"] or len(ks) != d or len(es) != d:
                    raise ValueError(f"depth {d} must be one of {c['depths']} and match the kernel/expand lists")
                if any(k not in c["kernels"] for k in ks) or any(e not in c["expands"] for e in es):
                    raise ValueError(f"kernels must be in {c['kernels']}, expands in {c['expands']}")
        except (KeyError, TypeError, ValueError) as exc:
            raise RegnasError(f"not a valid mbv3 arch ({exc}); give {{'depth': [...], 'kernel': [[...]], 'expand': [[...]]}}") from exc
        return self._build(list(depth), kernel, expand)

    def units(self, arch: MBV3Arch) -> list[tuple]:
        blocks = [("block", s, j > 0, k, e) for s in range(self.n_stages) for j, (k, e) in enumerate(zip(arch.kernel[s], arch.expand[s]))]
        return [("stem",), *blocks, ("head",)]

    def unit_group(self, unit: tuple) -> str:
        return f"stage{unit[1]}" if unit[0] == "block" else unit[0]

    def all_units(self) -> list[tuple]:
        c = self.config
        choices = [(later, k, e) for later in (False, True) for k in c["kernels"] for e in c["expands"]]
        return [("stem",), *(("block", s, *ch) for s in range(self.n_stages) for ch in choices), ("head",)]

    def build_unit(self, unit: tuple) -> tuple[nn.Module, tuple[int, ...]]:
        c = self.config
        if unit[0] == "stem":
            return ConvBN(c["input_shape"][0], c["stem_width"], 3, c["stem_stride"], act="hswish"), tuple(c["input_shape"])
        resolutions = _stage_resolutions(c)
        if unit[0] == "head":
            return _Head(c["stages"][-1]["width"], c), (c["stages"][-1]["width"], *resolutions[-1][1])
        _, s, later, k, e = unit
        st, (cin, width, stride) = c["stages"][s], _stage_io(c)[s]
        block = MBConv(width if later else cin, width, k, e, 1 if later else stride, st["se"], st["act"])
        return block, (width if later else cin, *resolutions[s][int(later)])

    def channel_order(self, supernet: nn.Module) -> list[tuple[str, int, torch.Tensor]]:
        perms = []
        for s, stage in enumerate(supernet.stages):
            for j, block in enumerate(stage):
                importance = block.project.conv.weight.detach().abs().sum((0, 2, 3))
                perm = torch.argsort(importance, descending=True, stable=True)
                p = f"stages.{s}.{j}."
                keys = [(f"{p}{m}.conv.weight", 0) for m in ("expand", "dw")]
                keys += [(f"{p}{m}.bn.{t}", 0) for m in ("expand", "dw") for t in ("weight", "bias", "running_mean", "running_var")]
                if isinstance(block.se, DynamicSqueezeExcite):
                    keys += [(f"{p}se.reduce.weight", 1), (f"{p}se.expand.weight", 0), (f"{p}se.expand.bias", 0)]
                keys.append((f"{p}project.conv.weight", 1))
                perms += [(k, d, perm) for k, d in keys]
        return perms

    def build_supernet(self) -> MBV3Supernet:
        return MBV3Supernet(self.config)

    def build_subnet(self, arch: MBV3Arch, device: str | torch.device = "cpu") -> MBV3Net:
        with torch.device(device):
            return MBV3Net(self.config, arch)


__all__ = ["MBV3Arch", "MBV3Net", "MBV3Space", "MBV3Supernet"]

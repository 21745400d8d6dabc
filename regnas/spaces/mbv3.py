"""`mbv3`: an OFA-style MobileNetV3 space adapted to small inputs.

Four stages of inverted-residual blocks with elastic depth, and per block an elastic depthwise
kernel and expand ratio; squeeze-excite and hard-swish in the later stages as in MobileNetV3.
A smaller arch uses the first blocks of each stage, the first expanded channels of each block
and the centre of each kernel, so its weights are literally part of every larger arch's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

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
from regnas.spaces.base import Gene, SearchSpace, conv_strides, stage_resolutions

STAGES = (
    {"width": 24, "se": False, "act": "relu"},
    {"width": 40, "se": True, "act": "relu"},
    {"width": 64, "se": False, "act": "hswish"},
    {"width": 96, "se": True, "act": "hswish"},
)


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
        if self.residual:
            # Zero-γ (Goyal et al.; BigNAS), as in `resnet`: each block starts as the identity, so the
            # blocks a shallow subnet skips start harmless to it (docs/notes/training-recipes.md).
            nn.init.zeros_(self.project.bn.weight)

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
    arch_type = MBV3Arch
    # One warm epoch (up to 7 epochs) trains a teacher good enough to distil from; more only take
    # sandwich epochs from the subnets it trains through one random draw a step. At 7 epochs on
    # Fashion-MNIST, 1 warm epoch instead of 3 brought the median within 0.6-0.8 points of its twin
    # (1.0-1.2 before) with fewer flips, on two seeds (docs/notes/training-recipes.md).
    recipe = {"warm_fraction": 0.2}

    @classmethod
    def default_config(cls, input_shape: tuple[int, int, int], num_classes: int) -> dict[str, Any]:
        c, h, w = input_shape
        stem_stride, *strides = conv_strides(min(h, w))
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

    def gene_table(self) -> list[Gene]:
        return [Gene("kernel", tuple(sorted(self.config["kernels"]))), Gene("expand", tuple(sorted(self.config["expands"])))]

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
        resolutions = stage_resolutions(c)
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

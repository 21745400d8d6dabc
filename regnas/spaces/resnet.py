"""`resnet`: an OFA-style ResNet space of bottleneck blocks, adapted to small inputs.

Four stages of bottleneck blocks (1×1 reduce, 3×3, 1×1 expand, residual) with elastic depth
per stage, an elastic width multiplier per stage (the stage's output channels) and an elastic
expand ratio per block (mid channels = ratio × the block's active output width, as in OFA). The
first block of a stage always has a 1×1 projection shortcut, since its input width is elastic.
A smaller arch uses the first blocks of each stage, the first output and mid channels of each
block, so its weights are literally part of every larger arch's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regnas.errors import RegnasError
from regnas.nn import ConvBN, DynamicConvBN, make_divisible
from regnas.spaces import register_space
from regnas.spaces.base import Gene, SearchSpace, conv_strides, stage_resolutions

STAGES = ({"width": 64}, {"width": 128}, {"width": 192}, {"width": 256})


@dataclass(frozen=True, order=True)
class ResNetArch:
    """Per stage, the width multiplier and the expand ratio of each active block (depth = number of blocks)."""

    width: tuple[float, ...]
    expand: tuple[tuple[float, ...], ...]

    @property
    def depth(self) -> tuple[int, ...]:
        return tuple(len(e) for e in self.expand)


def stage_width(base: int, mult: float) -> int:
    """Output channels of a stage of base width `base` under width multiplier `mult` (monotone in `mult`)."""
    return make_divisible(base * mult)


def mid_width(width: int, expand: float) -> int:
    """Bottleneck channels of a block of output width `width` (monotone in both)."""
    return max(1, round(width * expand))


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand, plus the identity or a 1×1 projection shortcut."""

    def __init__(self, cin: int, cout: int, mid: int, stride: int, project: bool):
        super().__init__()
        self.conv1 = ConvBN(cin, mid, 1, act="relu")
        self.conv2 = ConvBN(mid, mid, 3, stride, act="relu")
        self.conv3 = ConvBN(mid, cout, 1)
        self.shortcut = ConvBN(cin, cout, 1, stride) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.conv2(self.conv1(x)))
        return F.relu(y + (self.shortcut(x) if self.shortcut is not None else x))


class ElasticBottleneck(nn.Module):
    """The supernet's block: holds the widest channels, runs any prefix of them."""

    def __init__(self, cin: int, cout: int, mid: int, stride: int, project: bool):
        super().__init__()
        self.conv1 = DynamicConvBN(cin, mid, 1, act="relu")
        self.conv2 = DynamicConvBN(mid, mid, 3, stride, act="relu")
        self.conv3 = DynamicConvBN(mid, cout, 1)
        self.shortcut = DynamicConvBN(cin, cout, 1, stride) if project else None
        # Zero-γ (Goyal et al.): each block starts as its shortcut, so every subnet starts shallow and
        # trains fast (on digits, 8 epochs: 98.9% top-1 for the largest instead of 92.6%).
        nn.init.zeros_(self.conv3.bn.weight)

    def forward(self, x: torch.Tensor, width: int, mid: int) -> torch.Tensor:
        y = self.conv3(self.conv2(self.conv1(x, mid), mid), width)
        return F.relu(y + (self.shortcut(x, width) if self.shortcut is not None else x))


class _Head(nn.Module):
    """Global average pool, dropout and classifier."""

    def __init__(self, cin: int, config: dict[str, Any]):
        super().__init__()
        self.dropout = nn.Dropout(config["dropout"])
        self.classifier = nn.Linear(cin, config["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(x.mean((2, 3))))


class _ElasticHead(_Head):
    """`_Head` reading only the first (active) input channels of its classifier."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.classifier.weight
        return F.linear(self.dropout(x.mean((2, 3))), w[:, : x.shape[1]], self.classifier.bias)


def _stem(config: dict[str, Any]) -> ConvBN:
    return ConvBN(config["input_shape"][0], config["stem_width"], 3, config["stem_stride"], act="relu")


class ResNetNet(nn.Module):
    """A standalone network of one `resnet` arch."""

    def __init__(self, c: dict[str, Any], arch: ResNetArch):
        super().__init__()
        self.stem = _stem(c)
        self.stages = nn.ModuleList()
        cin = c["stem_width"]
        for st, mult, es in zip(c["stages"], arch.width, arch.expand):
            w = stage_width(st["width"], mult)
            blocks = [Bottleneck(cin if j == 0 else w, w, mid_width(w, e), st["stride"] if j == 0 else 1, j == 0) for j, e in enumerate(es)]
            self.stages.append(nn.ModuleList(blocks))
            cin = w
        self.head = _Head(cin, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return self.head(x)


class ResNetSupernet(nn.Module):
    """The weight-sharing supernet; `forward(x, arch)` runs the subnet `arch`."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.bases = [st["width"] for st in config["stages"]]
        dmax, emax = max(config["depths"]), max(config["expands"])
        self.stem = _stem(config)
        self.stages = nn.ModuleList()
        cin = config["stem_width"]
        for st in config["stages"]:
            w, mid = st["width"], mid_width(st["width"], emax)
            blocks = [ElasticBottleneck(cin if j == 0 else w, w, mid, st["stride"] if j == 0 else 1, j == 0) for j in range(dmax)]
            self.stages.append(nn.ModuleList(blocks))
            cin = w
        self.head = _ElasticHead(cin, config)

    def forward(self, x: torch.Tensor, arch: ResNetArch) -> torch.Tensor:
        x = self.stem(x)
        for stage, base, mult, es in zip(self.stages, self.bases, arch.width, arch.expand):
            w = stage_width(base, mult)
            for block, e in zip(stage, es):
                x = block(x, w, mid_width(w, e))
        return self.head(x)


@register_space
class ResNetSpace(SearchSpace):
    """OFA-style ResNet: elastic depth {2,3,4}, width multiplier {0.65,0.8,1.0} per stage, expand {0.2,0.25,0.35} per block."""

    name = "resnet"
    arch_type = ResNetArch
    # Twice a standalone net's learning rate: at the shared one the mid-size subnets underfit (the median's train
    # top-1 92.8% against its twin's 93.5%); at twice it the median gained 0.40 / 0.21 points on two training seeds,
    # the largest and smallest held, and the twins themselves do worse there (docs/notes/training-recipes.md).
    recipe = {"supernet_lr_scale": 2.0}
    # Photographs: SGD with Nesterov momentum trained the largest subnet alone to 79.4% in 10 epochs where AdamW reached
    # 77.8% (32-px CIFAR-10 photos, one seed; docs/notes/training-recipes.md). SGD does not normalize the sandwich's
    # summed gradients as Adam does, so the supernet trains at a standalone net's rate.
    policy_recipes = {"photo": {"optimizer": "sgd", "lr": 0.2, "weight_decay": 5e-4, "supernet_lr_scale": 1.0}}

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        for st in config["stages"]:
            widths = [stage_width(st["width"], m) for m in sorted(config["width_mults"])]
            mids = [[mid_width(w, e) for e in sorted(config["expands"])] for w in widths]
            if any(len(set(v)) != len(v) for v in [widths, *mids]):
                raise RegnasError(
                    f"resnet stage width {st['width']} gives equal channel counts {widths} / {mids} for different choices; "
                    "widen the stage or space out width_mults and expands"
                )

    @classmethod
    def default_config(cls, input_shape: tuple[int, int, int], num_classes: int) -> dict[str, Any]:
        c, h, w = input_shape
        stem_stride, *strides = conv_strides(min(h, w))
        stages = [{**s, "stride": st} for s, st in zip(STAGES, strides)]
        return {
            "input_shape": [c, h, w],
            "num_classes": num_classes,
            "stem_width": 32,
            "stem_stride": stem_stride,
            "stages": stages,
            "dropout": 0.1,
            "depths": [2, 3, 4],
            "width_mults": [0.65, 0.8, 1.0],
            "expands": [0.2, 0.25, 0.35],
        }

    def gene_table(self) -> list[Gene]:
        """Width multipliers per stage (encoded as channels), expand ratios per block (encoded in percent)."""
        bases = [st["width"] for st in self.config["stages"]]
        return [
            Gene("width", tuple(sorted(self.config["width_mults"])), "stage", lambda m, s: stage_width(bases[s], m)),
            Gene("expand", tuple(sorted(self.config["expands"])), "block", lambda e, s: round(100 * e)),
        ]

    def units(self, arch: ResNetArch) -> list[tuple]:
        """Stem, then ("block", stage, later, in channels, out channels, mid channels) per block, then ("head", channels)."""
        out, cin = [("stem",)], self.config["stem_width"]
        for s, (st, mult, es) in enumerate(zip(self.config["stages"], arch.width, arch.expand)):
            w = stage_width(st["width"], mult)
            out += [("block", s, j > 0, w if j else cin, w, mid_width(w, e)) for j, e in enumerate(es)]
            cin = w
        return [*out, ("head", cin)]

    def unit_group(self, unit: tuple) -> str:
        return f"stage{unit[1]}" if unit[0] == "block" else unit[0]

    def all_units(self) -> list[tuple]:
        c = self.config
        widths = [sorted({stage_width(st["width"], m) for m in c["width_mults"]}) for st in c["stages"]]
        units: list[tuple] = [("stem",)]
        for s, ws in enumerate(widths):
            inputs = [c["stem_width"]] if s == 0 else widths[s - 1]
            for w in ws:
                mids = sorted({mid_width(w, e) for e in c["expands"]})
                units += [("block", s, False, cin, w, mid) for cin in inputs for mid in mids]
                units += [("block", s, True, w, w, mid) for mid in mids]
        return [*units, *(("head", w) for w in widths[-1])]

    def build_unit(self, unit: tuple) -> tuple[nn.Module, tuple[int, ...]]:
        c = self.config
        if unit[0] == "stem":
            return _stem(c), tuple(c["input_shape"])
        resolutions = stage_resolutions(c)
        if unit[0] == "head":
            return _Head(unit[1], c), (unit[1], *resolutions[-1][1])
        _, s, later, cin, w, mid = unit
        block = Bottleneck(cin, w, mid, 1 if later else c["stages"][s]["stride"], not later)
        return block, (cin, *resolutions[s][int(later)])

    def channel_order(self, supernet: nn.Module) -> list[tuple[str, int, torch.Tensor]]:
        """Mid channels of every block by the weight that reads them, stage outputs by all weights that read them.

        Each permutation is applied to every tensor that writes or reads those channels (the residual
        stream of a stage included), so the largest subnet computes exactly the same function.
        """
        bn = ("weight", "bias", "running_mean", "running_var")
        state = supernet.state_dict()
        perms: list[tuple[str, int, torch.Tensor]] = []

        def order(importance: torch.Tensor) -> torch.Tensor:
            return torch.argsort(importance, descending=True, stable=True)

        def l1(t: torch.Tensor) -> torch.Tensor:
            return t.detach().abs().sum([d for d in range(t.dim()) if d != 1])

        for s, stage in enumerate(supernet.stages):
            for j, block in enumerate(stage):
                p = f"stages.{s}.{j}."
                first = order(l1(block.conv2.conv.weight))
                second = order(l1(block.conv3.conv.weight))
                perms += [(f"{p}conv1.conv.weight", 0, first)] + [(f"{p}conv1.bn.{t}", 0, first) for t in bn]
                perms += [(f"{p}conv2.conv.weight", 1, first), (f"{p}conv2.conv.weight", 0, second)]
                perms += [(f"{p}conv2.bn.{t}", 0, second) for t in bn] + [(f"{p}conv3.conv.weight", 1, second)]
            # The stage's output channels: written by every conv3 and the shortcut, read by later blocks and the next stage or head.
            readers = [f"stages.{s}.{j}.conv1.conv.weight" for j in range(1, len(stage))]
            if s + 1 < len(supernet.stages):
                readers += [f"stages.{s + 1}.0.conv1.conv.weight", f"stages.{s + 1}.0.shortcut.conv.weight"]
            else:
                readers.append("head.classifier.weight")
            perm = order(sum(l1(state[k]) for k in readers))
            writers = [f"stages.{s}.{j}.conv3" for j in range(len(stage))] + [f"stages.{s}.0.shortcut"]
            perms += [(f"{w}.conv.weight", 0, perm) for w in writers] + [(f"{w}.bn.{t}", 0, perm) for w in writers for t in bn]
            perms += [(k, 1, perm) for k in readers]
        return perms

    def build_supernet(self) -> ResNetSupernet:
        return ResNetSupernet(self.config)

    def build_subnet(self, arch: ResNetArch, device: str | torch.device = "cpu") -> ResNetNet:
        with torch.device(device):
            return ResNetNet(self.config, arch)


__all__ = ["ResNetArch", "ResNetNet", "ResNetSpace", "ResNetSupernet"]

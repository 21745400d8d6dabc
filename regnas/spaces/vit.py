"""`vit`: a small vision transformer space with elastic depth, heads and MLP ratio.

A patch-embedding convolution with a learned position embedding, pre-norm transformer blocks and
a LayerNorm, mean-pool and linear head. Per block the number of attention heads (of a fixed head
dimension) and the MLP ratio are elastic, and so is the number of blocks. A smaller arch uses the
first blocks, the first heads of each block (a prefix of the q/k/v output channels and of the
projection's input channels) and the first hidden units of each MLP, so its weights are literally
part of every larger arch's. There is no batch norm, so subnets need no recalibration.

Tokens stay on their (H, W) grid and the token-wise linear layers are 1×1 convolutions: the same
maths as `nn.Linear` over tokens, but counted per token by `count_macs` (its linear hook counts
one call, not one per token). Like `count_macs` itself, FLOPs leave out the attention matmuls
(2·N²·heads·head_dim per block for N tokens: under 10% of a block on the default ~5×5 grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regnas.errors import RegnasError
from regnas.nn import ElasticPointwise
from regnas.spaces import register_space
from regnas.spaces.base import MIN_SIDE, Gene, SearchSpace


@dataclass(frozen=True, order=True)
class ViTArch:
    """The number of heads and the MLP ratio of each active block (depth = number of blocks)."""

    heads: tuple[int, ...]
    mlp_ratio: tuple[float, ...]

    @property
    def depth(self) -> int:
        return len(self.heads)


def token_grid(config: dict[str, Any]) -> tuple[int, int]:
    """Rows and columns of patches: the image is zero-padded evenly on both sides to whole patches."""
    p = config["patch"]
    return tuple(-(-s // p) for s in config["input_shape"][1:])


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) token grid."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    """Non-overlapping patch×patch convolution onto the token grid, plus a learned position embedding."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        c, h, w = config["input_shape"]
        p, grid = config["patch"], token_grid(config)
        pad = tuple(-(-(g * p - s) // 2) for g, s in zip(grid, (h, w)))
        self.proj = nn.Conv2d(c, config["embed_dim"], p, p, pad)
        self.pos = nn.Parameter(torch.empty(1, config["embed_dim"], *grid))
        # At the scale of the patch embedding of a unit-variance image (ViT's 0.02 is far below it): on a
        # few dozen tokens position is much of the signal, and a faint one leaves training on a long plateau.
        nn.init.trunc_normal_(self.pos, std=0.5, a=-1.0, b=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) + self.pos


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Multi-head softmax attention over the grid; channel c belongs to head c // head_dim."""
    # (N, C, H, W) -> (N, heads, head_dim, H·W) and back without reading sizes: Core ML's converter rejects traced size arithmetic.
    qh, kh, vh = (t.flatten(2).unflatten(1, (-1, head_dim)) for t in (q, k, v))
    attn = torch.softmax((qh.transpose(-2, -1) @ kh) * head_dim**-0.5, dim=-1)
    return (vh @ attn.transpose(-2, -1)).reshape_as(q)


def mlp_hidden(dim: int, ratio: float) -> int:
    """Hidden units of an MLP with this ratio."""
    return round(dim * ratio)


class Block(nn.Module):
    """Pre-norm transformer block: x + proj(attention(ln1 x)), then x + fc2(gelu(fc1(ln2 x)))."""

    conv: type[nn.Conv2d] = nn.Conv2d

    def __init__(self, dim: int, inner: int, hidden: int, head_dim: int):
        super().__init__()
        self.dim, self.head_dim = dim, head_dim
        self.ln1 = ChannelLayerNorm(dim)
        self.q, self.k, self.v = (self.conv(dim, inner, 1) for _ in range(3))
        self.proj = self.conv(inner, dim, 1)
        self.ln2 = ChannelLayerNorm(dim)
        self.fc1 = self.conv(dim, hidden, 1)
        self.fc2 = self.conv(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln1(x)
        x = x + self.proj(attend(self.q(y), self.k(y), self.v(y), self.head_dim))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class ElasticBlock(Block):
    """The supernet's block: holds the most heads and the widest MLP, runs any prefix of them."""

    conv = ElasticPointwise

    def __init__(self, dim: int, inner: int, hidden: int, head_dim: int):
        super().__init__(dim, inner, hidden, head_dim)
        # Both residual branches start at zero (as in SkipInit), so every subnet starts as the same shallow
        # network: under the sandwich rule the supernet otherwise sits on a long plateau.
        for m in (self.proj, self.fc2):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, heads: int, mlp_ratio: float) -> torch.Tensor:
        inner = heads * self.head_dim
        y = self.ln1(x)
        x = x + self.proj(attend(self.q(y, inner), self.k(y, inner), self.v(y, inner), self.head_dim))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x), mlp_hidden(self.dim, mlp_ratio))))


class _Head(nn.Module):
    """LayerNorm, mean over tokens and classifier (fixed across archs)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.norm = ChannelLayerNorm(config["embed_dim"])
        self.classifier = nn.Linear(config["embed_dim"], config["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(x).mean((2, 3)))


class ViTNet(nn.Module):
    """A standalone network of one `vit` arch."""

    def __init__(self, config: dict[str, Any], arch: ViTArch):
        super().__init__()
        dim, hd = config["embed_dim"], config["head_dim"]
        self.stem = PatchEmbed(config)
        self.blocks = nn.ModuleList(Block(dim, h * hd, mlp_hidden(dim, r), hd) for h, r in zip(arch.heads, arch.mlp_ratio))
        self.head = _Head(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class ViTSupernet(nn.Module):
    """The weight-sharing supernet; `forward(x, arch)` runs the subnet `arch`."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        dim, hd = config["embed_dim"], config["head_dim"]
        inner, hidden = max(config["heads"]) * hd, mlp_hidden(dim, max(config["mlp_ratios"]))
        self.stem = PatchEmbed(config)
        self.blocks = nn.ModuleList(ElasticBlock(dim, inner, hidden, hd) for _ in range(max(config["depths"])))
        self.head = _Head(config)

    def forward(self, x: torch.Tensor, arch: ViTArch) -> torch.Tensor:
        x = self.stem(x)
        for block, h, r in zip(self.blocks, arch.heads, arch.mlp_ratio):
            x = block(x, h, r)
        return self.head(x)


@register_space
class ViTSpace(SearchSpace):
    """Small ViT: elastic depth {2..6}, heads {2,3,4} of dimension 16, MLP ratio {2,3,4}, embedding 64."""

    name = "vit"
    arch_type = ViTArch
    flat = True
    # Its largest subnet, the teacher, is no better than a median one trained alone, so the students
    # learn half from the labels, and the sandwich starts after one warm epoch in ten: closer to their
    # twins and fewer flips. It keeps gaining past 10 epochs, its shared subnets more than their twins
    # alone, so a budget may buy 20 (docs/notes/training-recipes.md).
    recipe = {"student_labels": 0.5, "warm_fraction": 0.1, "max_epochs": 20}

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        hidden = [mlp_hidden(config["embed_dim"], r) for r in sorted(config["mlp_ratios"])]
        if len(set(hidden)) != len(hidden) or min(hidden) < 1:
            raise RegnasError(f"vit mlp_ratios {config['mlp_ratios']} give hidden widths {hidden}; use ratios that differ at embed_dim")

    @classmethod
    def default_config(cls, input_shape: tuple[int, int, int], num_classes: int) -> dict[str, Any]:
        c, h, w = input_shape
        if min(h, w) < MIN_SIDE:
            raise RegnasError(f"images of {min(h, w)} px per side are too small for vit; give at least {MIN_SIDE}×{MIN_SIDE} px")
        return {
            "input_shape": [c, h, w],
            "num_classes": num_classes,
            # About 5×5 tokens whatever the image size: 2×2 patches on 8×8 digits, 6×6 on 28×28.
            "patch": max(1, math.ceil(min(h, w) / 5)),
            "embed_dim": 64,
            "head_dim": 16,
            "depths": [2, 3, 4, 5, 6],
            "heads": [2, 3, 4],
            "mlp_ratios": [2, 3, 4],
        }

    def gene_table(self) -> list[Gene]:
        """Heads and MLP ratio per block (the ratio encoded as hidden units)."""
        dim = self.config["embed_dim"]
        return [
            Gene("heads", tuple(sorted(self.config["heads"]))),
            Gene("mlp_ratio", tuple(sorted(self.config["mlp_ratios"])), "block", lambda r, s: mlp_hidden(dim, r)),
        ]

    def units(self, arch: ViTArch) -> list[tuple]:
        """Stem, ("block", heads, mlp_ratio) per block (every block sees the same token grid), head."""
        return [("stem",), *(("block", h, r) for h, r in zip(arch.heads, arch.mlp_ratio)), ("head",)]

    def all_units(self) -> list[tuple]:
        c = self.config
        return [("stem",), *(("block", h, r) for h in c["heads"] for r in c["mlp_ratios"]), ("head",)]

    def build_unit(self, unit: tuple) -> tuple[nn.Module, tuple[int, ...]]:
        c = self.config
        if unit[0] == "stem":
            return PatchEmbed(c), tuple(c["input_shape"])
        tokens = (c["embed_dim"], *token_grid(c))
        if unit[0] == "head":
            return _Head(c), tokens
        _, heads, ratio = unit
        return Block(c["embed_dim"], heads * c["head_dim"], mlp_hidden(c["embed_dim"], ratio), c["head_dim"]), tokens

    def channel_order(self, supernet: nn.Module) -> list[tuple[str, int, torch.Tensor]]:
        """Heads by the weight of their projection columns, MLP units by the weight of their fc2 columns.

        A head moves as a whole (its q, k, v rows and projection columns), so the largest subnet
        computes exactly the same function; the embedding channels are not elastic and stay put.
        """
        hd, perms = self.config["head_dim"], []
        for j, block in enumerate(supernet.blocks):
            p = f"blocks.{j}."
            head_weight = block.proj.weight.detach().abs().sum((0, 2, 3)).reshape(-1, hd).sum(1)
            order = torch.argsort(head_weight, descending=True, stable=True)
            heads = (order[:, None] * hd + torch.arange(hd)).flatten()
            perms += [(f"{p}{m}.{t}", 0, heads) for m in "qkv" for t in ("weight", "bias")] + [(f"{p}proj.weight", 1, heads)]
            units = torch.argsort(block.fc2.weight.detach().abs().sum((0, 2, 3)), descending=True, stable=True)
            perms += [(f"{p}fc1.weight", 0, units), (f"{p}fc1.bias", 0, units), (f"{p}fc2.weight", 1, units)]
        return perms

    def build_supernet(self) -> ViTSupernet:
        return ViTSupernet(self.config)

    def build_subnet(self, arch: ViTArch, device: str | torch.device = "cpu") -> ViTNet:
        with torch.device(device):
            return ViTNet(self.config, arch)


__all__ = ["ViTArch", "ViTNet", "ViTSpace", "ViTSupernet"]

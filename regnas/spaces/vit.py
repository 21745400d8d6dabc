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
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regnas.errors import RegnasError
from regnas.spaces import register_space
from regnas.spaces.base import MIN_SIDE, SearchSpace


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


class ElasticPointwise(nn.Conv2d):
    """1×1 convolution (token-wise linear) running on the first input and output channels."""

    def forward(self, x: torch.Tensor, out_channels: int | None = None) -> torch.Tensor:
        cout = out_channels or self.out_channels
        return F.conv2d(x, self.weight[:cout, : x.shape[1]], self.bias[:cout])


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

    def _uniform(self, depth: int, heads: int, ratio: float) -> ViTArch:
        return ViTArch((heads,) * depth, (ratio,) * depth)

    def largest(self) -> ViTArch:
        c = self.config
        return self._uniform(max(c["depths"]), max(c["heads"]), max(c["mlp_ratios"]))

    def smallest(self) -> ViTArch:
        c = self.config
        return self._uniform(min(c["depths"]), min(c["heads"]), min(c["mlp_ratios"]))

    def _pick(self, gene: str, rng: random.Random, lower: ViTArch | None, j: int = 0) -> float:
        """A random choice of `gene` ('depth', 'heads' or 'mlp_ratio'; the latter two for block j), ⊇ lower."""
        c = self.config
        if gene == "depth":
            choices, floor = c["depths"], lower.depth if lower else None
        else:
            choices = c["heads"] if gene == "heads" else c["mlp_ratios"]
            floor = getattr(lower, gene)[j] if lower is not None and j < lower.depth else None
        return rng.choice([v for v in choices if floor is None or v >= floor])

    def _full_genes(self, arch: ViTArch, rng: random.Random, lower: ViTArch | None) -> tuple[list[int], list[float]]:
        """Per-block genes for all max-depth slots: the arch's where active, random (⊇ lower) elsewhere."""
        slots = range(arch.depth, max(self.config["depths"]))
        heads = list(arch.heads) + [self._pick("heads", rng, lower, j) for j in slots]
        ratio = list(arch.mlp_ratio) + [self._pick("mlp_ratio", rng, lower, j) for j in slots]
        return heads, ratio

    def sample(self, rng: random.Random, lower: ViTArch | None = None) -> ViTArch:
        dmax = max(self.config["depths"])
        depth = self._pick("depth", rng, lower)
        heads = [self._pick("heads", rng, lower, j) for j in range(dmax)]
        ratio = [self._pick("mlp_ratio", rng, lower, j) for j in range(dmax)]
        return ViTArch(tuple(heads[:depth]), tuple(ratio[:depth]))

    def mutate(self, arch: ViTArch, rng: random.Random, prob: float, lower: ViTArch | None = None) -> ViTArch:
        heads, ratio = self._full_genes(arch, rng, lower)
        depth = self._pick("depth", rng, lower) if rng.random() < prob else arch.depth
        for j in range(len(heads)):
            if rng.random() < prob:
                heads[j] = self._pick("heads", rng, lower, j)
            if rng.random() < prob:
                ratio[j] = self._pick("mlp_ratio", rng, lower, j)
        return ViTArch(tuple(heads[:depth]), tuple(ratio[:depth]))

    def crossover(self, a: ViTArch, b: ViTArch, rng: random.Random) -> ViTArch:
        depth = rng.choice((a.depth, b.depth))
        donors = [[p for p in (a, b) if j < p.depth] for j in range(depth)]
        heads = tuple(rng.choice(d).heads[j] for j, d in enumerate(donors))
        return ViTArch(heads, tuple(rng.choice(d).mlp_ratio[j] for j, d in enumerate(donors)))

    def shrink(self, arch: ViTArch, rng: random.Random, lower: ViTArch | None = None) -> ViTArch | None:
        c = self.config
        floor = lower or self.smallest()
        moves = [("depth", 0)] if arch.depth > floor.depth else []
        for gene, choices in (("heads", c["heads"]), ("mlp_ratio", c["mlp_ratios"])):
            for j, v in enumerate(getattr(arch, gene)):
                if v > (getattr(lower, gene)[j] if lower is not None and j < lower.depth else min(choices)):
                    moves.append((gene, j))
        if not moves:
            return None
        gene, j = rng.choice(moves)
        heads, ratio = list(arch.heads), list(arch.mlp_ratio)
        if gene == "depth":
            depth = max(d for d in c["depths"] if d < arch.depth)
            return ViTArch(tuple(heads[:depth]), tuple(ratio[:depth]))
        genes, choices = (heads, c["heads"]) if gene == "heads" else (ratio, c["mlp_ratios"])
        genes[j] = max(v for v in choices if v < genes[j])
        return ViTArch(tuple(heads), tuple(ratio))

    def contains(self, big: ViTArch, small: ViTArch) -> bool:
        if small.depth > big.depth:
            return False
        return all(hs <= hb and rs <= rb for hs, hb, rs, rb in zip(small.heads, big.heads, small.mlp_ratio, big.mlp_ratio))

    def encode(self, arch: ViTArch) -> list[int]:
        """Depth, then each block slot's heads and MLP hidden width (0, 0 if absent)."""
        dim, vec = self.config["embed_dim"], [arch.depth]
        for j in range(max(self.config["depths"])):
            vec += [arch.heads[j], mlp_hidden(dim, arch.mlp_ratio[j])] if j < arch.depth else [0, 0]
        return vec

    def to_json(self, arch: ViTArch) -> dict[str, Any]:
        return {"depth": arch.depth, "heads": list(arch.heads), "mlp_ratio": list(arch.mlp_ratio)}

    def from_json(self, obj: Any) -> ViTArch:
        c = self.config

        def choice(v: Any, choices: list, what: str) -> Any:
            if isinstance(v, bool) or v not in choices:
                raise ValueError(f"{what} {v!r} must be one of {choices}")
            return choices[choices.index(v)]

        try:
            depth, heads, ratio = choice(obj["depth"], c["depths"], "depth"), obj["heads"], obj["mlp_ratio"]
            if not len(heads) == len(ratio) == depth:
                raise ValueError(f"depth {depth} must match the lengths of heads and mlp_ratio")
            heads = tuple(choice(h, c["heads"], "heads") for h in heads)
            ratio = tuple(choice(r, c["mlp_ratios"], "mlp_ratio") for r in ratio)
        except (KeyError, TypeError, ValueError) as exc:
            raise RegnasError(f"not a valid vit arch ({exc}); give {{'depth': n, 'heads': [...], 'mlp_ratio': [...]}}") from exc
        return ViTArch(heads, ratio)

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

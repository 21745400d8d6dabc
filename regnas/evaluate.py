"""Subnet evaluation: extract, recalibrate batch norm on the calib split, predict, cache by arch.

BN running statistics in a supernet are a blend over every subnet trained, so each subnet's are
re-estimated on calib data before it predicts (OFA). Predictions, not scores, are cached: flips
need the per-sample labels. Networks run where their weights are: with a GPU, the evaluator moves
the supernet and the splits it scores there once, and each batch becomes floats on the device.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from regnas.data import Dataset, to_float
from regnas.nn import fold_bn
from regnas.spaces import Arch
from regnas.train import Supernet

BATCH = 128
"""Images per forward pass: small enough that a batch's activations stay in cache (4× faster than 1000 on CPU)."""


@contextlib.contextmanager
def channels_last(net: nn.Module) -> Iterator[None]:
    """Run `net` channels-last (CPU convolutions are several times faster so), then give it back as it was.

    Exporters trace the same module afterwards, and some (ExecuTorch's XNNPACK passes) reject
    channels-last weights, so evaluation must not leave them behind.
    """
    net.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        net.to(memory_format=torch.contiguous_format)


def device_of(net: nn.Module) -> torch.device:
    """The device `net`'s weights are on."""
    return next(net.parameters()).device


def _batches(x: torch.Tensor, device: torch.device, size: int = BATCH) -> Iterator[torch.Tensor]:
    """Stored images `x` as model inputs on `device`, in equal channels-last batches of at most `size` images (equal, so
    averaging batch statistics is exact)."""
    n = max(1, math.ceil(len(x) / size))
    step = math.ceil(len(x) / n)
    for i in range(0, len(x), step):
        yield to_float(x[i : i + step].to(device, non_blocking=True)).contiguous(memory_format=torch.channels_last)


def recalibrate_bn(net: nn.Module, x: torch.Tensor) -> nn.Module:
    """Replace every BN layer's running statistics by their average over equal batches of `x`."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    net.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad(), channels_last(net):
        for batch in _batches(x, device_of(net)):
            net(batch)
    for m in bns:
        m.momentum = 0.1
    return net.eval()


@torch.no_grad()
def predict(net: nn.Module, x: torch.Tensor, inplace: bool = False) -> np.ndarray:
    """Predicted class per sample (batch norm folded into the convolutions, as the exported models compute;
    into `net` itself if `inplace`, for a network nothing else will use)."""
    net = fold_bn(net, inplace)
    with channels_last(net):
        preds = [net(b).argmax(1) for b in _batches(x, device_of(net))]
    return torch.cat(preds).cpu().numpy().astype(np.int64)


class Evaluator:
    """Predictions of subnets of one supernet on one dataset, cached per (arch, split)."""

    def __init__(self, supernet: Supernet, data: Dataset, calib_size: int = 1000, pool=None, device: torch.device | None = None):
        """`pool` (a regnas.parallel.RayPool over the same supernet and data) scores `prefetch` batches on its workers;
        `device` is where subnets run (default: where the supernet is), the supernet moved there."""
        self.device = torch.device(device) if device is not None else device_of(supernet.model)
        supernet.model.to(self.device)
        self.supernet = supernet
        self.data = data
        self.calib_x = data["calib"].x[:calib_size].to(self.device)
        self._x: dict[str, torch.Tensor] = {}
        self._subsets: dict[str, np.ndarray] = {}
        self._cache: dict[tuple[Arch, str], np.ndarray] = {}
        self.pool = pool

    @property
    def space(self):
        return self.supernet.space

    def subnet(self, arch: Arch) -> nn.Module:
        """The standalone subnet, on the evaluator's device, with BN statistics recalibrated for it."""
        return recalibrate_bn(self.space.extract(self.supernet.model, arch), self.calib_x)

    def _rows(self, split: str) -> tuple[str, np.ndarray | None]:
        """A split name's split and rows: `val` is all of val, `val:N` the same N of its images every time (seeded)."""
        base, _, n = split.partition(":")
        if not n:
            return base, None
        if split not in self._subsets:
            size = len(self.data[base])
            self._subsets[split] = np.sort(np.random.default_rng(0).permutation(size)[: min(int(n), size)])
        return base, self._subsets[split]

    def images(self, split: str) -> torch.Tensor:
        """A split's images (or `split:N`'s subset) on the evaluator's device, moved there once."""
        if split not in self._x:
            base, rows = self._rows(split)
            x = self.data[base].x
            self._x[split] = (x if rows is None else x[torch.from_numpy(rows)]).to(self.device)
        return self._x[split]

    def predictions(self, arch: Arch, split: str = "val") -> np.ndarray:
        key = (arch, split)
        if key not in self._cache:
            self._cache[key] = predict(self.subnet(arch), self.images(split), inplace=True)
        return self._cache[key]

    def prefetch(self, archs: list[Arch], split: str = "val") -> None:
        """Evaluate the uncached archs on the pool's workers at once (nothing to do without a pool)."""
        todo = [a for a in dict.fromkeys(archs) if (a, split) not in self._cache]
        if self.pool is not None and todo:
            for arch, pred in zip(todo, self.pool.map(todo, split)):
                self._cache[(arch, split)] = pred

    def close(self) -> None:
        """Release the pool's workers; later evaluations run in this process."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def labels(self, split: str = "val") -> np.ndarray:
        """A split's labels (or `split:N`'s subset)."""
        return self.restrict(split, self.data[self._rows(split)[0]].y.numpy())

    def restrict(self, split: str, values: np.ndarray) -> np.ndarray:
        """Per-sample `values` over all of `split`'s split, cut to `split` (`val:N`: its N rows; `val`: all of them)."""
        rows = self._rows(split)[1]
        return values if rows is None else values[rows]

    @property
    def evaluated(self) -> int:
        """Number of distinct (arch, split) evaluations so far."""
        return len(self._cache)

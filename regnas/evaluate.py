"""Subnet evaluation: extract, recalibrate batch norm on the calib split, predict, cache by arch.

BN running statistics in a supernet are a blend over every subnet trained, so each subnet's are
re-estimated on calib data before it predicts (OFA). Predictions, not scores, are cached: flips
need the per-sample labels.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from regnas.data import Dataset
from regnas.spaces import Arch
from regnas.train import Supernet


def _fast(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Channels-last input for a channels-last net: CPU depthwise inference is many times faster so."""
    net.to(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last)


def recalibrate_bn(net: nn.Module, x: torch.Tensor, batch_size: int = 500) -> nn.Module:
    """Replace every BN layer's running statistics by their exact average over `x`."""
    x = _fast(net, x)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    net.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            net(x[i : i + batch_size])
    for m in bns:
        m.momentum = 0.1
    return net.eval()


@torch.no_grad()
def predict(net: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """Predicted class per sample."""
    net.eval()
    x = _fast(net, x)
    return np.concatenate([net(x[i : i + batch_size]).argmax(1).numpy() for i in range(0, len(x), batch_size)]).astype(np.int64)


class Evaluator:
    """Predictions of subnets of one supernet on one dataset, cached per (arch, split)."""

    def __init__(self, supernet: Supernet, data: Dataset, calib_size: int = 1000):
        self.supernet = supernet
        self.data = data
        self.calib_x = data["calib"].x[:calib_size]
        self._cache: dict[tuple[Arch, str], np.ndarray] = {}
        self.pool = None  # a regnas.parallel.RayPool for `prefetch`; None evaluates in this process

    @property
    def space(self):
        return self.supernet.space

    def subnet(self, arch: Arch) -> nn.Module:
        """The standalone subnet with BN statistics recalibrated for it."""
        return recalibrate_bn(self.space.extract(self.supernet.model, arch), self.calib_x)

    def predictions(self, arch: Arch, split: str = "val") -> np.ndarray:
        key = (arch, split)
        if key not in self._cache:
            self._cache[key] = predict(self.subnet(arch), self.data[split].x)
        return self._cache[key]

    def prefetch(self, archs: list[Arch], split: str = "val") -> None:
        """Evaluate the uncached archs on the pool's workers at once (nothing to do without a pool)."""
        todo = [a for a in dict.fromkeys(archs) if (a, split) not in self._cache]
        if self.pool is not None and todo:
            for arch, pred in zip(todo, self.pool.map(todo, split)):
                self._cache[(arch, split)] = pred

    def labels(self, split: str = "val") -> np.ndarray:
        return self.data[split].y.numpy()

    @property
    def evaluated(self) -> int:
        """Number of distinct (arch, split) evaluations so far."""
        return len(self._cache)

"""The process group `torchrun` describes: which rank we are, on which device, and who writes.

`regnas train` runs unchanged as one process or under `torchrun --nproc_per_node N`: gloo on CPU,
NCCL on GPUs. Every rank holds the whole supernet (DDP), reads its slice of each global batch and
samples the same subnets from the same seed; only rank 0 logs and writes files.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from regnas.errors import RegnasError


@dataclass(frozen=True)
class World:
    """This process's place among `size` training processes."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch, on its device."""
        return t[self.rank :: self.size].to(self.device, non_blocking=True)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks."""
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def average_buffers(self, model: torch.nn.Module) -> None:
        """Average floating-point buffers (BN running statistics) so every rank holds the same model."""
        if not self.distributed:
            return
        for b in model.buffers():
            if b.is_floating_point():
                dist.all_reduce(b)
                b.div_(self.size)

    def assert_same(self, what: str, value: Any) -> None:
        """Fail on every rank unless all ranks hold the same `value` (a cheap guard against silent divergence)."""
        if not self.distributed:
            return
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        if any(v != values[0] for v in values):
            raise RegnasError(f"training ranks disagree on {what} ({values}); run every rank with the same regnas, data and --seed")

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def state_digest(model: torch.nn.Module) -> str:
    """A digest of every weight and buffer, equal on two ranks only if their models are bitwise equal."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def init_world() -> World:
    """Join the process group torchrun set up (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT), or run alone."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if size <= 1:
        return World(device=torch.device("cuda" if cuda else "cpu"))
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RegnasError(f"WORLD_SIZE={size} but {', '.join(missing)} unset; launch with torchrun --nproc_per_node N -m regnas train ...")
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if rank != 0:  # one voice: only rank 0 reports progress
        logging.getLogger("regnas").setLevel(logging.WARNING)
    return World(rank, size, torch.device(f"cuda:{local}" if cuda else "cpu"))


def launched_by_torchrun() -> bool:
    """True inside a multi-process torchrun launch."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1

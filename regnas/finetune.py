"""The family fine-tune (`regnas build --finetune`): members pulled towards agreement, the family still literally nested.

A nested family must stay nested, so it is fine-tuned either inside the supernet, all members at once
(`joint`: shared weights move for every member alike), or member by member on the weights each does not
share with the one before (`own`, PCT's procedure restricted to those weights).
"""

from __future__ import annotations

import copy
import logging
import time

import torch
import torch.nn.functional as F
from torch import nn

from regnas.data import Dataset, to_float
from regnas.distill import DistillConfig, deployed_term, fine_tune, finetune_schedule, focal_distillation
from regnas.errors import RegnasError
from regnas.evaluate import device_of, recalibrate_bn
from regnas.pct import pct_family
from regnas.spaces import Arch
from regnas.train import Supernet, autocast, synchronize

logger = logging.getLogger(__name__)

FINETUNE_MODES = {
    "joint": "nesting-preserving focal distillation inside the supernet: every member trains on its labels and towards the one"
    " before it, all at once, through the weights they share",
    "own": "nesting-preserving focal distillation: each member trains only the weights it does not share with the one before",
}


def joint_loss(
    logits: list[torch.Tensor], labels: torch.Tensor, cfg: DistillConfig, teachers: list[torch.Tensor | None] | None = None
) -> torch.Tensor:
    """The family's loss for one batch: the first member's cross-entropy, then each later member's focal
    distillation towards the one before it (whose logits are held fixed for the step), as in PCT;
    plus `ensemble`·½‖z − z̄‖² for every member towards the members' mean logits (fixed for the step);
    plus, for a member whose target has a deployed model, `deployed_weight`·`deployed_term` towards that model on the batch."""
    logits = [z.float() for z in logits]
    first = F.cross_entropy(logits[0], labels)
    loss = sum((focal_distillation(z, prev.detach(), labels, cfg) for z, prev in zip(logits[1:], logits)), first)
    for z, teacher in zip(logits, teachers or []):
        if teacher is not None:
            loss = loss + cfg.deployed_weight * deployed_term(z, teacher, labels, cfg)
    if cfg.ensemble:
        mean = torch.stack(logits).mean(0).detach()
        loss = loss + cfg.ensemble * sum(0.5 * (z - mean).pow(2).sum(1).mean() for z in logits)
    return loss


def joint_finetune(
    supernet: Supernet,
    archs: list[Arch],
    data: Dataset,
    cfg: DistillConfig = DistillConfig(),
    teachers: list[torch.Tensor | None] | None = None,
) -> list[nn.Module]:
    """The nested family's members fine-tuned together (`joint_loss`) in a copy of the supernet, then extracted (BN recalibrated).
    `teachers`: per member, its deployed model's logits (or predicted classes) on every train image, or None.

    The gradients meet in the weights the members share, so the smaller members move towards
    agreement too, not only the larger ones' own weights; the members are slices of one set of
    weights, so the family stays literally nested. About 600 steps (at least two epochs).
    """
    if len(archs) < 2:
        raise RegnasError("a nested fine-tune pulls each member towards the one before it, so it needs 2 or more members")
    cfg = cfg.settled(supernet.meta["train"].get("augment"))
    if cfg.deployed_weight is None and any(t is not None for t in teachers or []):
        raise RegnasError("the pull towards deployed models has no weight; settle the fine-tune with the reward's λ3 (settled)")
    model = copy.deepcopy(supernet.model)
    logger.info(f"finetune: {len(archs)} members fine-tuned together in the supernet (mean pull {cfg.ensemble:g})")
    device = next(model.parameters()).device
    moved = [None if t is None else t.to(device) for t in teachers or [None] * len(archs)]

    def loss(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return joint_loss([model(x, arch) for arch in archs], y, cfg, [None if t is None else t[idx] for t in moved])

    fine_tune(model, loss, data, cfg)
    calib = data["calib"].x[:1000]
    return [recalibrate_bn(supernet.space.extract(model, arch), calib) for arch in archs]


def check_finetune_mode(mode: str) -> None:
    """Refuse a `--finetune` mode that does not exist, before any work."""
    if mode not in FINETUNE_MODES:
        raise RegnasError(f"unknown --finetune {mode!r}; use joint (all members in the supernet) or own (each member's own weights)")


def finetune_seconds(model: nn.Module, archs: list[Arch], data: Dataset, cfg: DistillConfig, mode: str) -> float:
    """About how long `nested_finetune` of `archs` takes here: its steps times a timed step of `archs` in a copy of `model`.

    The own-weights mode trains one member against its fixed predecessor at a time, about
    (members − 1)/members of a joint step, on the same schedule.
    """
    check_finetune_mode(mode)
    model = copy.deepcopy(model).train().to(memory_format=torch.channels_last)
    device = device_of(model)
    x = to_float(data["train"].x[: cfg.batch_size].to(device)).contiguous(memory_format=torch.channels_last)
    y = data["train"].y[: cfg.batch_size].to(device)
    timings = []
    for _ in range(3):
        t0 = time.perf_counter()
        with autocast(device):
            value = joint_loss([model(x, arch) for arch in archs], y, cfg)
        value.backward()
        synchronize(device)
        timings.append(time.perf_counter() - t0)
    steps, epochs = finetune_schedule(len(data["train"]), cfg)
    share = 1.0 if mode == "joint" else (len(archs) - 1) / len(archs)
    return min(timings[1:]) * steps * epochs * share


def nested_finetune(
    supernet: Supernet,
    archs: list[Arch],
    data: Dataset,
    cfg: DistillConfig,
    mode: str = "joint",
    teachers: list[torch.Tensor | None] | None = None,
) -> list[nn.Module]:
    """`regnas build --finetune MODE`: the family fine-tuned towards each member's predecessor (and, jointly, towards the
    deployed models `teachers` holds), still literally nested."""
    check_finetune_mode(mode)
    if mode == "joint":
        return joint_finetune(supernet, archs, data, cfg, teachers)
    if any(t is not None for t in teachers or []):
        raise RegnasError("--finetune own does not distil towards deployed models; use --finetune joint (the default) or none")
    calib = data["calib"].x[:1000]
    return pct_family([recalibrate_bn(supernet.space.extract(supernet.model, a), calib) for a in archs], data, cfg, nested=True)

"""Positive-Congruent Training (Yan et al., CVPR 2021), the flip-reduction baseline regnas is compared with.

PCT keeps the architectures and instead fine-tunes each newer (larger) model towards the older
one with focal distillation (`regnas.distill`). Applied to the independent baseline family, each
member is fine-tuned against the (already fine-tuned) member before it.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from regnas.data import Dataset
from regnas.distill import DistillConfig, fine_tune, focal_distillation, shared_slices
from regnas.errors import RegnasError
from regnas.evaluate import recalibrate_bn

logger = logging.getLogger(__name__)


def pct_finetune(
    new: nn.Module, old: nn.Module, data: Dataset, cfg: DistillConfig = DistillConfig(), frozen: dict[str, tuple[slice, ...]] | None = None
) -> nn.Module:
    """A copy of `new` fine-tuned on train with focal distillation from `old` (left untouched).

    `frozen` names parameter slices that must not change (the weights `new` shares with `old`):
    they get no gradient and are restored bit for bit after every step, so weight decay cannot
    move them either and nesting stays literal.
    """
    model = copy.deepcopy(new).train()
    params = dict(model.named_parameters())
    keep = {name: (idx, params[name].detach()[idx].clone()) for name, idx in (frozen or {}).items()}
    for name, (idx, _) in keep.items():
        mask = torch.ones_like(params[name])
        mask[idx] = 0
        params[name].register_hook(lambda g, m=mask: g * m)
    old = old.eval()

    def loss(x: torch.Tensor, y: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher = old(x)
        return focal_distillation(model(x), teacher, y, cfg)

    def restore() -> None:
        with torch.no_grad():
            for name, (idx, value) in keep.items():
                params[name][idx] = value

    fine_tune(model, loss, data, cfg, after_step=restore)
    return recalibrate_bn(model, data["calib"].x[:1000])


def pct_family(nets: list[nn.Module], data: Dataset, cfg: DistillConfig = DistillConfig(), nested: bool = False) -> list[nn.Module]:
    """The first model as is, then each next one fine-tuned against the (fine-tuned) one before it.

    `nested` (regnas build --finetune): each model first takes the fine-tuned weights of the one
    before into the slice it shares with it, then trains only the weights it does not share, so a
    nested family stays literally nested.
    """
    if not nets:
        raise RegnasError("PCT needs at least one model")
    out = [nets[0]]
    for i, net in enumerate(nets[1:], 1):
        logger.info(f"pct: member {i + 1}/{len(nets)} against member {i}" + (", its own weights only" if nested else ""))
        frozen = None
        if nested:
            frozen = shared_slices(out[-1], net)
            net = copy.deepcopy(net)
            params, prev = dict(net.named_parameters()), dict(out[-1].named_parameters())
            with torch.no_grad():
                for name, idx in frozen.items():
                    params[name][idx] = prev[name]
        out.append(pct_finetune(net, out[-1], data, cfg, frozen))
    return out

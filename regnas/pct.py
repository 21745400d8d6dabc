"""Positive-Congruent Training (Yan et al., CVPR 2021), the flip-reduction baseline regnas is compared with.

PCT keeps the architectures and instead fine-tunes each newer (larger) model towards the older
one with *focal distillation*: cross-entropy plus a distillation term weighted `α + β·[old is
right]`, so the new model is pulled hardest towards the old one where the old one was correct,
which is exactly where a negative flip would hurt. Applied to the independent baseline family,
each member is fine-tuned against the (already fine-tuned) member before it.

A nested family (`regnas build --finetune`) must stay nested, so it is fine-tuned either inside
the supernet, all members at once (`joint`: shared weights move for every member alike), or
member by member on the weights each does not share with the one before (`own`).
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from regnas.data import Dataset, to_float
from regnas.errors import RegnasError
from regnas.evaluate import channels_last, device_of, recalibrate_bn
from regnas.nn import crop_slices
from regnas.spaces import Arch
from regnas.train import Supernet, autocast, synchronize

logger = logging.getLogger(__name__)

FINETUNE_MODES = {
    "joint": "nesting-preserving focal distillation inside the supernet: every member trains on its labels and towards the one"
    " before it, all at once, through the weights they share",
    "own": "nesting-preserving focal distillation: each member trains only the weights it does not share with the one before",
}


@dataclass(frozen=True)
class PCTConfig:
    """Focal-distillation fine-tuning: the paper's FD-LM (logit matching) with α=1, β=5.

    `weight` is λ, the distillation term's share: at λ=1 the summed squared logit gap swamps the
    cross-entropy on these small models and top-1 drops by points, so the default is 0.1.
    `epochs=None` fine-tunes for about 600 optimizer steps (2 to 10 epochs).
    `ensemble` weighs, in the joint fine-tune only, every member's pull towards the members' mean
    logits (as ELODI, Zhao et al., CVPR 2022, pulls models towards an ensemble): members that all
    mimic one function disagree less. PCT's baseline and the own-weights mode have no family to
    average and ignore it. On mbv3 Fashion-MNIST (search seed 0) 0 / 0.3 / 1 / 3 / 10 gave val mean
    NFR 0.75 / 0.72 / 0.73 / 0.57 / 0.53% at mean top-1 90.1 / 90.9 / 90.9 / 90.3 / 89.3%; 3 has
    the best reward at the build's 1,5.
    """

    epochs: int | None = None
    lr: float = 5e-4
    batch_size: int = 64
    weight: float = 0.1
    alpha: float = 1.0
    beta: float = 5.0
    kind: str = "lm"
    temperature: float = 100.0
    seed: int = 0
    ensemble: float = 3.0

    def __post_init__(self):
        if self.kind not in ("lm", "kl"):
            raise RegnasError(f"unknown focal distillation {self.kind!r}; use lm (logit matching) or kl")


def focal_term(new: torch.Tensor, old: torch.Tensor, labels: torch.Tensor, cfg: PCTConfig) -> torch.Tensor:
    """`mean[(α + β·[old right])·D(new, old)]`; D is ½‖z_new − z_old‖² (lm) or T²·KL (kl)."""
    focus = cfg.alpha + cfg.beta * (old.argmax(1) == labels).float()
    if cfg.kind == "lm":
        d = 0.5 * (new - old).pow(2).sum(1)
    else:
        t = cfg.temperature
        d = t * t * F.kl_div(F.log_softmax(new / t, 1), F.log_softmax(old / t, 1), reduction="none", log_target=True).sum(1)
    return (focus * d).mean()


def focal_distillation(new: torch.Tensor, old: torch.Tensor, labels: torch.Tensor, cfg: PCTConfig) -> torch.Tensor:
    """PCT's loss: `CE(new, y) + weight·focal_term(new, old)`."""
    new, old = new.float(), old.float()
    return F.cross_entropy(new, labels) + cfg.weight * focal_term(new, old, labels, cfg)


def shared_slices(small: nn.Module, large: nn.Module) -> dict[str, tuple[slice, ...]]:
    """Per parameter of `large`, the slice that is literally `small`'s parameter of the same name (the nesting rule)."""
    large_params = dict(large.named_parameters())
    out = {}
    for name, p in small.named_parameters():
        if name in large_params:
            out[name] = crop_slices(tuple(large_params[name].shape), tuple(p.shape))
    return out


MIN_EPOCHS = 2
"""Fewest epochs per fine-tune, joint or one member at a time. With one, on a resnet Fashion-MNIST family (search
seed 0), a second epoch took val NFR from 0.33 to 0.27% and test from 0.39 to 0.25%, with top-1 up 0.2–0.4
points; a third did not lower it further."""


def finetune_schedule(n_train: int, cfg: PCTConfig) -> tuple[int, int]:
    """(steps per epoch, epochs): about 600 optimizer steps, at least MIN_EPOCHS and at most 10 epochs, unless `cfg.epochs`.

    Part of the build's fine-tune cache key, so members fine-tuned on another schedule are not reused."""
    steps = max(1, n_train // cfg.batch_size)
    return steps, cfg.epochs or min(10, max(MIN_EPOCHS, math.ceil(600 / steps)))


def _fine_tune(
    model: nn.Module,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: Dataset,
    cfg: PCTConfig,
    after_step: Callable[[], None] | None = None,
) -> None:
    """Minimise `loss(x, y)` over train batches in place: AdamW, cosine schedule, about 600 steps unless `cfg.epochs`.

    Where the model is (a GPU: the train split is moved there once, and steps run under the training's
    autocast), channels-last as the supernet trains (twice as fast on CPU for the depthwise
    convolutions of mbv3); the model is given back contiguous, since exporters reject channels-last weights.
    """
    model.train()
    device = device_of(model)
    x_all, y_all = data["train"].x.to(device), data["train"].y.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    n = len(y_all)
    steps, epochs = finetune_schedule(n, cfg)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps * epochs)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    with channels_last(model):
        for epoch in range(epochs):
            order = torch.tensor(rng.sample(range(n), n), device=device)
            total = torch.zeros((), device=device)
            for step in range(steps):
                idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                with autocast(device):
                    value = loss(to_float(x_all[idx]).contiguous(memory_format=torch.channels_last), y_all[idx])
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
                schedule.step()
                if after_step is not None:
                    after_step()
                total += value.detach()
            logger.info(f"pct: epoch {epoch + 1}/{epochs} loss {total.item() / steps:.4f}")


def pct_finetune(
    new: nn.Module, old: nn.Module, data: Dataset, cfg: PCTConfig = PCTConfig(), frozen: dict[str, tuple[slice, ...]] | None = None
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

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher = old(x)
        return focal_distillation(model(x), teacher, y, cfg)

    def restore() -> None:
        with torch.no_grad():
            for name, (idx, value) in keep.items():
                params[name][idx] = value

    _fine_tune(model, loss, data, cfg, after_step=restore)
    return recalibrate_bn(model, data["calib"].x[:1000])


def pct_family(nets: list[nn.Module], data: Dataset, cfg: PCTConfig = PCTConfig(), nested: bool = False) -> list[nn.Module]:
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


def joint_loss(logits: list[torch.Tensor], labels: torch.Tensor, cfg: PCTConfig) -> torch.Tensor:
    """The family's loss for one batch: the first member's cross-entropy, then each later member's focal
    distillation towards the one before it (whose logits are held fixed for the step), as in PCT;
    plus `ensemble`·½‖z − z̄‖² for every member towards the members' mean logits (fixed for the step)."""
    logits = [z.float() for z in logits]
    first = F.cross_entropy(logits[0], labels)
    loss = sum((focal_distillation(z, prev.detach(), labels, cfg) for z, prev in zip(logits[1:], logits)), first)
    if cfg.ensemble:
        mean = torch.stack(logits).mean(0).detach()
        loss = loss + cfg.ensemble * sum(0.5 * (z - mean).pow(2).sum(1).mean() for z in logits)
    return loss


def joint_finetune(supernet: Supernet, archs: list[Arch], data: Dataset, cfg: PCTConfig = PCTConfig()) -> list[nn.Module]:
    """The nested family's members fine-tuned together (`joint_loss`) in a copy of the supernet, then extracted (BN recalibrated).

    The gradients meet in the weights the members share, so the smaller members move towards
    agreement too, not only the larger ones' own weights; the members are slices of one set of
    weights, so the family stays literally nested. About 600 steps (at least two epochs).
    """
    if len(archs) < 2:
        raise RegnasError("a nested fine-tune pulls each member towards the one before it, so it needs 2 or more members")
    model = copy.deepcopy(supernet.model)
    logger.info(f"pct: {len(archs)} members fine-tuned together in the supernet")
    _fine_tune(model, lambda x, y: joint_loss([model(x, arch) for arch in archs], y, cfg), data, cfg)
    calib = data["calib"].x[:1000]
    return [recalibrate_bn(supernet.space.extract(model, arch), calib) for arch in archs]


def check_finetune_mode(mode: str) -> None:
    """Refuse a `--finetune` mode that does not exist, before any work."""
    if mode not in FINETUNE_MODES:
        raise RegnasError(f"unknown --finetune {mode!r}; use joint (all members in the supernet) or own (each member's own weights)")


def finetune_seconds(model: nn.Module, archs: list[Arch], data: Dataset, cfg: PCTConfig, mode: str) -> float:
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


def nested_finetune(supernet: Supernet, archs: list[Arch], data: Dataset, cfg: PCTConfig, mode: str = "joint") -> list[nn.Module]:
    """`regnas build --finetune MODE`: the family fine-tuned towards each member's predecessor, still literally nested."""
    check_finetune_mode(mode)
    if mode == "joint":
        return joint_finetune(supernet, archs, data, cfg)
    calib = data["calib"].x[:1000]
    return pct_family([recalibrate_bn(supernet.space.extract(supernet.model, a), calib) for a in archs], data, cfg, nested=True)

"""Focal distillation (Yan et al., CVPR 2021), the loss behind both ways regnas makes models agree, and the loop they share.

A newer model is trained on its labels and towards an older one's logits, weighted `α + β·[old is right]`:
pulled hardest where the old model was correct, which is exactly where a negative flip would hurt. The
family fine-tune (`regnas.finetune`) applies it inside the supernet; the PCT baseline (`regnas.pct`) to
independent models, one after another.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from regnas.data import Dataset, to_float
from regnas.errors import RegnasError
from regnas.evaluate import channels_last, device_of
from regnas.nn import crop_slices
from regnas.train import autocast

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    """Focal-distillation fine-tuning: the paper's FD-LM (logit matching) with α=1, β=5.

    `weight` is λ, the distillation term's share: at λ=1 the summed squared logit gap swamps the
    cross-entropy on these small models and top-1 drops by points, so the default is 0.1.
    `epochs=None` fine-tunes for about 600 optimizer steps (2 to 10 epochs).
    `ensemble` weighs, in the joint fine-tune only, every member's pull towards the members' mean
    logits (as ELODI, Zhao et al., CVPR 2022, pulls models towards an ensemble): members that all
    mimic one function disagree less. PCT's baseline and the own-weights mode have no family to
    average and ignore it. On mbv3 Fashion-MNIST (search seed 0) 0 / 0.3 / 1 / 3 / 10 gave val mean
    NFR 0.75 / 0.72 / 0.73 / 0.57 / 0.53% at mean top-1 90.1 / 90.9 / 90.9 / 90.3 / 89.3%; 3 has
    the best reward at the build's 1,5. None: as the supernet's data wants (`ENSEMBLE`, `settled`).
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
    ensemble: float | None = None
    deployed_weight: float | None = None
    """The pull towards a target's deployed model (`--deployed`), in the joint fine-tune; None: priced by the family
    reward's λ3 (`settled`, `DEPLOYED_PULL_PER_LAMBDA`)."""
    deployed_alpha: float = 0.0
    """α of that pull: 0 pulls only on the images the deployed model gets right (what an upgrade must keep), where PCT's
    α = 1 towards the previous member also copies a weaker model's mistakes."""

    def settled(self, augment: str | None, deployed_lambda: float | None = None) -> DistillConfig:
        """These settings with, where none was given, `ensemble` chosen for data of the augmentation policy `augment`
        and the deployed pull priced by `deployed_lambda`, the family reward's λ3."""
        cfg = self if self.ensemble is not None else replace(self, ensemble=ENSEMBLE.get(augment, ENSEMBLE[None]))
        if cfg.deployed_weight is None and deployed_lambda is not None:
            cfg = replace(cfg, deployed_weight=DEPLOYED_PULL_PER_LAMBDA * deployed_lambda)
        return cfg

    def __post_init__(self):
        if self.kind not in ("lm", "kl"):
            raise RegnasError(f"unknown focal distillation {self.kind!r}; use lm (logit matching) or kl")


ENSEMBLE: dict[str | None, float] = {None: 3.0, "photo": 0.0}
"""The mean pull's weight per augmentation policy of the supernet's data (None: any other). On photographs the mean of
the members is well below the largest one, and pulling towards it gives the ladder away: on the CIFAR-10 folder (resnet,
search seed 0, 7,500 test images) 3 gave members 79.95 / 80.77 / 80.81% at 0.73% mean NFR, 0 gave 79.84 / 81.28 /
81.71% at 1.05% (the independent baseline: 78.59 / 80.88 / 81.23% at 2.6%); docs/notes/natural-images.md."""


DEPLOYED_PULL_PER_LAMBDA = 0.02
"""The fine-tune's pull towards a deployed model per unit of λ3, the price the family's reward puts on a flip against
it: one exchange rate of top-1 for agreement sets both the search and the fine-tune. The pull trades top-1 for
agreement along one curve (docs/notes/upgrades.md); on resnet Fashion-MNIST (search seed 0, 5,000 val images, the
deployed family 5 points weaker) weights 0 / 0.03 / 0.1 gave the phone member 92.44 / 91.88 / 90.92% top-1 at 2.04
/ 1.38 / 1.06% NFR against its deployed model. By λ1·Top1 − λ3·NFR no pull is best up to λ3 ≈ 0.8, 0.03 from there
to about 3, and 0.1 at the default 5: about 0.02·λ3."""


def focal_term(new: torch.Tensor, old: torch.Tensor, labels: torch.Tensor, cfg: DistillConfig) -> torch.Tensor:
    """`mean[(α + β·[old right])·D(new, old)]`; D is ½‖z_new − z_old‖² (lm) or T²·KL (kl)."""
    focus = cfg.alpha + cfg.beta * (old.argmax(1) == labels).float()
    if cfg.kind == "lm":
        d = 0.5 * (new - old).pow(2).sum(1)
    else:
        t = cfg.temperature
        d = t * t * F.kl_div(F.log_softmax(new / t, 1), F.log_softmax(old / t, 1), reduction="none", log_target=True).sum(1)
    return (focus * d).mean()


def deployed_term(new: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, cfg: DistillConfig) -> torch.Tensor:
    """The pull towards a deployed model: `focal_term` towards its logits (float `teacher`), or, where only its predictions
    are known (integer `teacher`), the same focus on a cross-entropy towards its predicted classes."""
    cfg = replace(cfg, alpha=cfg.deployed_alpha)
    if teacher.is_floating_point():
        return focal_term(new.float(), teacher.float(), labels, cfg)
    focus = cfg.alpha + cfg.beta * (teacher == labels).float()
    return (focus * F.cross_entropy(new.float(), teacher, reduction="none")).mean()


def focal_distillation(new: torch.Tensor, old: torch.Tensor, labels: torch.Tensor, cfg: DistillConfig) -> torch.Tensor:
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


def finetune_schedule(n_train: int, cfg: DistillConfig) -> tuple[int, int]:
    """(steps per epoch, epochs): about 600 optimizer steps, at least MIN_EPOCHS and at most 10 epochs, unless `cfg.epochs`.

    Part of the build's fine-tune cache key, so members fine-tuned on another schedule are not reused."""
    steps = max(1, n_train // cfg.batch_size)
    return steps, cfg.epochs or min(10, max(MIN_EPOCHS, math.ceil(600 / steps)))


def fine_tune(
    model: nn.Module,
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    data: Dataset,
    cfg: DistillConfig,
    after_step: Callable[[], None] | None = None,
) -> None:
    """Minimise `loss(x, y, idx)` over train batches (`idx`: the batch's rows of the train split) in place: AdamW, cosine
    schedule, about 600 steps unless `cfg.epochs`.

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
                    value = loss(to_float(x_all[idx]).contiguous(memory_format=torch.channels_last), y_all[idx], idx)
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
                schedule.step()
                if after_step is not None:
                    after_step()
                total += value.detach()
            logger.info(f"finetune: epoch {epoch + 1}/{epochs} loss {total.item() / steps:.4f}")

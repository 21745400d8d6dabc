"""Supernet training with the sandwich rule and in-place distillation, planned to fit a time budget.

Each step trains the largest subnet on the (label-smoothed) labels and the smallest plus random
subnets on the largest's soft predictions (BigNAS / OFA), so every nested subnet learns to agree
with the largest: agreement is the point of regnas. The same loop trains one arch alone (the
standalone twin the supernet-quality benchmark compares against). Under torchrun every rank trains
the same subnets on its slice of each global batch (DDP); rank 0 writes.

A checkpoint is a safetensors file whose header holds the JSON metadata (space, config, the data
split, training config, epochs done), with a JSON sidecar for people; the optimizer state sits
beside it, stamped with the same epoch, so a killed run resumes from its last epoch and a
mismatched pair is refused. Models and batches are channels-last (CPU depthwise convolutions run
several times faster so); on a GPU, steps run under bf16 autocast with the data on the device and
no host sync per step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from regnas.augment import create_augment, default_augment
from regnas.data import Dataset, to_float
from regnas.distributed import World, state_digest
from regnas.errors import RegnasError
from regnas.io import load_tensors, save_tensors, write_json
from regnas.spaces import Arch, SearchSpace, create_space, space_for

logger = logging.getLogger(__name__)

CHECKPOINT = "supernet.safetensors"
OPTIMIZER = "supernet.optim.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    """How to train a supernet; part of the checkpoint, so changing it retrains."""

    epochs: int
    batch_size: int = 128
    lr: float = 3e-3
    """Peak learning rate of a network trained alone (a standalone twin)."""
    supernet_lr_scale: float = 1.0
    """The supernet's peak learning rate over `lr`. Each sandwich step sums several subnets' gradients into the
    shared weights and Adam normalizes the sum, so a subnet can move less per step than the same net trained
    alone; a space whose subnets underfit their twins raises it in its recipe."""
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    """`adamw`, or `sgd` (Nesterov momentum 0.9)."""
    random_subnets: int = 1
    label_smoothing: float = 0.1
    warm_fraction: float = 0.4
    """Share of the epochs that train the largest subnet alone before the sandwich starts (a warm start)."""
    student_labels: float = 0.0
    """Weight of the labels in each distilled subnet's loss (the rest is distillation from the largest)."""
    max_epochs: int = 10
    """The most epochs a time budget buys: 10 keeps the whole digits build within 3 minutes; a space whose
    subnets keep gaining raises it in its recipe."""
    sort_channels: bool = False
    subnet_flops: tuple[float, ...] = ()
    """FLOPs, as fractions of the largest subnet's, that the random subnets of the sandwich aim at (a build's target
    budgets: each step shrinks the largest to one of them, so the subnets the search will choose among are the ones
    trained); empty: random subnets drawn uniformly."""
    augment: str = "glyph"
    """The augmentation policy (`regnas.augment`); `recipe` picks the one that fits the data."""
    precision: str | None = None
    """`bf16` (autocast) or `fp32` steps; None until `settle_precision` decides (a bare None trains fp32 on a CPU)."""
    seed: int = 0
    time_budget_min: float | None = None
    """The budget the epochs were planned for (None: given explicitly)."""


OPTIMIZERS = ("adamw", "sgd")
POLICY_RECIPES: dict[str, dict[str, Any]] = {"photo": {"max_epochs": 40}}
"""Training settings per augmentation policy, where the kind of data needs other than the defaults: photographs
keep gaining well past 10 epochs (the natural-images benchmark), so a budget may buy more of them."""


def recipe(space: SearchSpace, **settings: Any) -> TrainConfig:
    """The training settings for `space`, each layer over the one before: the defaults, its augmentation policy's
    recipe (the policy that fits its inputs unless one is given), the space's own recipe, the space's recipe for that
    policy, and `settings` (None meaning the default)."""
    given = {k: v for k, v in settings.items() if v is not None}
    augment = given.get("augment") or default_augment(space.input_shape)
    layers = (POLICY_RECIPES.get(augment, {}), space.recipe, space.policy_recipes.get(augment, {}), {"augment": augment}, given)
    return TrainConfig(**{k: v for layer in layers for k, v in layer.items()})


def warm_epochs(cfg: TrainConfig, epochs: int | None = None) -> int:
    """Epochs of the largest subnet alone at the start of a run of `epochs` (cfg's by default).

    At least one where there is a warm start at all (a positive `warm_fraction`, or --sort-channels):
    mbv3 at 3 epochs without one lost 1.0-1.3 points on its largest, median and smallest subnet
    (docs/notes/training-recipes.md), so a short run keeps one rather than rounding it away.
    """
    n = cfg.epochs if epochs is None else epochs
    floor = 1 if cfg.sort_channels or cfg.warm_fraction > 0 else 0
    return min(n - 1, max(round(cfg.warm_fraction * n), floor)) if n > 1 else 0


def default_batch_size(n_train: int) -> int:
    """Small datasets need more optimizer steps per epoch than big ones."""
    return 32 if n_train < 4096 else 128


@dataclass
class Supernet:
    """A trained (or training) supernet with its space and metadata."""

    space: SearchSpace
    model: nn.Module
    meta: dict[str, Any]


def _meta(space: SearchSpace, data: Dataset, cfg: TrainConfig, epochs_done: int, history: list[dict], world_size: int) -> dict[str, Any]:
    return {
        "format": "regnas-supernet/1",
        "space": space.name,
        "config": space.config,
        "data": {"name": data.name, "digest": data.digest, "num_classes": data.num_classes, "class_names": data.class_names},
        "split": data.split_record(),
        "train": asdict(cfg),
        "epochs_done": epochs_done,
        "world_size": world_size,
        "history": history,
    }


def save_checkpoint(path: Path, net: Supernet) -> None:
    """Write the supernet's weights with its metadata in the header, and the JSON sidecar."""
    save_tensors(path, net.model.state_dict(), {"regnas": json.dumps(net.meta)})
    write_json(path.with_suffix(".json"), net.meta)


def _header(path: Path, what: str) -> dict[str, Any]:
    """The JSON metadata regnas stores in a safetensors header."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        header = (f.metadata() or {}).get("regnas")
    if header is None:
        raise RegnasError(f"{path} has no regnas metadata; it is not a {what} written by regnas train (retrain with regnas train)")
    try:
        meta = json.loads(header)
    except json.JSONDecodeError as exc:
        raise RegnasError(f"{path} has corrupt regnas metadata ({exc}); retrain with regnas train") from exc
    if not isinstance(meta, dict):
        raise RegnasError(f"{path} has corrupt regnas metadata (not a JSON object); retrain with regnas train")
    return meta


def checkpoint_header(path: str | Path) -> dict[str, Any]:
    """A supernet checkpoint's metadata, checked for the keys regnas needs, without loading its weights."""
    path = Path(path)
    if not path.is_file():
        raise RegnasError(f"supernet checkpoint not found: {path}; check the path")
    try:
        meta = _header(path, "supernet")
    except RegnasError:
        raise
    except Exception as exc:  # safetensors raises several types for corrupt headers
        raise RegnasError(f"supernet checkpoint {path} is not a readable safetensors file ({exc}); re-create it") from exc
    try:
        meta["space"], meta["data"]["num_classes"], list(meta["config"]["input_shape"])
    except (KeyError, TypeError) as exc:
        raise RegnasError(f"{path} has incomplete regnas metadata (missing {exc}); retrain with regnas train") from exc
    return meta


def load_checkpoint(path: str | Path, space_name: str | None = None, data: Dataset | None = None) -> Supernet:
    """Load a supernet checkpoint and check it fits the requested space and data."""
    path = Path(path)
    meta = checkpoint_header(path)
    tensors = load_tensors(path, "supernet checkpoint")
    name, config, classes, shape = meta["space"], meta["config"], meta["data"]["num_classes"], list(meta["config"]["input_shape"])
    if space_name and name != space_name:
        raise RegnasError(f"{path} is a {name!r} supernet but --space {space_name} was asked; pass --space {name} or retrain")
    if data is not None:
        if classes != data.num_classes:
            raise RegnasError(f"{path} was trained for {classes} classes but {data.name} has {data.num_classes}; retrain on this data")
        if shape != list(data.input_shape):
            raise RegnasError(f"{path} expects inputs {tuple(shape)} but {data.name} has {data.input_shape}; retrain on this data")
    space = create_space(name, config)
    model = space.build_supernet()
    expected = model.state_dict()
    bad = sorted(set(expected) ^ set(tensors)) or [k for k in expected if expected[k].shape != tensors[k].shape]
    if bad:
        raise RegnasError(f"{path} does not match the {name} supernet (first mismatching tensor: {bad[0]}); retrain it")
    model.load_state_dict(tensors)
    return Supernet(space, model, meta)


def _distill(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.kl_div(F.log_softmax(student.float(), 1), F.softmax(teacher, 1), reduction="batchmean")


def _permute_channels(net: Supernet, optimizer: torch.optim.Optimizer) -> None:
    """Apply the space's importance ordering to weights and optimizer moments alike."""
    params = dict(net.model.named_parameters())
    state = net.model.state_dict()
    for name, dim, perm in net.space.channel_order(net.model):
        t = state[name]
        t.copy_(t.index_select(dim, perm.to(t.device)))
        if name in params:
            for v in optimizer.state.get(params[name], {}).values():
                if torch.is_tensor(v) and v.shape == t.shape:
                    v.copy_(v.index_select(dim, perm.to(v.device)))


Subnets = Callable[[int, random.Random], list[Arch]]
"""Per step (epoch, rng) → the archs to train: the first on the labels, the rest distilled from it."""


def sandwich(cfg: TrainConfig, space: SearchSpace) -> Subnets:
    """Largest on labels; smallest and `random_subnets` random archs distilled (the largest alone while warming up).

    With `subnet_flops`, each random arch is the largest shrunk at random to within one of those budgets."""
    largest, smallest = space.largest(), space.smallest()
    warm = warm_epochs(cfg)
    top = space.flops(largest)

    def draw(rng: random.Random) -> Arch:
        if not cfg.subnet_flops:
            return space.sample(rng)
        return space.shrink_within(largest, space.flops, rng.choice(cfg.subnet_flops) * top, rng)

    def pick(epoch: int, rng: random.Random) -> list[Arch]:
        if epoch < warm:
            return [largest]
        return [largest, smallest, *(draw(rng) for _ in range(cfg.random_subnets))]

    return pick


PRECISIONS = ("bf16", "fp32")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively: a GPU, or a CPU with AVX512-BF16 or AMX (elsewhere bf16 is emulated, slower than fp32)."""
    if device.type != "cpu":
        return True
    cpu = torch.cpu
    return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def check_precision(precision: str | None) -> None:
    if precision is not None and precision not in PRECISIONS:
        raise RegnasError(f"unknown --precision {precision!r}; use {' or '.join(PRECISIONS)}")


def autocast(device: torch.device, precision: str | None = None):
    """The context a training step's forward passes run in: bf16 autocast (`precision`, by default bf16 on a GPU and
    fp32 on a CPU), else nothing. Weights, optimizer state and losses stay fp32."""
    if (precision or ("bf16" if device.type == "cuda" else "fp32")) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def one_cycle(optimizer: torch.optim.Optimizer, peak: float, total_steps: int, last_epoch: int = -1) -> torch.optim.lr_scheduler.OneCycleLR:
    """PyTorch's one-cycle schedule warming up over the first 10% of `total_steps`. At exactly 10 steps that warm-up
    phase would end on step 0, which PyTorch divides by (ZeroDivisionError): such a run warms up over 2 steps."""
    pct = 0.2 if total_steps == 10 else 0.1
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, peak, total_steps=total_steps, pct_start=pct, last_epoch=last_epoch)


class _Loop:
    """One training run's moving parts: model (maybe DDP-wrapped), optimizer, schedule, data on the device."""

    def __init__(self, space: SearchSpace, model: nn.Module, data: Dataset, cfg: TrainConfig, world: World, lr: float | None = None):
        """`lr`: the peak learning rate (default `cfg.lr`, a standalone net's)."""
        self.space, self.cfg, self.world = space, cfg, world
        lr = cfg.lr if lr is None else lr
        self.model = model.to(world.device, memory_format=torch.channels_last)
        if cfg.optimizer not in OPTIMIZERS:
            raise RegnasError(f"unknown optimizer {cfg.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        self.n = len(data["train"])
        self.steps = max(1, self.n // cfg.batch_size)
        self.schedule = one_cycle(self.optimizer, lr, self.steps * cfg.epochs)
        self.augment = create_augment(cfg.augment)
        self.x = data["train"].x.to(world.device)
        self.y = data["train"].y.to(world.device)
        self.ddp = self.model
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [world.device.index] if world.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)

    def reschedule(self, cfg: TrainConfig, epochs_done: int) -> None:
        """Go on as a run of `cfg.epochs` epochs: the one-cycle schedule recomputed for the new length, at the step reached."""
        self.cfg = cfg
        peak, done = self.optimizer.param_groups[0]["max_lr"], self.steps * epochs_done
        self.schedule = one_cycle(self.optimizer, peak, self.steps * cfg.epochs, done - 1)

    def batch(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.to(self.world.device)
        x = self.world.shard(self.augment(to_float(self.x[idx]), gen)).contiguous(memory_format=torch.channels_last)
        return x, self.world.shard(self.y[idx])

    def step(self, x: torch.Tensor, y: torch.Tensor, archs: list[Arch]) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over `archs`; returns the first arch's loss and correct count, on the device."""
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.world.device, self.cfg.precision):
            logits = self.ddp(x, archs[0])
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
        loss.backward()
        teacher = logits.detach().float()
        for arch in archs[1:]:
            with autocast(self.world.device, self.cfg.precision):
                student = self.ddp(x, arch)
            loss_s = _distill(student, teacher)
            if self.cfg.student_labels:
                own = F.cross_entropy(student.float(), y, label_smoothing=self.cfg.label_smoothing)
                loss_s = (1 - self.cfg.student_labels) * loss_s + self.cfg.student_labels * own
            loss_s.backward()
        self.optimizer.step()
        self.schedule.step()
        return loss.detach(), (logits.argmax(1) == y).sum()

    def epoch(self, epoch: int, subnets: Subnets, sampled: hashlib._Hash | None = None) -> dict[str, float]:
        """Train one epoch; the record is synced to the host once, at the end."""
        cfg, world = self.cfg, self.world
        self.ddp.train()
        torch.manual_seed(cfg.seed * 1009 + epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        rng = random.Random(cfg.seed * 104729 + epoch)
        order = torch.from_numpy(np.random.default_rng((cfg.seed, epoch)).permutation(self.n))
        t0 = time.time()
        loss_sum = torch.zeros((), device=world.device)
        correct = torch.zeros((), device=world.device, dtype=torch.long)
        every = max(1, self.steps // 5)
        bar = tqdm(range(self.steps), desc=f"train {epoch + 1}/{cfg.epochs}", file=sys.stderr, disable=not world.main or None, leave=False)
        for step in bar:
            archs = subnets(epoch, rng)
            if sampled is not None:
                sampled.update(repr(archs[1:]).encode())
            x, y = self.batch(order[step * cfg.batch_size : (step + 1) * cfg.batch_size], gen)
            loss, hits = self.step(x, y, archs)
            loss_sum += loss
            correct += hits
            if (step + 1) % every == 0 and step + 1 < self.steps:
                mean = loss_sum.item() / (step + 1)
                bar.set_postfix(loss=f"{mean:.3f}")
                if bar.disable and world.main:
                    logger.info(f"train: epoch {epoch + 1}/{cfg.epochs} step {step + 1}/{self.steps} loss {mean:.3f}")
        loss_total, correct_total = world.sum([loss_sum.item(), float(correct.item())])
        return {
            "epoch": epoch + 1,
            "loss": loss_total / (self.steps * world.size),
            "train_top1": correct_total / (self.steps * cfg.batch_size),
            "seconds": time.time() - t0,
        }

    def state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "schedule": self.schedule}


def train_supernet(
    data: Dataset, out_dir: str | Path, cfg: TrainConfig, space_name: str | None = None, world: World = World(), pace: Pace | None = None
) -> Supernet:
    """Train (or resume training) a supernet on `data`; rank 0 writes checkpoints to `out_dir` each epoch.

    With the `pace` its epochs were planned at, a run that turns out slower than planned trains fewer epochs (decided
    after each epoch from the second on, the schedule recomputed) rather than overrun its time budget."""
    out_dir = Path(out_dir)
    if cfg.batch_size < world.size:
        raise RegnasError(f"batch size {cfg.batch_size} is smaller than the {world.size} training processes; raise --batch-size")
    world.assert_same("the training data", data.digest)
    space = space_for(data.input_shape, data.num_classes, space_name)
    torch.manual_seed(cfg.seed)
    net = Supernet(space, space.build_supernet(), {})
    loop = _Loop(space, net.model, data, cfg, world, cfg.lr * cfg.supernet_lr_scale)
    start, history = _resume(out_dir, net, loop, data, cfg, space.name, world)
    subnets = sandwich(cfg, space)
    t0, expected, epoch = time.time(), 0.0, start
    while epoch < cfg.epochs:
        sampled = hashlib.sha256()
        rec = loop.epoch(epoch, subnets, sampled)
        if cfg.sort_channels and epoch == warm_epochs(cfg) - 1:
            _permute_channels(net, loop.optimizer)
        world.average_buffers(net.model)
        world.assert_same(f"the subnets sampled in epoch {epoch + 1}", sampled.hexdigest())
        world.assert_same(f"the weights after epoch {epoch + 1}", state_digest(net.model))
        history.append(rec)
        if pace is not None:
            expected += pace.warm_s if epoch < warm_epochs(cfg) else pace.sandwich_s
            if epoch + 1 - start >= 2 and epoch + 1 < cfg.epochs:
                (elapsed,) = world.sum([time.time() - t0 if world.main else 0.0])
                epochs = pace.refit(cfg, epoch + 1, elapsed, expected)
                if epochs < cfg.epochs:
                    logger.warning(
                        f"train: {elapsed / expected:.2f}x slower than the plan timed; {epochs} epochs instead of {cfg.epochs} "
                        f"to stay within its {pace.budget_s / 60:.0f} min"
                    )
                    cfg = replace(cfg, epochs=epochs)
                    loop.reschedule(cfg, epoch + 1)
                    subnets = sandwich(cfg, space)
        net.meta = _meta(space, data, cfg, epoch + 1, history, world.size)
        if world.main:
            save_checkpoint(out_dir / CHECKPOINT, net)
            _save_optimizer(out_dir / OPTIMIZER, loop, epoch + 1)
        logger.info(
            f"train: epoch {epoch + 1}/{cfg.epochs} loss {rec['loss']:.3f} train top-1 {rec['train_top1']:.3f} ({rec['seconds']:.0f}s)"
        )
        epoch += 1
    if not net.meta:
        net.meta = _meta(space, data, cfg, cfg.epochs, history, world.size)
    net.model.to("cpu", memory_format=torch.contiguous_format).eval()
    return net


def _resume(
    out_dir: Path, net: Supernet, loop: _Loop, data: Dataset, cfg: TrainConfig, space_name: str, world: World
) -> tuple[int, list[dict]]:
    """Load the checkpoint in `out_dir` when it was trained on this data with these settings: (epochs done, history)."""
    ckpt, opt_path = out_dir / CHECKPOINT, out_dir / OPTIMIZER
    if not (ckpt.is_file() and opt_path.is_file()):
        return 0, []
    try:
        old = load_checkpoint(ckpt, space_name, data)
    except RegnasError as exc:
        logger.info(f"train: ignoring unusable checkpoint in {out_dir} ({exc})")
        return 0, []
    same = old.meta.get("data", {}).get("digest") == data.digest and _stored_config(old.meta) == cfg
    if not (same and old.meta["config"] == net.space.config):
        logger.info(f"train: {ckpt} was trained on other data or settings; training from scratch")
        return 0, []
    start = old.meta["epochs_done"]
    trained_by = old.meta.get("world_size", 1)
    if start < cfg.epochs and trained_by != world.size:
        raise RegnasError(
            f"{ckpt} was trained by {trained_by} process(es) but this run has {world.size}; resume it with "
            f"torchrun --nproc_per_node {trained_by} (or without torchrun when 1), or train afresh in another --out"
        )
    net.model.load_state_dict(old.model.state_dict())
    _load_optimizer(opt_path, loop, start)
    if start < cfg.epochs:
        logger.info(f"train: resuming at epoch {start + 1}/{cfg.epochs} from {ckpt}")
    return start, old.meta["history"]


def train_standalone(data: Dataset, space: SearchSpace, arch: Arch, cfg: TrainConfig, world: World = World()) -> nn.Module:
    """`arch` trained alone with the supernet's recipe (same loop, epochs, schedule, no sandwich), as a plain network."""
    torch.manual_seed(cfg.seed)
    model = space.build_supernet()
    loop = _Loop(space, model, data, cfg, world)
    for epoch in range(cfg.epochs):
        rec = loop.epoch(epoch, lambda _epoch, _rng: [arch])
        logger.info(f"train: standalone epoch {epoch + 1}/{cfg.epochs} loss {rec['loss']:.3f} ({rec['seconds']:.0f}s)")
    model.to("cpu", memory_format=torch.contiguous_format)
    return space.extract(model, arch)


def _step_timer(data: Dataset, space: SearchSpace, cfg: TrainConfig, world: World) -> tuple[Callable[[int], float], int]:
    """Seconds per training step of `cfg` here, timed on real batches after two untimed ones (epoch 0 is a warm-start
    step, the largest subnet alone; epoch 1 a sandwich step), and the steps in an epoch."""
    probe = _Loop(space, space.build_supernet(), data, replace(cfg, epochs=cfg.max_epochs), world)
    rng, gen = random.Random(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    subnets = sandwich(replace(cfg, epochs=2, warm_fraction=0.5), space)

    def seconds_per_step(epoch: int, warmup: int = 2, repeats: int = 6) -> float:
        idx = torch.arange(min(cfg.batch_size, probe.n))
        for _ in range(warmup):
            probe.step(*probe.batch(idx, gen), subnets(epoch, rng))
        synchronize(world.device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            probe.step(*probe.batch(idx, gen), subnets(epoch, rng))
        synchronize(world.device)
        return (time.perf_counter() - t0) / repeats

    return seconds_per_step, probe.steps


BF16_MIN_SPEEDUP = 1.15
"""On a CPU, bf16 steps are chosen only when they are at least this much faster than fp32 steps here: on small
inputs (8-px digits) autocast's casts cost more than the bf16 kernels save."""


BF16_TRIAL_MIN_S = 300.0
"""A run whose fp32 training would take less than this here trains in fp32 without timing bf16 steps: setting up bf16
kernels for the trial costs seconds to a minute, more than a run this short could win back (on 8-px digits
bf16 is slower anyway)."""


def settle_precision(
    out_dir: str | Path, data: Dataset, space: SearchSpace, cfg: TrainConfig, world: World = World(), epochs: int | None = None
) -> TrainConfig:
    """`cfg` with its training precision decided: the one given; else the one of a checkpoint in `out_dir` made with the
    same data and settings (so a resumed run goes on as it began); else bf16 on a GPU, fp32 on a CPU without native
    bf16, and on one with it whichever of the two timed sandwich steps here is faster (bf16 by `BF16_MIN_SPEEDUP`),
    unless the run is too short to time both (`BF16_TRIAL_MIN_S`; `epochs`: the run's, when fixed, else at most
    `cfg.max_epochs`)."""
    if cfg.precision is not None:
        return cfg
    old = _kept_config(out_dir, data)
    if old is not None and replace(old, epochs=cfg.epochs, time_budget_min=cfg.time_budget_min) == replace(cfg, precision=old.precision):
        return replace(cfg, precision=old.precision)
    if world.device.type != "cpu" or not native_bf16(world.device):
        return replace(cfg, precision="fp32" if world.device.type == "cpu" else "bf16")

    def timed(precision: str) -> tuple[float, int]:  # every rank steps; rank 0's timing decides for all
        timer, steps = _step_timer(data, space, replace(cfg, precision=precision), world)
        seconds = timer(1, warmup=1, repeats=3)
        return world.sum([seconds if world.main else 0.0])[0], steps

    fp32, steps = timed("fp32")
    if fp32 * steps * (epochs or cfg.max_epochs) < BF16_TRIAL_MIN_S:
        logger.debug(f"train: fp32 steps (training takes under {BF16_TRIAL_MIN_S:g} s at {1000 * fp32:.0f} ms a step; bf16 not tried)")
        return replace(cfg, precision="fp32")
    bf16, _ = timed("bf16")
    precision = "bf16" if fp32 >= BF16_MIN_SPEEDUP * bf16 else "fp32"
    logger.debug(f"train: {precision} steps (a sandwich step takes {1000 * fp32:.0f} ms in fp32, {1000 * bf16:.0f} ms in bf16 here)")
    return replace(cfg, precision=precision)


REPLAN_SLACK = 0.05
"""How far past its training budget a run may look set to finish before it trains fewer epochs than planned: the
probe's own timings move by a few percent between runs, and an epoch less costs accuracy."""


@dataclass(frozen=True)
class Pace:
    """A training plan's expectations here: seconds per warm-start and per sandwich epoch (timed before training), the
    seconds training may take, and the epochs that fit them. Training checks itself against it after each epoch
    (`refit`): steps timed in the first seconds of a run can be faster than the same steps an hour into it (on a 2-core
    cloud host a CIFAR-10 sandwich epoch took 93 s as timed and 115-130 s after minutes of load), and a plan that
    trusted them overran its budget."""

    epochs: int
    warm_s: float
    sandwich_s: float
    budget_s: float
    min_epochs: int = 0

    def cost(self, cfg: TrainConfig, epochs: int, start: int = 0, slow: float = 1.0) -> float:
        """Seconds for epochs `start`..`epochs` of a run of `epochs`, `slow` times the timed pace."""
        warm = warm_epochs(cfg, epochs)
        return slow * sum(self.warm_s if e < warm else self.sandwich_s for e in range(start, epochs))

    def refit(self, cfg: TrainConfig, done: int, elapsed: float, expected: float) -> int:
        """The epochs to go on with, when the epochs run so far took `elapsed` seconds where the plan expected `expected`:
        `cfg.epochs` while they still fit the budget within `REPLAN_SLACK`, else the most that fit it (at least one more
        than `done`, and `min_epochs`)."""
        slow = elapsed / expected if expected > 0 else 1.0

        def fits(epochs: int, slack: float = 0.0) -> bool:
            return elapsed + self.cost(cfg, epochs, done, slow) <= self.budget_s * (1 + slack)

        if slow <= 1.0 or fits(cfg.epochs, REPLAN_SLACK):
            return cfg.epochs
        floor = max(done + 1, self.min_epochs)
        return next((e for e in range(cfg.epochs - 1, floor - 1, -1) if fits(e)), floor)


def plan_epochs(data: Dataset, space: SearchSpace, cfg: TrainConfig, budget_s: float, world: World = World(), min_epochs: int = 0) -> Pace:
    """How many epochs of `cfg` fit in `budget_s` seconds here, from timing real training steps (at most `cfg.max_epochs`),
    with the timings they were planned from.

    A budget too small for one epoch is bad input: the message names the minimum. With `min_epochs`
    (a default budget, not the user's), fewer never happen: the build then overruns the default, and says so.
    """
    seconds_per_step, steps = _step_timer(data, space, cfg, world)
    sandwich_epoch = seconds_per_step(1) * steps
    warm_epoch = seconds_per_step(0) * steps
    (sandwich_epoch, warm_epoch) = world.sum([sandwich_epoch if world.main else 0.0, warm_epoch if world.main else 0.0])
    pace = Pace(0, warm_epoch, sandwich_epoch, budget_s, min_epochs)
    cost = partial(pace.cost, cfg)
    if min_epochs and cost(min_epochs) > budget_s:
        over = (cost(min_epochs) - budget_s) / 60
        logger.warning(
            f"train: the default time budget leaves less than {min_epochs} epochs here; training {min_epochs} "
            f"(the build will take about {over:.0f} min longer; --time-budget or --epochs sets it)"
        )
        return replace(pace, epochs=min_epochs)
    if budget_s < cost(1):
        need = math.ceil(cost(1) / 60)
        raise RegnasError(
            f"a time budget of {budget_s / 60:.2g} min is too small for one training epoch here (about {need} min); "
            f"raise --time-budget to at least {need}, or pass --epochs"
        )
    epochs = 1
    while epochs < cfg.max_epochs and cost(epochs + 1) <= budget_s:
        epochs += 1
    logger.info(f"train: {epochs} epochs fit {budget_s / 60:.1f} min (about {sandwich_epoch:.0f} s per sandwich epoch here)")
    return replace(pace, epochs=epochs)


def planned(
    out_dir: str | Path,
    data: Dataset,
    space: SearchSpace,
    cfg: TrainConfig,
    budget_s: float,
    world: World = World(),
    min_epochs: int = 0,
) -> tuple[TrainConfig, Pace | None]:
    """`cfg` with the epochs that fit `budget_s` of training (its `time_budget_min` names the user's whole budget), and the
    pace they were planned at, for training to check itself against.

    The plan of a checkpoint in `out_dir` made for the same budget, data and settings is reused (without a pace), so a
    resumed or re-run build trains on instead of re-planning from slightly different timings.
    """
    old = _kept_config(out_dir, data)
    if old is not None and replace(old, epochs=cfg.epochs) == cfg:
        logger.info(f"train: keeping the plan of {Path(out_dir) / CHECKPOINT} for this budget ({old.epochs} epochs)")
        return old, None
    pace = plan_epochs(data, space, cfg, budget_s, world, min_epochs)
    return replace(cfg, epochs=pace.epochs), pace


def _kept_config(out_dir: str | Path, data: Dataset) -> TrainConfig | None:
    """The training settings of the checkpoint in `out_dir` when it was made on `data`, else None."""
    ckpt = Path(out_dir) / CHECKPOINT
    if not ckpt.is_file():
        return None
    try:
        meta = _header(ckpt, "supernet")
    except RegnasError:
        return None
    return _stored_config(meta) if meta.get("data", {}).get("digest") == data.digest else None


def _stored_config(meta: dict[str, Any]) -> TrainConfig | None:
    """The training settings a checkpoint's metadata records (fields added since take their defaults); None if unreadable."""
    try:
        return TrainConfig(**{**meta["train"], "subnet_flops": tuple(meta["train"].get("subnet_flops", ()))})
    except (KeyError, TypeError):
        return None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _save_optimizer(path: Path, loop: _Loop, epochs_done: int) -> None:
    sd = loop.optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    meta = {"param_groups": sd["param_groups"], "scalars": scalars, "schedule": loop.schedule.state_dict(), "epochs_done": epochs_done}
    save_tensors(path, tensors, {"regnas": json.dumps(meta)})


def _load_optimizer(path: Path, loop: _Loop, epochs_done: int) -> None:
    """Restore the optimizer and schedule, refusing a state saved at another epoch than the weights."""
    tensors = load_tensors(path, "optimizer state")
    meta = _header(path, "optimizer state")
    if meta.get("epochs_done") != epochs_done:
        raise RegnasError(
            f"{path} is from epoch {meta.get('epochs_done')} but the supernet beside it from epoch {epochs_done} "
            f"(a run stopped between the two writes); delete {path.parent} or train into another --out"
        )
    state: dict[int, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v.to(loop.world.device) if torch.is_tensor(v) else v
    loop.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    loop.schedule.load_state_dict(meta["schedule"])

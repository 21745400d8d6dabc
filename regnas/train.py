"""Supernet training with the sandwich rule and in-place distillation.

Each step trains the largest subnet on the labels and the smallest plus two random subnets on the
largest's soft predictions (BigNAS / OFA), so every nested subnet learns to agree with the
largest: agreement is the point of regnas. Under torchrun every rank trains the same subnets on its
slice of each global batch (DDP); rank 0 writes. A checkpoint is a safetensors file whose header holds
the JSON metadata (space, config, data digest, training config, epochs done), with a JSON sidecar
for people; the optimizer state sits beside it, so a killed run resumes from its last epoch.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from regnas.data import Dataset
from regnas.distributed import World, state_digest
from regnas.errors import RegnasError
from regnas.io import load_tensors, save_tensors, write_json
from regnas.spaces import SearchSpace, create_space, space_class

CHECKPOINT = "supernet.safetensors"
OPTIMIZER = "supernet.optim.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    """How to train a supernet; part of the checkpoint, so changing it retrains."""

    epochs: int
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    random_subnets: int = 2
    sort_channels: bool = False
    seed: int = 0


def default_epochs(n_train: int) -> int:
    """Epochs that give a usable supernet within the build's time budget on two CPU cores."""
    return int(min(20, max(3, 9000 // max(n_train, 1))))


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
        "train": asdict(cfg),
        "epochs_done": epochs_done,
        "world_size": world_size,
        "history": history,
    }


def save_checkpoint(path: Path, net: Supernet) -> None:
    """Write the supernet's weights with its metadata in the header, and the JSON sidecar."""
    save_tensors(path, net.model.state_dict(), {"regnas": json.dumps(net.meta)})
    write_json(path.with_suffix(".json"), net.meta)


def load_checkpoint(path: str | Path, space_name: str | None = None, data: Dataset | None = None) -> Supernet:
    """Load a supernet checkpoint and check it fits the requested space and data."""
    from safetensors import safe_open

    path = Path(path)
    tensors = load_tensors(path, "supernet checkpoint")
    with safe_open(str(path), "pt") as f:
        header = (f.metadata() or {}).get("regnas")
    if header is None:
        raise RegnasError(f"{path} has no regnas metadata; it was not written by regnas train (retrain with regnas train)")
    meta = json.loads(header)
    if space_name and meta["space"] != space_name:
        raise RegnasError(
            f"{path} is a {meta['space']!r} supernet but --space {space_name} was asked; pass --space {meta['space']} or retrain"
        )
    if data is not None:
        if meta["data"]["num_classes"] != data.num_classes:
            raise RegnasError(
                f"{path} was trained for {meta['data']['num_classes']} classes but {data.name} has {data.num_classes}; retrain on this data"
            )
        if list(meta["config"]["input_shape"]) != list(data.input_shape):
            raise RegnasError(
                f"{path} expects inputs {tuple(meta['config']['input_shape'])} but {data.name} has {data.input_shape}; retrain on this data"
            )
    space = create_space(meta["space"], meta["config"])
    model = space.build_supernet()
    expected = model.state_dict()
    bad = sorted(set(expected) ^ set(tensors)) or [k for k in expected if expected[k].shape != tensors[k].shape]
    if bad:
        raise RegnasError(f"{path} does not match the {meta['space']} supernet (first mismatching tensor: {bad[0]}); retrain it")
    model.load_state_dict(tensors)
    return Supernet(space, model, meta)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to 1/14 of the image, zero-filled (none below 14 px: it hurts there)."""
    n, _, h, w = x.shape
    pad = min(h, w) // 14
    if pad == 0:
        return x
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, :]
    return xp[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2).contiguous()


def _distill(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.kl_div(F.log_softmax(student, 1), F.softmax(teacher, 1), reduction="batchmean")


def _permute_channels(net: Supernet, optimizer: torch.optim.Optimizer) -> None:
    """Apply the space's importance ordering to weights and optimizer moments alike."""
    params = dict(net.model.named_parameters())
    state = net.model.state_dict()
    for name, dim, perm in net.space.channel_order(net.model):
        t = state[name]
        t.copy_(t.index_select(dim, perm))
        if name in params:
            for v in optimizer.state.get(params[name], {}).values():
                if torch.is_tensor(v) and v.shape == t.shape:
                    v.copy_(v.index_select(dim, perm))


def train_supernet(
    data: Dataset,
    out_dir: str | Path,
    cfg: TrainConfig,
    space_name: str = "mbv3",
    log=print,
    world: World = World(),
) -> Supernet:
    """Train (or resume training) a supernet on `data`; rank 0 writes checkpoints to `out_dir` each epoch."""
    out_dir = Path(out_dir)
    if not world.main:
        log = _silent
    if cfg.batch_size < world.size:
        raise RegnasError(f"batch size {cfg.batch_size} is smaller than the {world.size} training processes; raise --batch-size")
    world.assert_same("the training data", data.digest)
    ckpt, opt_path = out_dir / CHECKPOINT, out_dir / OPTIMIZER
    space = create_space(space_name, space_class(space_name).default_config(data.input_shape, data.num_classes))
    torch.manual_seed(cfg.seed)
    net = Supernet(space, space.build_supernet().to(world.device), {})
    optimizer = torch.optim.AdamW(net.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(data["train"])
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=total, pct_start=0.1)
    start, history = 0, []

    if ckpt.is_file() and opt_path.is_file():
        try:
            old = load_checkpoint(ckpt, space_name, data)
        except RegnasError as exc:
            log(f"train: ignoring unusable checkpoint in {out_dir} ({exc})")
            old = None
        same = old is not None and old.meta["data"]["digest"] == data.digest and old.meta["train"] == asdict(cfg)
        if same and old.meta["config"] == space.config:
            net.model.load_state_dict(old.model.state_dict())
            start, history = old.meta["epochs_done"], old.meta["history"]
            trained_by = old.meta.get("world_size", 1)
            if start < cfg.epochs and trained_by != world.size:
                raise RegnasError(
                    f"{ckpt} was trained by {trained_by} process(es) but this run has {world.size}; resume it with "
                    f"torchrun --nproc_per_node {trained_by} (or without torchrun when 1), or train afresh in another --out"
                )
            _load_optimizer(opt_path, optimizer, schedule)
            if start < cfg.epochs:
                log(f"train: resuming at epoch {start + 1}/{cfg.epochs} from {ckpt}")
        elif old is not None:
            log(f"train: {ckpt} was trained on other data or settings; training from scratch")

    model = net.model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ids = [world.device.index] if world.device.type == "cuda" else None
        model = DistributedDataParallel(net.model, device_ids=ids, find_unused_parameters=True)
    x_all, y_all = data["train"].x, data["train"].y
    largest, smallest = space.largest(), space.smallest()
    for epoch in range(start, cfg.epochs):
        model.train()
        torch.manual_seed(cfg.seed * 1009 + epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        rng = random.Random(cfg.seed * 104729 + epoch)
        order = torch.from_numpy(np.random.default_rng((cfg.seed, epoch)).permutation(n))
        only_largest = cfg.sort_channels and epoch == 0
        t0, loss_sum, correct = time.time(), 0.0, 0
        sampled = hashlib.sha256()
        quiet = None if world.main else True
        bar = tqdm(range(steps_per_epoch), desc=f"train {epoch + 1}/{cfg.epochs}", file=sys.stderr, disable=quiet, leave=False)
        for step in bar:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x, y = world.shard(_augment(x_all[idx], gen)), world.shard(y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            logits = model(x, largest)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            if not only_largest:
                teacher = logits.detach()
                for arch in [smallest] + [space.sample(rng) for _ in range(cfg.random_subnets)]:
                    sampled.update(repr(arch).encode())
                    _distill(model(x, arch), teacher).backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item()
            correct += (logits.argmax(1) == y).sum().item()
            bar.set_postfix(loss=f"{loss_sum / (step + 1):.3f}")
            if bar.disable and (step + 1) % max(1, steps_per_epoch // 5) == 0 and step + 1 < steps_per_epoch:
                log(f"train: epoch {epoch + 1}/{cfg.epochs} step {step + 1}/{steps_per_epoch} loss {loss_sum / (step + 1):.3f}")
        if only_largest:
            _permute_channels(net, optimizer)
        world.average_buffers(net.model)
        world.assert_same(f"the subnets sampled in epoch {epoch + 1}", sampled.hexdigest())
        world.assert_same(f"the weights after epoch {epoch + 1}", state_digest(net.model))
        loss_sum, correct = world.sum([loss_sum, correct])
        rec = {
            "epoch": epoch + 1,
            "loss": loss_sum / (steps_per_epoch * world.size),
            "train_top1": correct / (steps_per_epoch * cfg.batch_size),
            "seconds": time.time() - t0,
        }
        history.append(rec)
        net.meta = _meta(space, data, cfg, epoch + 1, history, world.size)
        if world.main:
            save_checkpoint(ckpt, net)
            _save_optimizer(opt_path, optimizer, schedule)
        log(f"train: epoch {epoch + 1}/{cfg.epochs} loss {rec['loss']:.3f} train top-1 {rec['train_top1']:.3f} ({rec['seconds']:.0f}s)")
    if not net.meta:
        net.meta = _meta(space, data, cfg, cfg.epochs, history, world.size)
    net.model.cpu().eval()
    return net


def _silent(_msg: str) -> None:
    """The log of every rank but 0."""


def _save_optimizer(path: Path, optimizer: torch.optim.Optimizer, schedule) -> None:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    meta = {"param_groups": sd["param_groups"], "scalars": scalars, "schedule": schedule.state_dict()}
    save_tensors(path, tensors, {"regnas": json.dumps(meta)})


def _load_optimizer(path: Path, optimizer: torch.optim.Optimizer, schedule) -> None:
    from safetensors import safe_open

    tensors = load_tensors(path, "optimizer state")
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["regnas"])
    state: dict[int, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    schedule.load_state_dict(meta["schedule"])

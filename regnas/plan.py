"""The time plan: minutes given → the supernet's training settings and epochs, the rest kept for the stages after it.

One planner for `regnas train` (the whole budget trains) and `regnas build` (the build keeps what its search,
fine-tune and export will take, timed here, and trains in the rest), with one default budget for both.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from regnas.data import Dataset
from regnas.distributed import World
from regnas.errors import RegnasError
from regnas.spaces import SearchSpace
from regnas.train import Pace, TrainConfig, default_batch_size, planned, recipe, settle_precision

logger = logging.getLogger(__name__)

DEFAULT_TIME_BUDGET_MIN = 40.0
"""The budget when neither --epochs nor --time-budget is given ..."""
POLICY_TIME_BUDGET_MIN = {"photo": 60.0}
"""... unless the data's augmentation policy has its own: colour photographs need more epochs than glyphs to be
learnt (the natural-images benchmark), and a family of them is worth the wait."""
DEFAULT_MIN_EPOCHS = 3
"""The fewest epochs the default budget trains (a budget the user gives may plan fewer; epochs they give are kept)."""


STAGE_NAMES = {"finetune": "fine-tune", "export_and_check": "export"}
"""How the plan's log line and errors name a kept stage."""


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def default_budget_text() -> str:
    """The default budget as the help of --time-budget gives it."""
    policies = ", ".join(f"{m:g} for {'colour photos' if a == 'photo' else a}" for a, m in POLICY_TIME_BUDGET_MIN.items())
    return f"{policies}, {DEFAULT_TIME_BUDGET_MIN:g} for other data"


def default_budget_min(augment: str) -> float:
    """Minutes planned when the user names neither epochs nor a budget, by the data's augmentation policy."""
    return POLICY_TIME_BUDGET_MIN.get(augment, DEFAULT_TIME_BUDGET_MIN)


@dataclass(frozen=True)
class TimeBudget:
    """What the user asked for: epochs, or minutes for the whole command (neither: the default budget)."""

    epochs: int | None = None
    minutes: float | None = None
    reserve_s: dict[str, float] = field(default_factory=dict)
    """Seconds kept for each stage after training (none for `regnas train`)."""
    started: float | None = None
    """When the command started (`time.time()`): what it spent before training comes out of the budget too."""


def train_config(
    out: str | Path,
    data: Dataset,
    space: SearchSpace,
    world: World,
    *,
    epochs: int | None,
    seed: int,
    augment: str | None = None,
    precision: str | None = None,
    batch_size: int | None = None,
    **settings,
) -> TrainConfig:
    """The supernet's training settings: the space's recipe under the given ones, the batch size the data set calls
    for, and the precision settled (`train.settle_precision`). Epochs are a placeholder until `plan_training` sets them."""
    cfg = recipe(
        space,
        epochs=epochs or 1,
        batch_size=batch_size or default_batch_size(len(data["train"])),
        seed=seed,
        augment=augment,
        precision=precision,
        **settings,
    )
    return settle_precision(out, data, space, cfg, world, epochs)


def plan_training(
    out: str | Path, data: Dataset, space: SearchSpace, cfg: TrainConfig, world: World, budget: TimeBudget
) -> tuple[TrainConfig, dict[str, float], Pace | None]:
    """`cfg` with its epochs: the ones given, else as many as fit the budget after what it keeps for later stages; the
    plan in seconds (`budget`, `train` and each kept stage; empty when epochs were given); and the pace training is
    planned at (None for given epochs or a kept plan), which `train_supernet` checks itself against."""
    if budget.epochs:
        return replace(cfg, epochs=budget.epochs), {}, None
    minutes = budget.minutes or default_budget_min(cfg.augment)
    kept = sum(budget.reserve_s.values())
    left = minutes * 60 - kept - (time.time() - budget.started if budget.started else 0.0)
    if budget.reserve_s:
        after = _listed([STAGE_NAMES.get(k, k) for k in budget.reserve_s])
        logger.info(f"plan: {minutes:g} min, about {kept / 60:.1f} min of it kept for {after}")
        if left <= 0 and budget.minutes is not None:
            raise RegnasError(
                f"a time budget of {minutes:g} min leaves no time to train after {after} (about {kept / 60:.1f} min here); "
                f"raise --time-budget above {kept / 60:.0f}, or pass --epochs"
            )
    floor = 0 if budget.minutes is not None else DEFAULT_MIN_EPOCHS
    cfg, pace = planned(out, data, space, replace(cfg, time_budget_min=minutes), max(left, 0.0), world, floor)
    return cfg, {"budget": minutes * 60, "train": max(left, 0.0), **budget.reserve_s}, pace

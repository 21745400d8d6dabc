"""`regnas build`: data → supernet → family and baseline search → extracted models → artifacts → check → report.json.

The build directory is a cache. Training checkpoints every epoch and resumes; the search result is
stored with a hash of everything it depends on (supernet weights, data, budgets, reward, search
settings, seed) and reused only when that hash matches. report.json is written last, atomically.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from regnas.artifacts import export_family
from regnas.augment import create_augment
from regnas.builddir import (
    BUILD_CONFIG,
    DATA_CACHE,
    SEARCH_CACHE,
    BuildReport,
    MemberRecord,
    locked,
    read_finetuned,
    read_search_cache,
    save_member,
    write_build_config,
    write_report,
    write_search_cache,
)
from regnas.config import count, dumps_toml, minutes, option, positive, section
from regnas.data import Dataset, load_dataset, load_recorded_split
from regnas.deployed import Deployed, keep, load_deployed, parse_deployed
from regnas.distill import DistillConfig, finetune_schedule
from regnas.distributed import World, init_world, launched_by_torchrun
from regnas.errors import RegnasError
from regnas.evaluate import Evaluator, predict
from regnas.exporters import create_exporter
from regnas.family import Assessment, Member, assess, search_baseline, search_family
from regnas.finetune import FINETUNE_MODES, check_finetune_mode, finetune_seconds, nested_finetune
from regnas.flips import nfr
from regnas.io import ensure_writable_dir, sha256_file, sha256_json
from regnas.logs import Stages
from regnas.plan import TimeBudget, default_budget_text, plan_training, train_config
from regnas.report import write_reports
from regnas.runtimes import Remote
from regnas.search import Budget, Reward, SearchConfig, parse_reward
from regnas.spaces import Arch, SearchSpace, space_class, space_for
from regnas.targets import Target, resolve_targets
from regnas.targets.lut import LUT, find_lut, lut_filename
from regnas.train import (
    CHECKPOINT,
    Pace,
    Supernet,
    TrainConfig,
    check_precision,
    checkpoint_header,
    load_checkpoint,
    train_supernet,
)
from regnas.workflow.check import check

logger = logging.getLogger(__name__)


DEFAULT_REWARD = "1,5"
"""The family's reward when none is given: flips priced five times top-1. With the joint fine-tune after it
this flips about a third as often as the independent baseline at its top-1 or better (docs/notes/family-flips.md);
R2 alone flips twice as often."""
NO_FINETUNE = "none"
"""`--no-finetune`: the members ship as searched."""


@dataclass
class BuildOptions:
    """Everything `regnas build` takes: each field declares its flag, its place in build.toml and its help once
    (`regnas.config`). The fine-tune's seed is the build's."""

    targets: str = option("phone,edge,server", "comma-separated built-in targets or target .toml paths")
    out: Path = option(Path("build"), "build directory (a cache: re-runs resume)")
    seed: int = option(0, "seed of the data split, training, search and fine-tune", parse=count)
    data: str = option("digits", "dataset name (digits, fashion-mnist), .npz file or image folder", section="data")
    image_size: int | None = option(
        None,
        "an image folder's images: shorter side resized to N px, then centre-cropped to NxN (default: as they are; they "
        "must then share one size)",
        section="data",
        parse=positive,
        metavar="N",
    )
    val_size: int | None = option(
        None,
        "images in the val split the search compares candidates on, when the supernet is trained here (default: 15% of "
        "the data, at most 5000)",
        section="data",
        parse=positive,
        metavar="N",
    )
    data_digest: str | None = option(
        None,
        "the digest of the data split the build must get (DIR/build.toml records it, so a rebuild refuses changed data)",
        section="data",
        metavar="SHA256",
    )
    supernet: Path | None = option(None, "trained supernet checkpoint (.safetensors); trained when absent", section="train")
    space: str | None = option(None, "search space (default: the checkpoint's, else mbv3 under 16 px, resnet from 16)", section="train")
    epochs: int | None = option(
        None, "supernet training epochs (default: as many as --time-budget allows)", section="train", parse=positive
    )
    time_budget: float | None = option(
        None,
        f"minutes for the whole build; the supernet trains for the epochs that fit (default: {default_budget_text()})",
        section="train",
        parse=minutes,
        metavar="MIN",
    )
    precision: str | None = option(
        None,
        "the supernet's training steps: bf16 (autocast) or fp32 (default: bf16 on a GPU; on a CPU with AVX512-BF16 or AMX, "
        "bf16 where its timed steps are faster here; else fp32; decided by train.settle_precision)",
        section="train",
    )
    augment: str | None = option(
        None,
        "the supernet's augmentation (regnas.augment): photo (random crops and mirroring), glyph (shifts) or none "
        "(default: photo for colour images, glyph for grayscale ones)",
        section="train",
    )
    rewards: tuple[str, ...] = option(
        (DEFAULT_REWARD,),
        "R0 (accuracy), R1 (flips), R2 (both) or 'λ1,λ2'; repeat it to also search and plot other rewards (the first is the family's)",
        section="search",
        flag="--reward",
        metavar="REWARD",
        cli={"action": "append"},
    )
    flips_against: str = option(
        "previous", "the reward's flips: against the previous member (previous) or any earlier member (all)", section="search"
    )
    deployed: tuple[str, ...] = option(
        (),
        "TARGET=PATH: the model TARGET runs in production now (an ONNX file, a member folder of an earlier build, or .npy/.json "
        "predictions on the whole data set); the search counts flips against it (λ3 of --reward λ1,λ2,λ3; default λ3 = λ2), "
        "the fine-tune pulls the member towards it by 0.02·λ3, and the report compares the family with one searched "
        "without it. Repeat it per target",
        section="search",
        metavar="TARGET=PATH",
        cli={"action": "append"},
    )
    search: SearchConfig = section(SearchConfig, "search")
    workers: int = option(1, "evaluate search candidates on N local Ray workers (1: in process)", section="search", parse=positive)
    ray_address: str | None = option(
        None, "evaluate on an existing Ray cluster (host:port of its head, or auto); needs regnas[ray]", section="search"
    )
    finetune_mode: str | None = option(
        None,
        "fine-tune each member towards the one before with focal distillation, keeping the family nested: joint (all "
        "members at once in the supernet; the default for 2 or more targets), own (each member on the weights it does "
        "not share) or none",
        section="finetune",
        flag="--finetune",
        metavar="MODE",
        cli={"nargs": "?", "const": "joint"},
    )
    finetune: DistillConfig = field(default_factory=DistillConfig)
    """The settings of the nesting-preserving focal distillation after the search (not a user option)."""
    export: bool = option(
        True, "stop after the family: no artifacts, no check (in a config file: export = false)", section="export", flag="--no-export"
    )
    targets_dir: Path | None = option(None, "a directory of target .toml files, added to the built-ins", section="export")
    lut_dir: Path | None = option(None, "a directory of LUTs from regnas profile (latency budgets)", section="export")
    rpc: str | None = option(None, "a TVM RPC server (or, with --rpc-key, a tracker) on the device", section="export", metavar="HOST:PORT")
    rpc_key: str | None = option(None, "device key to request from the TVM RPC tracker at --rpc", section="export")
    remote: Remote | None = field(init=False)
    """The device `rpc` names, if any."""
    strict: bool = option(False, "exit 1 when an artifact's flip check is inconclusive, not only when it fails", section="check")

    def __post_init__(self) -> None:
        self.out, self.rewards, self.deployed = Path(self.out), tuple(self.rewards), tuple(self.deployed)
        if self.finetune.seed != self.seed:
            self.finetune = replace(self.finetune, seed=self.seed)
        self.remote = Remote.from_options(self.rpc, self.rpc_key)


Luts = dict[str, tuple[Path, LUT]]

EXPORT_FIXED_S_PER_TARGET = 10.0
EXPORT_EVALS_PER_TARGET = 120
"""Export and check of one target cost about EXPORT_FIXED_S_PER_TARGET seconds (lowering, compiling) plus this
many candidate evaluations (flip-aware quantization ranks units and re-scores on val, the check runs every
artifact on test). Fitted on 2 cores to the export and check of the default targets: digits about 15 s per
target at 0.05 s per evaluation, Fashion-MNIST about 235 s per target at 2.1 s, the CIFAR-10 folder about
270 s per target at 2.25 s (since trials are exported once and stop counting early; 380 s before)."""


def _budgets(space: SearchSpace, targets: list[Target], lut_dir: Path | None) -> tuple[list[tuple[str, Budget]], Luts]:
    """(target, budget) in budget order, and the LUT found for each target.

    A latency budget needs the target's LUT for this space and input size; a budget the smallest
    subnet cannot meet is bad input. Targets are ordered by the share of the largest subnet's
    cost their budget allows, so FLOP and latency budgets mix.
    """
    luts = {t.name: found for t in targets if (found := find_lut(t, space, lut_dir)) is not None}
    largest, smallest = space.largest(), space.smallest()
    budgets = []
    for t in targets:
        if t.latency_ms is not None:
            if t.name not in luts:
                file = lut_filename(t.name, space.name, space.input_shape)
                raise RegnasError(
                    f"target {t.name} has a latency budget but no LUT for {space.name} at input {space.input_shape}; "
                    f"run regnas profile --target {t.name} --data <your data> (it writes luts/{file}), then pass --lut-dir luts"
                )
            budget = Budget(t.latency_ms, "ms", partial(luts[t.name][1].predict_ms, space))
        else:
            budget = Budget.flops(space, t.budget_flops(space.flops(largest)))
        if budget.cost(smallest) > budget.limit:
            raise RegnasError(
                f"target {t.name}: budget {budget.describe()} is below the smallest {space.name} subnet "
                f"({budget.describe(budget.cost(smallest))}); raise its budget"
            )
        budgets.append((t.name, budget))
    budgets.sort(key=lambda nb: nb[1].limit / nb[1].cost(largest))
    return budgets, luts


def _latency(records: list[MemberRecord], members: list[Member], space: SearchSpace, luts: Luts) -> None:
    """Add each member's LUT-predicted latency (and latency budget, where set) to its report record."""
    for rec, m in zip(records, members):
        rec.predicted_latency_ms = luts[m.target][1].predict_ms(space, m.arch) if m.target in luts else None
        rec.budget_latency_ms = m.budget_latency_ms


def _data_for(opts: BuildOptions) -> Dataset:
    """The data split the build uses (a given supernet's own split, its recorded seed; else split by --seed), refused
    when it is not the split `data_digest` names."""
    data = _split_for(opts)
    if opts.data_digest is not None and data.digest != opts.data_digest:
        raise RegnasError(
            f"{opts.data} split with seed {opts.seed} is not the data this build's settings were written for (digest "
            f"{data.digest[:12]}, not {opts.data_digest[:12]}); drop data_digest from the config file to build on this data"
        )
    return data


def _write_config(out: Path, opts: BuildOptions) -> None:
    """`DIR/build.toml`: the build's effective settings (planned epochs and settled precision included), which
    `regnas build --config DIR/build.toml --out OTHER` rebuilds the family from."""
    header = f"regnas build's effective settings for {out}; rebuild with: regnas build --config {out / BUILD_CONFIG} --out OTHER"
    write_build_config(out, dumps_toml(opts, header))


def _split_for(opts: BuildOptions) -> Dataset:
    cache = opts.out / DATA_CACHE
    if opts.supernet is None:
        return load_dataset(opts.data, opts.seed, val_size=opts.val_size, image_size=opts.image_size, cache=cache)
    if opts.val_size is not None:
        raise RegnasError(f"--val-size applies when the supernet is trained; {opts.supernet} records its own split, so drop --val-size")
    header = checkpoint_header(opts.supernet)
    record = header.get("split")
    if opts.image_size is not None and opts.image_size != (record or {}).get("image_size"):
        raise RegnasError(f"{opts.supernet} was trained on images of another size than --image-size {opts.image_size}; drop --image-size")
    if record is None:  # a checkpoint from before splits were recorded: only --seed's split can be checked
        data = load_dataset(opts.data, opts.seed)
        if header.get("data", {}).get("digest") != data.digest:
            raise RegnasError(
                f"{opts.supernet} was trained on other data or another split than {opts.data} with --seed {opts.seed}; "
                "pass the data and --seed it was trained with, or retrain"
            )
        return data
    return load_recorded_split(opts.data, record, str(opts.supernet), cache=cache)


def finetune_mode_of(opts: BuildOptions, n_members: int) -> str | None:
    """The fine-tune the build runs (None: none): the asked mode, else joint for a family of 2 or more members."""
    if opts.finetune_mode is None:
        return "joint" if n_members >= 2 else None
    return None if opts.finetune_mode == NO_FINETUNE else opts.finetune_mode


def eval_seconds(evaluator: Evaluator, split: str = "val", repeats: int = 2) -> float:
    """Seconds one candidate evaluation on `split` takes here (BN recalibration and predictions of a median-sized subnet).

    The plan multiplies this by about a thousand evaluations, and a process's first forward pass also
    pays for paging in the kernels (seconds on a machine just started), so one untimed evaluation
    comes first and the fastest of `repeats` counts.
    """
    arch = evaluator.space.median()
    x = evaluator.images(split)

    def once() -> float:
        t0 = time.perf_counter()
        predict(evaluator.subnet(arch), x, inplace=True)
        return time.perf_counter() - t0

    once()
    return min(once() for _ in range(repeats))


def search_reserve_s(screen_s: float, full_s: float, n_targets: int, cfg: SearchConfig) -> float:
    """Seconds the family and baseline searches may take: the most candidates they can screen (`screen_s` each),
    and their finalists on all of val (`full_s` each; none when the screen is all of val)."""
    per_search = cfg.population + (cfg.generations - 1) * (cfg.population - max(2, round(cfg.parent_ratio * cfg.population)))
    finals = cfg.finalists * full_s if screen_s != full_s else 0.0
    return 2 * n_targets * (per_search * screen_s + finals)


def budget_archs(space: SearchSpace, budgets: list[tuple[str, Budget]]) -> list[Arch]:
    """Per budget, the largest arch shrunk at random until it fits: about the size of the member the search finds there
    (members use most of their budget), to time the fine-tune with."""
    rng = random.Random(0)
    return [space.shrink_within(space.largest(), b.cost, b.limit, rng) for _, b in budgets]


def _reserve(opts: BuildOptions, data: Dataset, space: SearchSpace, budgets: list[tuple[str, Budget]], world: World) -> dict[str, float]:
    """Seconds set aside for each stage after training, timed here on a fresh supernet: the search (its screened and
    final candidate evaluations), the fine-tune (its steps, on members the size of the budgets) and export with its
    check (on the CPU, where runtimes run)."""
    from regnas.train import Supernet

    n_targets = len(budgets)
    fresh = Supernet(space, space.build_supernet(), {})
    evaluator = Evaluator(fresh, data, device=world.device)
    per_eval = eval_seconds(evaluator)
    screen = opts.search.screen_split(len(data["val"]))
    per_screen = eval_seconds(evaluator, screen) if screen != "val" else per_eval
    reserve = {"search": search_reserve_s(per_screen, per_eval, n_targets, opts.search)}
    mode = finetune_mode_of(opts, n_targets)
    if mode is not None:
        reserve["finetune"] = finetune_seconds(fresh.model, budget_archs(space, budgets), data, opts.finetune, mode)
    if opts.export:
        on_cpu = per_eval if world.device.type == "cpu" else eval_seconds(Evaluator(fresh, data, device=torch.device("cpu")))
        reserve["export_and_check"] = n_targets * (EXPORT_FIXED_S_PER_TARGET + EXPORT_EVALS_PER_TARGET * on_cpu)
    return reserve


def _train_config(
    opts: BuildOptions, data: Dataset, space: SearchSpace, out: Path, budgets: list[tuple[str, Budget]], t0: float, world: World
) -> tuple[TrainConfig, dict[str, float], Pace | None]:
    """The supernet's training settings (its random subnets aimed at the targets' budgets), its epochs given or planned
    so the whole build fits --time-budget, the plan: seconds set aside for each later stage (empty when --epochs
    was given), and the pace training is planned at."""
    largest = space.largest()
    cfg = train_config(
        out,
        data,
        space,
        world,
        epochs=opts.epochs,
        seed=opts.seed,
        augment=opts.augment,
        precision=opts.precision,
        subnet_flops=tuple(sorted({round(b.limit / b.cost(largest), 4) for _, b in budgets})),
    )
    settled = replace(opts, finetune=opts.finetune.settled(cfg.augment))  # the fine-tune timed as it will run
    reserve = {} if opts.epochs else _reserve(settled, data, space, budgets, world)
    return plan_training(out, data, space, cfg, world, TimeBudget(opts.epochs, opts.time_budget, reserve, t0))


def warn_overrun(plan: dict[str, float], timing: dict[str, float]) -> list[str]:
    """The stages that took over 20% more than planned, warned about when the whole build overran its budget.

    The plan times a fresh supernet's median subnet on this host before training; a slower host, a
    busier one, or a trained supernet that keeps more units in float at export can each cost more.
    A build at its epoch floor also overruns by design when the floor alone takes longer than planned.
    """
    if not plan or timing["total"] <= plan["budget"]:
        return []
    spent = {**timing, "export_and_check": timing.get("export", 0.0) + timing.get("check", 0.0)}
    over = [f"{k} {spent[k] / 60:.1f} min (planned {v / 60:.1f})" for k, v in plan.items() if k != "budget" and spent.get(k, 0.0) > 1.2 * v]
    logger.warning(
        f"the build took {timing['total'] / 60:.1f} min against its {plan['budget'] / 60:g}-min budget"
        + (f": {', '.join(over)}" if over else "")
        + "; raise --time-budget, or pass --epochs to train for a fixed number of epochs"
    )
    return over


def _search(
    opts: BuildOptions,
    evaluator: Evaluator,
    budgets: list[tuple[str, Budget]],
    rewards: list[Reward],
    luts: Luts,
    ckpt: Path,
    out: Path,
    deployed: dict[str, Deployed],
) -> dict[str, Any]:
    """The family (first reward), the independent baseline and one family per further reward, cached in out/search.json."""
    space = evaluator.space
    key = sha256_json(
        {
            "supernet": sha256_file(ckpt),
            "data": evaluator.data.digest,
            "budgets": [(name, b.limit, b.unit) for name, b in budgets],
            "luts": {name: lut.digest for name, (_, lut) in luts.items()},
            "reward": asdict(rewards[0]),
            "sweep": [asdict(r) for r in rewards[1:]],
            "search": asdict(opts.search),
            "seed": opts.seed,
            **({"deployed": {t: d.digest for t, d in deployed.items()}} if deployed else {}),
        }
    )
    cached = read_search_cache(out)
    if cached is not None and cached.get("key") == key:
        logger.info(f"search: reusing {out / SEARCH_CACHE}")

        def load(ms: list) -> list[Member]:
            return [Member.from_json(space, m) for m in ms]

        return {
            "key": key,
            "family": load(cached["family"]),
            "baseline": load(cached["baseline"]),
            "sweep": {k: load(v) for k, v in cached["sweep"].items()},
        }
    if opts.workers > 1 or opts.ray_address is not None:
        from regnas.parallel import RayPool

        pool = RayPool(evaluator.supernet, evaluator.data, len(evaluator.calib_x), opts.workers, opts.ray_address)
        evaluator = Evaluator(evaluator.supernet, evaluator.data, len(evaluator.calib_x), pool, evaluator.device)
        logger.info(f"search: evaluating candidates on {pool.workers} Ray workers")
    try:
        theirs = {t: d.predictions["val"] for t, d in deployed.items()}
        baseline = search_baseline(evaluator, budgets, opts.search, opts.seed)
        family = search_family(evaluator, budgets, rewards[0], opts.search, opts.seed, deployed=theirs, anchors=baseline)
        sweep = {
            r.describe(): search_family(evaluator, budgets, r, opts.search, opts.seed, deployed=theirs, anchors=baseline)
            for r in rewards[1:]
        }
    finally:
        evaluator.close()

    def dump(ms: list[Member]) -> list:
        return [m.to_json(space) for m in ms]

    write_search_cache(
        out, {"key": key, "family": dump(family), "baseline": dump(baseline), "sweep": {k: dump(v) for k, v in sweep.items()}}
    )
    return {"key": key, "family": family, "baseline": baseline, "sweep": sweep}


def _finetune_section(before: dict[str, Any], cfg: DistillConfig, mode: str) -> dict[str, Any]:
    """What `--finetune` changes: the family's test numbers before it, and its settings."""
    return {
        "mode": mode,
        "method": FINETUNE_MODES[mode],
        "config": asdict(cfg),
        "before": [{"target": m["target"], "top1": m["top1"], "nfr_vs_prev": m["nfr_vs_prev"]} for m in before["family"]],
    }


def _val_test_agreement(members: list[MemberRecord], val: list[MemberRecord] | None = None) -> dict[str, Any]:
    """How well the val split predicted each chosen member's test numbers: the search's val numbers, or
    `val`'s, the fine-tuned members' own on val (the search saw them before the fine-tune)."""
    rows = [
        {
            "target": m.target,
            "val_top1": v.top1 if v is not None else m.val_top1,
            "test_top1": m.top1,
            "val_nfr_vs_prev": v.nfr_vs_prev if v is not None else m.val_nfr_vs_prev,
            "test_nfr_vs_prev": m.nfr_vs_prev,
        }
        for m, v in zip(members, val or [None] * len(members))
    ]
    top1 = [abs(r["val_top1"] - r["test_top1"]) for r in rows]
    nfrs = [abs(r["val_nfr_vs_prev"] - r["test_nfr_vs_prev"]) for r in rows if r["test_nfr_vs_prev"] is not None]
    return {"members": rows, "max_abs_top1_gap": max(top1), "max_abs_nfr_gap": max(nfrs) if nfrs else None}


def _sweep_point(name: str, members: list[MemberRecord]) -> dict[str, Any]:
    """One reward's family as a point of the NFR / top-1 trade-off."""
    flips = [m.nfr_vs_prev for m in members[1:]]
    return {
        "reward": name,
        "mean_top1": float(np.mean([m.top1 for m in members])),
        "mean_nfr": float(np.mean(flips)) if flips else 0.0,
        "members": [{"target": m.target, "top1": m.top1, "nfr_vs_prev": m.nfr_vs_prev, "flops": m.flops} for m in members],
    }


def flag_repeats(members: list[MemberRecord]) -> None:
    """Mark a member whose arch is its predecessor's: it spends none of its larger budget (zero flips by not upgrading)."""
    for prev, m in zip(members, members[1:]):
        m.same_as_previous = m.arch == prev.arch
        if m.same_as_previous:
            logger.warning(f"family member {m.target} is {prev.target}'s arch: its larger budget buys nothing")


def deployed_rewards(rewards: list[Reward]) -> list[Reward]:
    """With deployed models: the family's reward weighs their flips (λ3 = λ2 unless given), and the same reward without
    them is searched beside it (the last sweep point), so the report shows what `--deployed` bought."""
    main = rewards[0] if rewards[0].deployed else replace(rewards[0], name="custom", deployed=rewards[0].nfr)
    if not main.deployed:
        raise RegnasError(f"--deployed needs a reward that weighs flips against the deployed models; pass e.g. --reward {main.top1:g},5,5")
    without = replace(main, deployed=0.0)
    return [main, *(r for r in rewards[1:] if r != without), without]


def _validate_options(opts: BuildOptions) -> tuple[list[Reward], list[Target]]:
    """The rewards and targets, after every check that costs nothing (before any data is read)."""
    if launched_by_torchrun():
        raise RegnasError(
            "regnas build runs in one process; train under torchrun with `regnas train --out DIR`, then run regnas build --supernet DIR/"
            + CHECKPOINT
        )
    if opts.strict and not opts.export:
        raise RegnasError("--strict judges the artifact check, which --no-export skips; drop one of them")
    rewards = [parse_reward(r, opts.flips_against) for r in dict.fromkeys(opts.rewards)]
    targets = resolve_targets(opts.targets, opts.targets_dir)
    if parse_deployed(opts.deployed, [t.name for t in targets]):
        rewards = deployed_rewards(rewards)
        if opts.finetune_mode == "own":
            raise RegnasError("--finetune own does not distil towards deployed models; use --finetune joint (the default) or none")
    if opts.finetune_mode not in (None, NO_FINETUNE):
        check_finetune_mode(opts.finetune_mode)
        if len(targets) < 2:
            raise RegnasError("--finetune fine-tunes each member towards the one before it, so it needs a family of 2 or more targets")
    if opts.ray_address is not None:
        from regnas.parallel import check_ray_address

        check_ray_address(opts.ray_address)
    if opts.space is not None:
        space_class(opts.space)
    if opts.augment is not None:
        create_augment(opts.augment)
    check_precision(opts.precision)
    return rewards, targets


def _finetuned(
    opts: BuildOptions, evaluator: Evaluator, family: list[Member], mode: str, search_key: str, out: Path, deployed: dict[str, Deployed]
) -> tuple[list[nn.Module], str]:
    """The family's fine-tuned members (an earlier run's, when this build already made them) and the fine-tune's cache key.
    (The search's key already covers the deployed models.)"""
    schedule = finetune_schedule(len(evaluator.data["train"]), opts.finetune)
    key = sha256_json(
        {"search": search_key, "targets": [m.target for m in family], "mode": mode, "config": asdict(opts.finetune), "schedule": schedule}
    )
    nets = read_finetuned(out, key)
    if nets is None:
        data = evaluator.data
        teachers = [deployed[m.target].teacher(data, torch.get_num_threads()) if m.target in deployed else None for m in family]
        nets = nested_finetune(evaluator.supernet, [m.arch for m in family], data, opts.finetune, mode, teachers)
    return nets, key


def _family_report(
    opts: BuildOptions,
    evaluator: Evaluator,
    found: dict[str, Any],
    rewards: list[Reward],
    luts: Luts,
    tuned: tuple[list[nn.Module], dict[str, Any]] | None,
) -> tuple[dict[str, Any], Assessment, Assessment]:
    """The family (its fine-tuned members where `tuned` holds them, with the fine-tune's section) and the baseline
    assessed on test, and the report sections that derive from them (fine-tune, val/test agreement, reward sweep,
    LUTs, search candidates); the two assessments' records are complete."""
    family, baseline, space = found["family"], found["baseline"], evaluator.space
    report: dict[str, Any] = {}
    fam = assess(evaluator, family)
    val = None
    if tuned is not None:
        nets, section = tuned
        report["finetune"] = {**_finetune_section(fam.section, opts.finetune, section["mode"]), **section}
        fam = assess(evaluator, family, nets=nets)
        val = assess(evaluator, family, "val", nets=nets).records
    base = assess(evaluator, baseline)
    _latency(fam.records, family, space, luts)
    _latency(base.records, baseline, space, luts)
    flag_repeats(fam.records)
    report["val_test"] = _val_test_agreement(fam.records, val)
    if found["sweep"]:
        report["reward_sweep"] = [
            _sweep_point(rewards[0].describe(), fam.records),
            *(_sweep_point(name, assess(evaluator, ms).records) for name, ms in found["sweep"].items()),
            _sweep_point("baseline (R0, each target alone)", base.records),
        ]
    report["luts"] = {name: {"path": str(p), "provenance": lut.provenance, "validation": lut.validation} for name, (p, lut) in luts.items()}
    report["search"] = {
        kind: {m.target: [list(c) for c in m.candidates] for m in members} for kind, members in (("family", family), ("baseline", baseline))
    }
    return report, fam, base


def _against_deployed(
    evaluator: Evaluator, deployed: dict[str, Deployed], fam: Assessment, without: list[Member], rewards: list[Reward], out: Path
) -> dict[str, Any]:
    """Each member against its target's deployed model on test (set on its record), beside the same member of the family
    searched without them (the reward with λ3 = 0): what `--deployed` bought. `flip_matrix` (and `_without`): NFR of every
    member against each deployed model (rows, in the members' order). The deployed models are kept in the build."""
    labels = evaluator.labels("test")
    kept = keep(out, deployed)
    plain = assess(evaluator, without)
    olds = [deployed[r.target].predictions["test"] for r in fam.records if r.target in deployed]
    rows = {
        "flip_matrix": [[nfr(old, pred, labels) for pred in fam.preds] for old in olds],
        "flip_matrix_without": [[nfr(old, pred, labels) for pred in plain.preds] for old in olds],
    }
    members = []
    for rec, pred, other, other_pred in zip(fam.records, fam.preds, plain.records, plain.preds):
        if rec.target not in deployed:
            continue
        d = deployed[rec.target]
        rec.vs_deployed = d.versus(pred, labels)
        versus = {"with": rec.vs_deployed, "without": d.versus(other_pred, labels)}
        members.append({"target": rec.target, "kept": kept[rec.target], **versus, "top1_with": rec.top1, "top1_without": other.top1})
        w, wo = members[-1]["with"], members[-1]["without"]
        logger.info(
            f"deployed: {rec.target} flips {w['nfr']:.2%} of what {d.source} got right (without --deployed: {wo['nfr']:.2%}), "
            f"top-1 {rec.top1:.2%} ({other.top1:.2%})"
        )
    return {"reward": rewards[0].describe(), "without_reward": rewards[-1].describe(), "members": members, **rows}


def _config_section(opts: BuildOptions, data: Dataset, net: Any, ckpt: Path, rewards: list[Reward]) -> dict[str, Any]:
    """What the build was made from: data (with its split), space, supernet, seed, reward and settings."""
    return {
        "data": {
            "spec": opts.data,
            "name": data.name,
            "digest": data.digest,
            "input_shape": list(data.input_shape),
            "class_names": data.class_names,
            "splits": {s: len(data[s]) for s in data.splits},
            "split": data.split_record(),
        },
        "space": net.space.name,
        "supernet": str(ckpt),
        "seed": opts.seed,
        "reward": asdict(rewards[0]),
        "search": asdict(opts.search),
        "train": net.meta.get("train"),
    }


def build(opts: BuildOptions) -> dict[str, Any]:
    """Run the whole build and return the report (also written to `out/report.json`); the build directory is locked meanwhile."""
    t0 = time.time()
    rewards, targets = _validate_options(opts)
    out = ensure_writable_dir(opts.out, "--out")
    with locked(out, "build"):
        return _build(opts, rewards, targets, out, t0)


def _train(
    opts: BuildOptions,
    data: Dataset,
    space: SearchSpace,
    out: Path,
    budgets: list[tuple[str, Budget]],
    t0: float,
    world: World,
    stages: Stages,
) -> tuple[Supernet, dict[str, float]]:
    """The build's supernet, trained as planned, and the plan. `build.toml` records the epochs settled: planned, then the
    ones trained where training ran slower than planned and stopped sooner to keep the budget."""
    cfg, plan, pace = _train_config(opts, data, space, out, budgets, t0, world)

    def settled(epochs: int) -> None:
        fixed = {"epochs": epochs, "time_budget": None, "precision": cfg.precision, "augment": cfg.augment}
        _write_config(out, replace(opts, space=space.name, data_digest=data.digest, **fixed))

    settled(cfg.epochs)
    stages.planned(plan)
    stages.start("train")
    net = train_supernet(data, out, cfg, space.name, world=world, pace=pace)
    if net.meta["train"]["epochs"] != cfg.epochs:
        settled(net.meta["train"]["epochs"])
    return net, plan


def _build(opts: BuildOptions, rewards: list[Reward], targets: list[Target], out: Path, t0: float) -> dict[str, Any]:
    data = _data_for(opts)
    world = init_world()
    if opts.export:  # after the cheap checks: this imports every backend the targets ask for
        for t in targets:
            for name in t.exporters:
                create_exporter(name).check_available()
    net = load_checkpoint(opts.supernet, opts.space, data) if opts.supernet is not None else None
    fresh = net.space if net is not None else space_for(data.input_shape, data.num_classes, opts.space)
    if net is None and opts.space is None:
        logger.info(f"space: {fresh.name}, the default for {'x'.join(map(str, data.input_shape[1:]))} px inputs (--space picks another)")
    budgets, luts = _budgets(fresh, targets, opts.lut_dir)
    sizes = ", ".join(f"{s} {len(data[s])}" for s in data.splits)
    logger.info(f"data: {data.name} {data.input_shape} {data.num_classes} classes, {sizes}")
    deployed = load_deployed(parse_deployed(opts.deployed, [t.name for t in targets]), data, torch.get_num_threads())

    plan: dict[str, float] = {}
    mode = finetune_mode_of(opts, len(targets))
    stages = Stages(
        [*(["train"] if net is None else []), "search", *(["finetune"] if mode else []), *(["export", "check"] if opts.export else [])],
        logger,
    )
    if net is not None:
        ckpt = Path(opts.supernet)
        _write_config(out, replace(opts, space=net.space.name, data_digest=data.digest))
    else:
        net, plan = _train(opts, data, fresh, out, budgets, t0, world, stages)
        ckpt = out / CHECKPOINT
    t_train = time.time()
    lambda3 = rewards[0].deployed if deployed else None
    opts = replace(opts, finetune=opts.finetune.settled(net.meta["train"].get("augment"), lambda3))  # the report records what ran

    stages.start("search")
    evaluator = Evaluator(net, data, device=world.device)
    found = _search(opts, evaluator, budgets, rewards, luts, ckpt, out, deployed)
    t_search = time.time()
    tuned = None
    if mode is not None:
        stages.start("finetune")
        nets, key = _finetuned(opts, evaluator, found["family"], mode, found["key"], out, deployed)
    t_finetune = time.time()
    if mode is not None:
        tuned = (nets, {"mode": mode, "key": key, "seconds": t_finetune - t_search})

    sections, fam, base = _family_report(opts, evaluator, found, rewards, luts, tuned)
    if deployed:
        sections["deployed"] = _against_deployed(evaluator, deployed, fam, found["sweep"][rewards[-1].describe()], rewards, out)
    for m, n, rec in zip(found["family"], fam.nets, fam.records):
        rec.weights_sha256 = save_member(out / m.target, net.space, m.arch, n, m.target)
    report = {**fam.section, "baseline": base.section, **sections}
    order = [name for name, _ in budgets]
    ordered = sorted(targets, key=lambda t: order.index(t.name))
    report["targets"] = [t.to_json() for t in ordered]
    report["config"] = _config_section(opts, data, net, ckpt, rewards)
    t_export = time.time()
    if opts.export:
        stages.start("export")
        artifacts = export_family(out, ordered, data)
        t_export = time.time()
        stages.start("check")
        result = check(out, artifacts, ordered, data, opts.remote)
        report["artifacts"] = [a.to_json() for a in result.artifacts]
        report["check"] = result.section()
    report["timing_s"] = {
        "train": t_train - t0,
        "search": t_search - t_train,
        **({"finetune": t_finetune - t_search} if tuned is not None else {}),
        **({"export": t_export - t_finetune, "check": time.time() - t_export} if opts.export else {}),
        "total": time.time() - t0,
    }
    if plan:
        report["plan_s"] = {**plan, "overrun": warn_overrun(plan, report["timing_s"])}
    write_report(out, report)
    write_reports(BuildReport.from_json(out, report))
    return report

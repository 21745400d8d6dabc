"""`regnas build`: data → supernet → family and baseline search → extracted models → artifacts → check → report.json.

The build directory is a cache. Training checkpoints every epoch and resumes; the search result is
stored with a hash of everything it depends on (supernet weights, data, budgets, reward, search
settings, seed) and reused only when that hash matches. report.json is written last, atomically.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from regnas.artifacts import export_family
from regnas.check import check
from regnas.data import load_dataset
from regnas.distributed import init_world, launched_by_torchrun
from regnas.errors import RegnasError
from regnas.evaluate import Evaluator
from regnas.exporters import create_exporter
from regnas.family import Member, assess, search_baseline, search_family
from regnas.io import read_json, save_tensors, sha256_file, sha256_json, write_json
from regnas.report import write_reports
from regnas.runtimes import Remote
from regnas.search import Budget, SearchConfig, parse_reward
from regnas.spaces import SearchSpace, create_space, space_class
from regnas.targets import Target, resolve_targets
from regnas.targets.lut import LUT, find_lut
from regnas.train import CHECKPOINT, TrainConfig, default_batch_size, default_epochs, load_checkpoint, train_supernet


def log(msg: str) -> None:
    """Progress goes to stderr so stdout stays for results."""
    print(f"regnas: {msg}", file=sys.stderr, flush=True)


@dataclass
class BuildOptions:
    """Everything `regnas build` takes."""

    targets: str = "phone,edge,server"
    data: str = "digits"
    out: Path = Path("build")
    supernet: Path | None = None
    seed: int = 0
    space: str | None = None
    epochs: int | None = None
    reward: str = "R2"
    search: SearchConfig = field(default_factory=SearchConfig)
    export: bool = True
    targets_dir: Path | None = None
    remote: Remote | None = None
    lut_dir: Path | None = None
    workers: int = 1
    ray_address: str | None = None


Luts = dict[str, tuple[Path, LUT]]


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
                raise RegnasError(
                    f"target {t.name} has a latency budget but no LUT for {space.name} at input {space.input_shape}; "
                    f"run regnas profile --target {t.name} --data <your data> and pass --lut-dir"
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


def _latency(records: list[dict], members: list[Member], space: SearchSpace, luts: Luts) -> None:
    """Add each member's LUT-predicted latency (and latency budget, where set) to its report record."""
    for rec, m in zip(records, members):
        rec["predicted_latency_ms"] = luts[m.target][1].predict_ms(space, m.arch) if m.target in luts else None
        if m.budget_latency_ms is not None:
            rec["budget_latency_ms"] = m.budget_latency_ms


def build(opts: BuildOptions) -> dict[str, Any]:
    """Run the whole build and return the report (also written to `out/report.json`)."""
    t0 = time.time()
    if launched_by_torchrun():
        raise RegnasError(
            "regnas build runs in one process; train under torchrun with `regnas train --out DIR`, then run regnas build --supernet DIR/"
            + CHECKPOINT
        )
    reward = parse_reward(opts.reward)
    targets = resolve_targets(opts.targets, opts.targets_dir)
    if opts.ray_address is not None:
        from regnas.parallel import check_ray_address

        check_ray_address(opts.ray_address)
    if opts.space is not None:
        space_class(opts.space)
    data = load_dataset(opts.data, opts.seed)
    if opts.export:  # after the cheap checks: this imports every backend the targets ask for
        for t in targets:
            for name in t.exporters:
                create_exporter(name).check_available()
    log(f"data: {data.name} {data.input_shape} {data.num_classes} classes, " + ", ".join(f"{s} {len(data[s])}" for s in data.splits))

    out = Path(opts.out)
    if opts.supernet is not None:
        net = load_checkpoint(opts.supernet, opts.space, data)
        ckpt = Path(opts.supernet)
        if net.meta["data"]["digest"] != data.digest:
            log(f"warning: {ckpt} was trained on other data ({net.meta['data']['name']}); its subnets may be poor here")
        budgets, luts = _budgets(net.space, targets, opts.lut_dir)
    else:
        name = opts.space or "mbv3"
        fresh = create_space(name, space_class(name).default_config(data.input_shape, data.num_classes))
        budgets, luts = _budgets(fresh, targets, opts.lut_dir)
        n = len(data["train"])
        cfg = TrainConfig(epochs=opts.epochs or default_epochs(n), batch_size=default_batch_size(n), seed=opts.seed)
        net = train_supernet(data, out, cfg, name, log=log, world=init_world())
        ckpt = out / CHECKPOINT
    space = net.space
    t_train = time.time()

    evaluator = Evaluator(net, data)
    key = sha256_json(
        {
            "supernet": sha256_file(ckpt),
            "data": data.digest,
            "budgets": [(name, b.limit, b.unit) for name, b in budgets],
            "luts": {name: lut.digest for name, (_, lut) in luts.items()},
            "reward": asdict(reward),
            "search": asdict(opts.search),
            "seed": opts.seed,
        }
    )
    cache_path = out / "search.json"
    try:
        cached = read_json(cache_path, "search cache") if cache_path.is_file() else None
    except RegnasError as exc:
        log(f"search: ignoring unreadable cache ({exc})")
        cached = None
    if isinstance(cached, dict) and cached.get("key") == key:
        log(f"search: reusing {cache_path}")
        family = [Member.from_json(space, m) for m in cached["family"]]
        baseline = [Member.from_json(space, m) for m in cached["baseline"]]
    else:
        if opts.workers > 1 or opts.ray_address is not None:
            from regnas.parallel import RayPool

            evaluator.pool = RayPool(evaluator, opts.workers, opts.ray_address)
            log(f"search: evaluating candidates on {evaluator.pool.workers} Ray workers")
        try:
            family = search_family(evaluator, budgets, reward, opts.search, opts.seed, log=log)
            baseline = search_baseline(evaluator, budgets, opts.search, opts.seed, log=log)
        finally:
            if evaluator.pool is not None:
                evaluator.pool.close()
                evaluator.pool = None
        members = {"family": family, "baseline": baseline}
        write_json(cache_path, {"key": key, **{k: [m.to_json(space) for m in ms] for k, ms in members.items()}})
    t_search = time.time()

    report: dict[str, Any] = {"format": "regnas-report/1"}
    fam = assess(evaluator, family)
    report.update(fam.section)
    report["baseline"] = assess(evaluator, baseline).section
    _latency(report["family"], family, space, luts)
    _latency(report["baseline"]["family"], baseline, space, luts)
    report["luts"] = {name: {"path": str(p), "provenance": lut.provenance, "validation": lut.validation} for name, (p, lut) in luts.items()}
    for m, n in zip(family, fam.nets):
        write_json(out / m.target / "arch.json", {"space": space.name, "config": space.config, "arch": space.to_json(m.arch)})
        save_tensors(out / m.target / "model.safetensors", n.state_dict(), {"space": space.name, "target": m.target})
    order = [name for name, _ in budgets]
    ordered = sorted(targets, key=lambda t: order.index(t.name))
    report["targets"] = [t.to_json() for t in ordered]
    report["config"] = {
        "data": {
            "spec": opts.data,
            "name": data.name,
            "digest": data.digest,
            "input_shape": list(data.input_shape),
            "class_names": data.class_names,
            "splits": {s: len(data[s]) for s in data.splits},
        },
        "space": space.name,
        "supernet": str(ckpt),
        "seed": opts.seed,
        "reward": asdict(reward),
        "search": asdict(opts.search),
        "train": net.meta.get("train"),
    }
    report["search"] = {
        kind: {m.target: [list(c) for c in m.candidates] for m in members} for kind, members in (("family", family), ("baseline", baseline))
    }
    t_export = time.time()
    if opts.export:
        artifacts = export_family(out, ordered, data, log=log)
        t_export = time.time()
        result = check(out, artifacts, ordered, data, opts.remote, log=log)
        report["artifacts"] = [a.to_json() for a in result.artifacts]
        report["check"] = result.section()
    report["timing_s"] = {
        "train": t_train - t0,
        "search": t_search - t_train,
        **({"export": t_export - t_search, "check": time.time() - t_export} if opts.export else {}),
        "total": time.time() - t0,
    }
    write_json(out / "report.json", report)
    write_reports(out, report)
    return report

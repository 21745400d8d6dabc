"""`regnas build`: data → supernet → family and baseline search → extracted models → report.json.

The build directory is a cache. Training checkpoints every epoch and resumes; the search result is
stored with a hash of everything it depends on (supernet weights, data, budgets, reward, search
settings, seed) and reused only when that hash matches. report.json is written last, atomically.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from regnas.data import load_dataset
from regnas.errors import RegnasError
from regnas.evaluate import Evaluator
from regnas.family import Member, assess, search_baseline, search_family
from regnas.io import read_json, save_tensors, sha256_file, sha256_json, write_json
from regnas.report import write_reports
from regnas.search import SearchConfig, parse_reward
from regnas.spaces import SearchSpace, create_space, space_class
from regnas.targets import Target, resolve_targets
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


def _budgets(space: SearchSpace, targets: list[Target]) -> list[tuple[str, int]]:
    """(target, FLOP budget) in budget order; a budget below the smallest subnet is bad input."""
    largest, smallest = space.flops(space.largest()), space.flops(space.smallest())
    budgets = sorted(((t.name, t.budget_flops(largest)) for t in targets), key=lambda b: b[1])
    for name, b in budgets:
        if b < smallest:
            raise RegnasError(
                f"target {name}: budget {b:,} FLOPs is below the smallest {space.name} subnet ({smallest:,}); raise its budget"
            )
    return budgets


def build(opts: BuildOptions) -> dict[str, Any]:
    """Run the whole build and return the report (also written to `out/report.json`)."""
    t0 = time.time()
    reward = parse_reward(opts.reward)
    targets = resolve_targets(opts.targets)
    if opts.space is not None:
        space_class(opts.space)
    data = load_dataset(opts.data, opts.seed)
    log(f"data: {data.name} {data.input_shape} {data.num_classes} classes, " + ", ".join(f"{s} {len(data[s])}" for s in data.splits))

    out = Path(opts.out)
    if opts.supernet is not None:
        net = load_checkpoint(opts.supernet, opts.space, data)
        ckpt = Path(opts.supernet)
        if net.meta["data"]["digest"] != data.digest:
            log(f"warning: {ckpt} was trained on other data ({net.meta['data']['name']}); its subnets may be poor here")
        budgets = _budgets(net.space, targets)
    else:
        name = opts.space or "mbv3"
        budgets = _budgets(create_space(name, space_class(name).default_config(data.input_shape, data.num_classes)), targets)
        n = len(data["train"])
        cfg = TrainConfig(epochs=opts.epochs or default_epochs(n), batch_size=default_batch_size(n), seed=opts.seed)
        net = train_supernet(data, out, cfg, name, log=log)
        ckpt = out / CHECKPOINT
    space = net.space
    t_train = time.time()

    evaluator = Evaluator(net, data)
    key = sha256_json(
        {
            "supernet": sha256_file(ckpt),
            "data": data.digest,
            "budgets": budgets,
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
        family = search_family(evaluator, budgets, reward, opts.search, opts.seed, log=log)
        baseline = search_baseline(evaluator, budgets, opts.search, opts.seed, log=log)
        members = {"family": family, "baseline": baseline}
        write_json(cache_path, {"key": key, **{k: [m.to_json(space) for m in ms] for k, ms in members.items()}})
    t_search = time.time()

    report: dict[str, Any] = {"format": "regnas-report/1"}
    fam = assess(evaluator, family)
    report.update(fam.section)
    report["baseline"] = assess(evaluator, baseline).section
    for m, n in zip(family, fam.nets):
        write_json(out / m.target / "arch.json", {"space": space.name, "config": space.config, "arch": space.to_json(m.arch)})
        save_tensors(out / m.target / "model.safetensors", n.state_dict(), {"space": space.name, "target": m.target})
    report["targets"] = [t.to_json() for t in sorted(targets, key=lambda t: dict(budgets)[t.name])]
    report["config"] = {
        "data": {
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
    report["timing_s"] = {"train": t_train - t0, "search": t_search - t_train, "total": time.time() - t0}
    write_json(out / "report.json", report)
    write_reports(out, report)
    return report

"""REG-NAS family vs the independent baseline and PCT, per search space: flips between members, top-1, sharing.

For each space, seed 0 is a `regnas build` (supernet training included, or reused from `--work`);
every seed then searches, on that supernet, split and budgets, with its own search seed:
- one family per reward of the sweep (R0, R2, λ2 ∈ {2, 5, 10}, R1; nested, flips against the
  previous member), the `--reward` one being the `family` row;
- the independent baseline (R0, each target alone);
- `pct`: the baseline's models, each fine-tuned towards the one before with focal distillation
  (Yan et al., CVPR 2021), and `finetune`: the same without the distillation term (the control);
- `family_finetune`: the family after nesting-preserving focal distillation (`regnas build
  --finetune MODE`: joint, all members at once in the supernet, or own, each member on the weights
  it does not share with the one before). At the default reward and mode this is what a default
  `regnas build` ships, and what the targets are judged on.
Seed 0's family, baseline and family fine-tune are the build's own (its search cache and saved
members; the same calls with the same seed), so only PCT and the control are computed for it.
Test-split numbers only. Writes JSON, a Pareto plot (mean NFR vs mean top-1, every row) and a table.
`--keep ROW ...` copies those rows from the existing `--out` for the same space, seed and supernet
instead of recomputing them (baseline, pct and finetune depend on neither the reward nor the
fine-tune mode; family needs the same reward, family_finetune also the same mode, and sweep keeps
the other rewards' families). A kept row is only as current as the code that measured it.

    python benchmarks/nfr_family.py [--data fashion-mnist] [--spaces mbv3 resnet] [--seeds 0 1 2] [--reward 1,5]
        [--sweep [REWARD ...]] [--finetune joint|own] [--no-control]
        [--keep baseline pct finetune family family_finetune sweep] [--time-budget 45]
        [--work build/bench] [--out FILE]

Targets: family_finetune mean NFR <= 0.5 x baseline and <= 0.6 x PCT, each member's top-1 within 0.3 points of the baseline's.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr

from regnas.builddir import is_build, load_member, read_report, read_search_cache
from regnas.distill import DistillConfig
from regnas.evaluate import Evaluator, predict
from regnas.family import Member, assess, search_baseline, search_family
from regnas.finetune import FINETUNE_MODES, nested_finetune
from regnas.flips import nfr
from regnas.io import atomic_path, read_json, write_json
from regnas.logs import configure
from regnas.pct import pct_family
from regnas.report import trade_off_plot
from regnas.search import SearchConfig, parse_reward
from regnas.train import load_checkpoint
from regnas.workflow.build import DEFAULT_REWARD, BuildOptions, build
from workdirs import build_split, provenance, work_dir

PAIRS = (("B", "A"), ("C", "B"), ("C", "A"))
SWEEP = ("R0", "R2", "1,2", "1,5", "1,10", "R1")
KEEPABLE = ("baseline", "pct", "finetune", "family", "family_finetune", "sweep")
TARGET_BASELINE, TARGET_PCT, TARGET_TOP1_POINTS = 0.5, 0.6, 0.3


def pair_nfrs(preds: list[np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """NFR(B,A), NFR(C,B), NFR(C,A): the later member against the earlier one."""
    idx = {"A": 0, "B": 1, "C": 2}
    return {f"NFR({new},{old})": nfr(preds[idx[old]], preds[idx[new]], labels) for new, old in PAIRS}


def row(names: list[str], preds: list[np.ndarray], labels: np.ndarray, section: dict | None = None) -> dict:
    out = {"top1": {n: float((p == labels).mean()) for n, p in zip(names, preds)}, "nfr": pair_nfrs(preds, labels)}
    if section is not None:
        out |= {"flops": {m["target"]: m["flops"] for m in section["family"]}, "nesting": section["nesting"]}
        out["archs"] = {m["target"]: m["arch"] for m in section["family"]}
    return out


def tuned(nets, data, cfg: DistillConfig, labels: np.ndarray, names: list[str]) -> dict:
    """Top-1 and pair NFRs after (focal-distillation) fine-tuning each model towards the one before it."""
    out = pct_family(nets, data, cfg)
    return row(names, [predict(n, data["test"].x) for n in out], labels)


def weights_digest(state: dict) -> str:
    """sha256 of a supernet's weights (its state dict, or the tensors of its checkpoint): two results measured on the
    same weights share it, however long their builds took."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def same_supernet(old: dict, report: dict, digest: str, seed0_baseline: dict) -> bool:
    """Whether `old` was measured on these very weights: the same digest, or (for a result from before digests were
    kept) the same training settings and a seed-0 baseline that reproduces exactly on this supernet."""
    if "supernet_sha256" in old:
        return old["supernet_sha256"] == digest
    settings = [{k: v for k, v in t.items() if k != "time_budget_min"} for t in (old["supernet_train"], report["config"]["train"])]
    first = old["runs"][0]
    reproduced = first.get("baseline") == json.loads(json.dumps(seed0_baseline))  # as the JSON holds it: lists, not tuples
    return settings[0] == settings[1] and first["seed"] == report["config"]["seed"] and reproduced


def kept_rows(old: dict | None, report: dict, pct: DistillConfig, args: argparse.Namespace, same: bool) -> dict[int, dict]:
    """Per seed, the `--keep` rows of an earlier result on the same supernet and settings (nothing when it differs).

    `family` (the searched family) needs the same reward; `family_finetune` also the same fine-tune mode and
    settings, and the family kept with it; `sweep` keeps every other reward's family row. `ensemble` weighs
    only the joint fine-tune, so the baseline, PCT and control rows do not depend on it.
    """
    if not args.keep or old is None:
        return {}
    rows = set(args.keep)
    settings = asdict(pct)
    earlier = dict(old["pct"])
    if "family_finetune" not in rows:
        settings.pop("ensemble")
        earlier.pop("ensemble", None)
    if not same or earlier != settings:
        sys.exit("--keep: the earlier result was measured on another supernet or fine-tune settings; drop --keep")
    if rows & {"family", "family_finetune"} and old["reward"] != args.reward:
        sys.exit(f"--keep family: the earlier family was searched at {old['reward']}; drop it")
    if rows & {"family", "family_finetune", "sweep"} and old.get("search") != report["config"]["search"]:
        sys.exit("--keep family/sweep: the earlier families were searched with other search settings; drop them")
    if "family_finetune" in rows and ("family" not in rows or old["finetune_mode"] != args.finetune):
        sys.exit(f"--keep family_finetune: needs --keep family and the same mode (the earlier one: {old['finetune_mode']})")

    def wanted(row: str) -> bool:
        return row in rows or ("sweep" in rows and row.startswith("family_") and row != "family_finetune")

    return {r["seed"]: {k: v for k, v in r.items() if wanted(k)} for r in old["runs"]}


def built_finetune(report: dict, space, archs: list, cfg: DistillConfig, mode: str) -> bool:
    """Whether the seed-0 build already fine-tuned these archs in this mode with these settings (its members are then the result)."""
    done = report.get("finetune", {})
    same_archs = [space.from_json(m["arch"]) for m in report["family"]] == archs
    return done.get("mode") == mode and done.get("config") == asdict(cfg) and same_archs


def bench_space(args: argparse.Namespace, space: str, old: dict | None) -> dict:
    """Every seed's rows for one search space, and their means."""
    first = args.seeds[0]
    work = work_dir(args.work, space, args.data)
    if is_build(work):  # a build made by build_speed.py / supernet_quality.py, or an earlier run
        report = read_report(work)
        if report["config"]["seed"] != first:
            sys.exit(f"{work} was built with seed {report['config']['seed']}; pass it first in --seeds, or another --work")
    else:
        opts = BuildOptions(targets=args.targets, data=args.data, out=work, seed=first, space=space, export=False)
        report = build(replace(opts, rewards=(args.reward,), time_budget=args.time_budget))
    build_seconds = report["timing_s"]["total"]
    data = build_split(work, args.data)
    net = load_checkpoint(work / "supernet.safetensors", space, data)
    evaluator = Evaluator(net, data)
    labels = evaluator.labels("test")
    budgets = [(m["target"], m["budget_flops"]) for m in report["family"]]
    names = [m["target"] for m in report["family"]]
    if set(report["config"]["search"]) != {f.name for f in fields(SearchConfig)}:
        sys.exit(f"{work} was searched by another regnas (other search settings); rebuild it, or pass another --work")
    cfg = SearchConfig(**report["config"]["search"])
    pct = DistillConfig(epochs=args.pct_epochs).settled(net.meta["train"].get("augment"))
    rewards = {name: parse_reward(name) for name in dict.fromkeys((args.reward, *args.sweep))}
    built_with = report["config"]["reward"]
    cache = read_search_cache(work)
    digest = weights_digest(net.model.state_dict())
    kept = {}
    if args.keep and old is not None:
        built_baseline = assess(evaluator, [Member.from_json(net.space, m) for m in cache["baseline"]])
        same = same_supernet(old, report, digest, row(names, built_baseline.preds, labels, built_baseline.section))
        kept = kept_rows(old, report, pct, args, same)

    runs = []
    for seed in args.seeds:
        t = time.time()
        run: dict = {"seed": seed, **kept.get(seed, {})}
        # the build searched the baseline with the first seed and these settings
        baseline = [Member.from_json(net.space, m) for m in cache["baseline"]] if seed == first else None
        for name, reward in rewards.items():
            key = "family" if name == args.reward else f"family_{name}"
            if key in run:
                continue
            if seed == first and asdict(reward) == built_with:
                members = [Member.from_json(net.space, m) for m in cache["family"]]
            else:
                baseline = baseline or search_baseline(evaluator, budgets, cfg, seed)
                members = search_family(evaluator, budgets, reward, cfg, seed, anchors=baseline)
            fam = assess(evaluator, members)
            run[key] = row(names, fam.preds, labels, fam.section)
        if "family_finetune" not in run:
            archs = [net.space.from_json(run["family"]["archs"][n]) for n in names]
            if seed == first and built_finetune(report, net.space, archs, replace(pct, seed=seed), args.finetune):
                nets = [load_member(work / n)[1] for n in names]  # the build ran this very fine-tune (deterministic)
            else:
                nets = nested_finetune(net, archs, data, replace(pct, seed=seed), args.finetune)
            run["family_finetune"] = row(names, [predict(n, data["test"].x) for n in nets], labels)
        if not {"baseline", "pct", *(() if args.no_control else ("finetune",))} <= run.keys():
            base = assess(evaluator, baseline or search_baseline(evaluator, budgets, cfg, seed))
            if "baseline" not in run:
                run["baseline"] = row(names, base.preds, labels, base.section)
            if "pct" not in run:
                run["pct"] = tuned(base.nets, data, replace(pct, seed=seed), labels, names)
            if "finetune" not in run and not args.no_control:
                run["finetune"] = tuned(base.nets, data, replace(pct, seed=seed, weight=0.0), labels, names)
        run["seconds"] = time.time() - t
        runs.append(run)
        print(f"{space}: seed {seed} done in {run['seconds']:.0f}s", file=sys.stderr)

    kinds = [k for k in runs[0] if k not in ("seed", "seconds")]
    summary = {}
    for kind in kinds:
        nfrs = {k: float(np.mean([r[kind]["nfr"][k] for r in runs])) for k in runs[0][kind]["nfr"]}
        top1 = {n: float(np.mean([r[kind]["top1"][n] for r in runs])) for n in names}
        summary[kind] = {
            "top1": top1,
            "nfr": nfrs,
            "mean_nfr": float(np.mean(list(nfrs.values()))),
            "mean_top1": float(np.mean(list(top1.values()))),
        }
    base_nfr, pct_nfr = summary["baseline"]["mean_nfr"], summary["pct"]["mean_nfr"]
    ratio = {k: summary[k]["mean_nfr"] / base_nfr if base_nfr else float("nan") for k in kinds if k != "baseline"}
    over_pct = {k: summary[k]["mean_nfr"] / pct_nfr if pct_nfr else float("nan") for k in ("family", "family_finetune")}
    top1_delta = {
        k: {n: 100 * (summary[k]["top1"][n] - summary["baseline"]["top1"][n]) for n in names} for k in ("family", "family_finetune")
    }

    # How NFR tracks sharing: every consecutive pair of every run, family and baseline alike.
    points = [
        (p["shared_weight_fraction"], r[kind]["nfr"]["NFR(B,A)" if i == 0 else "NFR(C,B)"], kind)
        for r in runs
        for kind in ("family", "baseline")
        for i, p in enumerate(r[kind]["nesting"])
    ]
    shares, flips = [p[0] for p in points], [p[1] for p in points]
    correlation = {
        "pairs": [{"shared_weight_fraction": s, "nfr": f, "kind": k} for s, f, k in points],
        "spearman": float(spearmanr(shares, flips).statistic) if len(set(shares)) > 1 else None,
        "pearson": float(pearsonr(shares, flips).statistic) if len(set(shares)) > 1 else None,
    }

    def meets(kind: str) -> bool:
        return (
            ratio[kind] <= TARGET_BASELINE
            and over_pct[kind] <= TARGET_PCT
            and all(d >= -TARGET_TOP1_POINTS for d in top1_delta[kind].values())
        )

    return {
        "space": space,
        "targets": names,
        "reward": args.reward,
        "finetune_mode": args.finetune,
        "kept_rows": sorted(args.keep) if kept else [],
        "build_seconds": build_seconds,
        "supernet_sha256": digest,
        "supernet_train": report["config"]["train"],
        "search": asdict(cfg),
        "pct": asdict(pct),
        "runs": runs,
        "summary": summary,
        "nfr_over_baseline": ratio,
        "nfr_over_pct": over_pct,
        "relative_nfr_reduction": 1 - ratio["family"],
        "top1_delta_points": top1_delta["family"],
        "finetune_top1_delta_points": top1_delta["family_finetune"],
        "nfr_vs_shared_weight": correlation,
        "met": {"family": meets("family"), "family_finetune": meets("family_finetune")},
    }


def print_space(res: dict) -> None:
    names, summary = res["targets"], res["summary"]
    print(f"== {res['space']} (default reward {res['reward']}) ==")
    print(
        f"{'':18} "
        + " ".join(f"{'top1 ' + n:>12}" for n in names)
        + " "
        + " ".join(f"{k:>10}" for k in summary["family"]["nfr"])
        + "  mean NFR"
    )
    for kind, s in summary.items():
        cells = " ".join(f"{100 * s['top1'][n]:11.2f}%" for n in names) + " " + " ".join(f"{100 * v:9.2f}%" for v in s["nfr"].values())
        print(f"{kind:18} {cells} {100 * s['mean_nfr']:8.2f}%")
    r, p = res["nfr_over_baseline"], res["nfr_over_pct"]
    print(
        f"mean NFR / baseline: family {r['family']:.3f}, family_finetune {r['family_finetune']:.3f}, pct {r['pct']:.3f}; "
        f"/ PCT: family {p['family']:.3f}, family_finetune {p['family_finetune']:.3f}"
    )
    print("family top-1 delta vs baseline (points): " + ", ".join(f"{n} {d:+.2f}" for n, d in res["top1_delta_points"].items()))
    c = res["nfr_vs_shared_weight"]
    print(f"NFR vs shared-weight fraction over {len(c['pairs'])} pairs: spearman {c['spearman']}, pearson {c['pearson']}")
    print(f"targets (<= {TARGET_BASELINE} x baseline, <= {TARGET_PCT} x PCT, top-1 within {TARGET_TOP1_POINTS}): {res['met']}")


def save_plot(spaces: dict, path: Path) -> None:
    """Every row of every space as a point of the trade-off, one PNG per space stacked in one file."""
    from PIL import Image

    images = []
    for space, res in spaces.items():
        points = [{"reward": kind, **res["summary"][kind]} for kind in res["summary"]]
        uri = trade_off_plot(points, f"{space}: mean NFR vs mean top-1 ({len(res['runs'])} seeds, test)")
        images.append(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))
    canvas = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), "white")
    y = 0
    for img in images:
        canvas.paste(img, (0, y))
        y += img.height
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--spaces", nargs="+", default=["mbv3", "resnet"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--reward", default=DEFAULT_REWARD, help=f"the family's reward, the `family` row (default: the build's, {DEFAULT_REWARD})"
    )
    ap.add_argument(
        "--sweep",
        nargs="*",
        default=list(SWEEP),
        help=f"rewards of the trade-off sweep (default: {' '.join(SWEEP)}; none: the default reward alone)",
    )
    ap.add_argument("--finetune", default="joint", choices=list(FINETUNE_MODES), help="the family_finetune row's mode (default: joint)")
    ap.add_argument("--keep", nargs="*", default=[], choices=KEEPABLE, help="rows copied from the existing --out (same supernet)")
    ap.add_argument("--no-control", action="store_true", help="skip the plain fine-tune row (the control for PCT; not in the targets)")
    ap.add_argument("--targets", default="phone,edge,server")
    ap.add_argument("--time-budget", type=float, default=45.0, help="minutes for the seed-0 build (default: 45)")
    ap.add_argument("--pct-epochs", type=int, default=DistillConfig.epochs)
    ap.add_argument("--work", type=Path, default=Path("build/bench"), help="build directories (WORK/<space>-<data>), reused when present")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/nfr_family.json"))
    args = ap.parse_args()
    configure()

    old = read_json(args.out) if args.out.is_file() else {}
    spaces = {k: v for k, v in old.get("spaces", {}).items() if old.get("data") == args.data and k not in args.spaces}
    stale = [k for k, v in spaces.items() if any("mean_top1" not in row for row in v["summary"].values())]
    if stale:
        rerun = " ".join(stale)
        print(f"dropping {', '.join(stale)} from {args.out}: an older version's format; re-run with --spaces {rerun}", file=sys.stderr)
        spaces = {k: v for k, v in spaces.items() if k not in stale}
    for space in args.spaces:
        earlier = old.get("spaces", {}).get(space) if old.get("data") == args.data else None
        spaces[space] = bench_space(args, space, earlier)
        print_space(spaces[space])
    plot = args.out.with_name(args.out.stem + "_pareto.png")
    save_plot(spaces, plot)
    result = {
        "benchmark": "nfr_family",
        "data": args.data,
        "seeds": args.seeds,
        **provenance(),
        "target": {"nfr_over_baseline_max": TARGET_BASELINE, "nfr_over_pct_max": TARGET_PCT, "top1_drop_max_points": TARGET_TOP1_POINTS},
        "spaces": spaces,
        "plot": plot.name,
        "met": all(r["met"]["family_finetune"] for r in spaces.values()),
    }
    write_json(args.out, result)
    print(f"wrote {args.out} and {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

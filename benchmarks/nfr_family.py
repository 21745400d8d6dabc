"""REG-NAS family vs the independent baseline and PCT, per search space: flips between members, top-1, sharing.

For each space, seed 0 is a full, timed `regnas build` (supernet training included); further seeds
repeat the family (R2, nested) and baseline (R0, each target alone) searches with their own search
seed on the same supernet, splits and budgets. Two rows start from the baseline's models: `pct`
fine-tunes each larger member against the one before it with focal distillation (Yan et al., CVPR
2021), and `finetune` is the same fine-tune without the distillation term, the control that shows
what PCT's loss adds. Test-split numbers only. Writes JSON and prints a table.

    python benchmarks/nfr_family.py [--data fashion-mnist] [--spaces mbv3 resnet vit] [--seeds 0 1 2] [--work DIR] [--out FILE]

Target: family NFR <= 0.5 x baseline NFR, with each member's top-1 within 0.3 points.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr

from regnas.build import BuildOptions, build
from regnas.data import load_dataset
from regnas.evaluate import Evaluator, predict
from regnas.family import Member, assess, search_baseline, search_family
from regnas.flips import nfr
from regnas.io import read_json, write_json
from regnas.pct import PCTConfig, pct_family
from regnas.search import PRESETS, SearchConfig
from regnas.spaces import space_names
from regnas.train import load_checkpoint

PAIRS = (("B", "A"), ("C", "B"), ("C", "A"))


def pair_nfrs(preds: list[np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """NFR(B,A), NFR(C,B), NFR(C,A): the later member against the earlier one."""
    idx = {"A": 0, "B": 1, "C": 2}
    return {f"NFR({new},{old})": nfr(preds[idx[old]], preds[idx[new]], labels) for new, old in PAIRS}


def run_seed(section: dict, preds: list[np.ndarray], labels: np.ndarray) -> dict:
    return {
        "top1": {m["target"]: m["top1"] for m in section["family"]},
        "flops": {m["target"]: m["flops"] for m in section["family"]},
        "nfr": pair_nfrs(preds, labels),
        "nesting": section["nesting"],
        "archs": {m["target"]: m["arch"] for m in section["family"]},
    }


def finetuned(base, data, cfg: PCTConfig, labels: np.ndarray) -> dict:
    """Top-1 and pair NFRs of the baseline's models after (focal-distillation) fine-tuning."""
    nets = pct_family(base.nets, data, cfg, log=lambda m: print(m, file=sys.stderr))
    preds = [predict(n, data["test"].x) for n in nets]
    names = [m["target"] for m in base.section["family"]]
    return {"top1": {n: float((p == labels).mean()) for n, p in zip(names, preds)}, "nfr": pair_nfrs(preds, labels)}


KINDS = ("family", "baseline", "pct", "finetune")


def bench_space(args: argparse.Namespace, space: str) -> dict:
    """Every seed's family, baseline, PCT and fine-tune rows for one search space, and their means."""
    first = args.seeds[0]
    work = args.work / space
    t0 = time.time()
    report = build(BuildOptions(targets=args.targets, data=args.data, out=work, seed=first, space=space, export=False))
    build_seconds = time.time() - t0
    data = load_dataset(args.data, first)
    net = load_checkpoint(work / "supernet.safetensors", space, data)
    evaluator = Evaluator(net, data)
    labels = evaluator.labels("test")
    budgets = [(m["target"], m["budget_flops"]) for m in report["family"]]
    cfg = SearchConfig(**report["config"]["search"])
    pct = PCTConfig(epochs=args.pct_epochs)

    runs = []
    for seed in args.seeds:
        t = time.time()
        if seed == first:
            cached = read_json(work / "search.json")
            fam = assess(evaluator, [Member.from_json(net.space, m) for m in cached["family"]])
            base = assess(evaluator, [Member.from_json(net.space, m) for m in cached["baseline"]])
        else:
            fam = assess(evaluator, search_family(evaluator, budgets, PRESETS["R2"], cfg, seed, log=lambda m: print(m, file=sys.stderr)))
            base = assess(evaluator, search_baseline(evaluator, budgets, cfg, seed, log=lambda m: print(m, file=sys.stderr)))
        runs.append(
            {
                "seed": seed,
                "family": run_seed(fam.section, fam.preds, labels),
                "baseline": run_seed(base.section, base.preds, labels),
                "pct": finetuned(base, data, replace(pct, seed=seed), labels),
                "finetune": finetuned(base, data, replace(pct, seed=seed, weight=0.0), labels),
                "seconds": time.time() - t,
            }
        )
        print(f"{space}: seed {seed} done in {time.time() - t:.0f}s", file=sys.stderr)

    def mean(kind: str, key: str, name: str) -> float:
        return float(np.mean([r[kind][key][name] for r in runs]))

    names = [m["target"] for m in report["family"]]
    summary = {}
    for kind in KINDS:
        nfrs = {k: mean(kind, "nfr", k) for k in runs[0][kind]["nfr"]}
        summary[kind] = {"top1": {n: mean(kind, "top1", n) for n in names}, "nfr": nfrs, "mean_nfr": float(np.mean(list(nfrs.values())))}
    base_nfr = summary["baseline"]["mean_nfr"]
    ratio = {k: summary[k]["mean_nfr"] / base_nfr if base_nfr else float("nan") for k in ("family", "pct", "finetune")}
    top1_delta = {n: 100 * (summary["family"]["top1"][n] - summary["baseline"]["top1"][n]) for n in names}

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
    return {
        "space": space,
        "targets": names,
        "build_seconds": build_seconds,
        "supernet_train": report["config"]["train"],
        "pct": asdict(pct),
        "runs": runs,
        "summary": summary,
        "nfr_over_baseline": ratio,
        "family_over_baseline_nfr": ratio["family"],
        "relative_nfr_reduction": 1 - ratio["family"],
        "top1_delta_points": top1_delta,
        "nfr_vs_shared_weight": correlation,
        "met": bool(ratio["family"] <= 0.5 and all(d >= -0.3 for d in top1_delta.values())),
    }


def print_space(res: dict) -> None:
    names, summary = res["targets"], res["summary"]
    print(f"== {res['space']} ==")
    print(f"{'':9} " + " ".join(f"{'top1 ' + n:>12}" for n in names) + " " + " ".join(f"{k:>10}" for k in summary["family"]["nfr"]))
    for kind in KINDS:
        s = summary[kind]
        print(
            f"{kind:9} "
            + " ".join(f"{100 * s['top1'][n]:11.2f}%" for n in names)
            + " "
            + " ".join(f"{100 * v:9.2f}%" for v in s["nfr"].values())
        )
    r = res["nfr_over_baseline"]
    print(
        f"mean NFR / baseline: family {r['family']:.3f}, pct {r['pct']:.3f}, finetune {r['finetune']:.3f}; family top-1 delta (points): "
        + ", ".join(f"{n} {d:+.2f}" for n, d in res["top1_delta_points"].items())
    )
    c = res["nfr_vs_shared_weight"]
    print(f"NFR vs shared-weight fraction over {len(c['pairs'])} pairs: spearman {c['spearman']}, pearson {c['pearson']}")
    met = "met" if res["met"] else "NOT met"
    print(f"target (ratio <= 0.5, top-1 within 0.3 points): {met}; build took {res['build_seconds'] / 60:.1f} min")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--spaces", nargs="+", default=space_names())
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--targets", default="phone,edge,server")
    ap.add_argument("--pct-epochs", type=int, default=PCTConfig.epochs)
    ap.add_argument("--work", type=Path, default=Path("build/bench-nfr"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/nfr_family.json"))
    args = ap.parse_args()

    spaces = {}
    for space in args.spaces:
        spaces[space] = bench_space(args, space)
        print_space(spaces[space])
    result = {
        "benchmark": "nfr_family",
        "data": args.data,
        "seeds": args.seeds,
        "host": {"machine": platform.machine(), "processor": platform.processor(), "python": platform.python_version()},
        "target": {"nfr_ratio_max": 0.5, "top1_drop_max_points": 0.3},
        "spaces": spaces,
        "met": all(r["met"] for r in spaces.values()),
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

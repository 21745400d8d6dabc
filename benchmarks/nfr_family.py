"""REG-NAS family vs the independent baseline: negative flips between members, top-1, sharing.

Seed 0 is a full, timed `regnas build` (supernet training included); further seeds repeat the
family (R2, nested) and baseline (R0, each target alone) searches with their own search seed on
the same supernet, splits and budgets. Test-split numbers only. Writes JSON and prints a table.

    python benchmarks/nfr_family.py [--data fashion-mnist] [--seeds 0 1 2] [--work DIR] [--out FILE]

Target: family NFR <= 0.5 x baseline NFR, with each member's top-1 within 0.3 points.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr

from regnas.build import BuildOptions, build
from regnas.data import load_dataset
from regnas.evaluate import Evaluator
from regnas.family import Member, assess, search_baseline, search_family
from regnas.flips import nfr
from regnas.io import read_json, write_json
from regnas.search import PRESETS, SearchConfig
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--targets", default="phone,edge,server")
    ap.add_argument("--work", type=Path, default=Path("build/bench-nfr"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/nfr_family.json"))
    args = ap.parse_args()

    first, *rest = args.seeds
    t0 = time.time()
    report = build(BuildOptions(targets=args.targets, data=args.data, out=args.work, seed=first))
    build_seconds = time.time() - t0
    data = load_dataset(args.data, first)
    net = load_checkpoint(args.work / "supernet.safetensors", None, data)
    evaluator = Evaluator(net, data)
    labels = evaluator.labels("test")
    budgets = [(m["target"], m["budget_flops"]) for m in report["family"]]
    cfg = SearchConfig(**report["config"]["search"])

    runs = []
    for seed in args.seeds:
        t = time.time()
        if seed == first:
            cached = read_json(args.work / "search.json")
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
                "seconds": time.time() - t,
            }
        )
        print(f"seed {seed} done in {time.time() - t:.0f}s", file=sys.stderr)

    def mean(kind: str, key: str, name: str) -> float:
        return float(np.mean([r[kind][key][name] for r in runs]))

    names = [m["target"] for m in report["family"]]
    summary = {"family": {}, "baseline": {}}
    for kind in summary:
        summary[kind]["top1"] = {n: mean(kind, "top1", n) for n in names}
        summary[kind]["nfr"] = {k: mean(kind, "nfr", k) for k in runs[0][kind]["nfr"]}
        summary[kind]["mean_nfr"] = float(np.mean(list(summary[kind]["nfr"].values())))
    ratio = summary["family"]["mean_nfr"] / summary["baseline"]["mean_nfr"] if summary["baseline"]["mean_nfr"] else float("nan")
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
    result = {
        "benchmark": "nfr_family",
        "data": args.data,
        "targets": names,
        "seeds": args.seeds,
        "host": {"machine": platform.machine(), "processor": platform.processor(), "python": platform.python_version()},
        "build_seconds": build_seconds,
        "supernet_train": report["config"]["train"],
        "runs": runs,
        "summary": summary,
        "family_over_baseline_nfr": ratio,
        "relative_nfr_reduction": 1 - ratio,
        "top1_delta_points": top1_delta,
        "nfr_vs_shared_weight": correlation,
        "target": {"nfr_ratio_max": 0.5, "top1_drop_max_points": 0.3},
        "met": bool(ratio <= 0.5 and all(d >= -0.3 for d in top1_delta.values())),
    }
    write_json(args.out, result)

    print(f"{'':9} " + " ".join(f"{'top1 ' + n:>12}" for n in names) + " " + " ".join(f"{k:>10}" for k in summary["family"]["nfr"]))
    for kind in ("family", "baseline"):
        s = summary[kind]
        print(
            f"{kind:9} "
            + " ".join(f"{100 * s['top1'][n]:11.2f}%" for n in names)
            + " "
            + " ".join(f"{100 * v:9.2f}%" for v in s["nfr"].values())
        )
    print(
        f"family/baseline mean NFR = {ratio:.3f} (reduction {100 * (1 - ratio):.1f}%); top-1 delta (points): "
        + ", ".join(f"{n} {d:+.2f}" for n, d in top1_delta.items())
    )
    print(f"NFR vs shared-weight fraction over {len(points)} pairs: spearman {correlation['spearman']}, pearson {correlation['pearson']}")
    print(
        f"target (ratio <= 0.5, top-1 within 0.3 points): {'met' if result['met'] else 'NOT met'}; build took {build_seconds / 60:.1f} min"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Upgrades without regressions: a new family built against the deployed one, beside the same build without `--deployed`.

    python benchmarks/upgrade.py [--data fashion-mnist] [--supernet build/bench/resnet-fashion-mnist/supernet.safetensors]
                                 [--seeds 0 1 2] [--old-epochs 3] [--work build/bench] [--out FILE]

The deployed family is an older model: a build on 60% of the new build's training images (its own
split of them: none of the new build's val or test images), with `--old-epochs` epochs. The new
family is built on all the data, from `--supernet` when given (a supernet trained on the new split,
e.g. `build_speed.py`'s) and otherwise trained, once per search seed with `--deployed` (every
target's old member) and once without, without exports. Per seed and member it records, on the new
build's test split, the NFR against the deployed member (with its exact 95% interval and flips),
top-1, and the family's own mean NFR. Keys: `nfr_vs_deployed_ratio` (mean over seeds and members of
NFR with, over the same without), `worst_top1_delta_points` (the worst member's top-1 with minus
without, over seeds), `internal_nfr` with and without. Targets: the ratio ≤ 0.5 at a top-1 delta
within 0.3 points, internal NFR no worse than without (within the seeds' spread).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from regnas.builddir import load_member, open_build, read_report, write_report
from regnas.data import load_dataset, load_recorded_split
from regnas.deployed import load_deployed
from regnas.evaluate import predict
from regnas.io import read_json, write_json
from regnas.train import checkpoint_header
from workdirs import data_label, provenance

OLD_SHARE = 0.6
TARGETS = "phone,edge,server"


def _regnas(*args: str) -> float:
    """Run `regnas` in a fresh process; its wall time (an exit other than 0 or 1 stops the benchmark)."""
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "regnas", *args], capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        sys.exit(f"regnas {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1]}")
    return time.time() - t0


def _old_data(data: str, supernet: Path | None, seed: int, path: Path) -> int:
    """60% of the new build's training images (never its val or test) as an .npz; how many."""
    if supernet is not None:
        split = checkpoint_header(supernet)["split"]
        new = load_recorded_split(data, split, str(supernet))
    else:
        new = load_dataset(data, seed)
    train = new["train"]
    keep = np.sort(np.random.default_rng(seed).permutation(len(train))[: int(OLD_SHARE * len(train))])
    x = train.x.numpy()[keep]
    np.savez(path, x=x[:, 0] if x.shape[1] == 1 else x.transpose(0, 2, 3, 1), y=train.y.numpy()[keep])
    return len(keep)


def _members(report: dict) -> dict[str, dict]:
    return {m["target"]: m for m in report["family"]}


def _mean_internal(report: dict) -> float:
    return float(np.mean([m["nfr_vs_prev"] for m in report["family"][1:]]))


def _seed_row(seed: int, with_: dict, without: dict, seconds: dict) -> dict:
    """One seed's raw numbers: per member its NFR against the deployed member with and without `--deployed`, and top-1."""
    rows = []
    plain = {m["target"]: m for m in without["family"]}
    for m in with_["family"]:
        w, o = m["vs_deployed"], plain[m["target"]]["vs_deployed"]
        rows.append(
            {
                "target": m["target"],
                "nfr_with": w["nfr"],
                "nfr_with_interval": w["nfr_interval"],
                "flips_with": w["flips"],
                "positive_flips_with": w["positive_flips"],
                "nfr_without": o["nfr"],
                "flips_without": o["flips"],
                "nfr_without_interval": o["nfr_interval"],
                "positive_flips_without": o["positive_flips"],
                "top1_with": m["top1"],
                "top1_without": plain[m["target"]]["top1"],
                "top1_deployed": w["top1_deployed"],
                "n": w["n"],
            }
        )
    return {
        "seed": seed,
        "members": rows,
        "internal_nfr_with": _mean_internal(with_),
        "internal_nfr_without": _mean_internal(without),
        "seconds": seconds,
    }


def _compare(without_dir: Path, with_dir: Path) -> None:
    """Give the build without `--deployed` each member's numbers against the deployed models the other build kept (on the
    same test split: both builds share the supernet, whose split they use)."""
    build, report = open_build(without_dir), read_report(without_dir)
    kept = {m["target"]: with_dir / m["kept"] for m in read_report(with_dir)["deployed"]["members"]}
    deployed = load_deployed(kept, build.data)
    test = build.data["test"]
    for m in report["family"]:
        _, net = load_member(without_dir / m["target"])
        m["vs_deployed"] = deployed[m["target"]].versus(predict(net, test.x), test.y.numpy())
    write_report(without_dir, report)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--supernet", type=Path, default=None, help="the new builds' supernet (default: trained by the first new build)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--old-epochs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("build/bench"))
    ap.add_argument("--out", type=Path, default=None, help="default: results/upgrade.json for fashion-mnist, else upgrade_<data>.json")
    args = ap.parse_args()
    label = data_label(args.data)
    if args.out is None:  # one file per data set, so a run on other data never replaces Fashion-MNIST's seeds
        args.out = Path(__file__).parent / "results" / ("upgrade.json" if label == "fashion-mnist" else f"upgrade_{label}.json")
    work = args.work / f"upgrade-{label}"
    work.mkdir(parents=True, exist_ok=True)
    old_npz, old_dir = work / "old-data.npz", work / "old"
    n_old = _old_data(args.data, args.supernet, 0, old_npz)
    if not (old_dir / "report.json").is_file():
        old_args = ["--data", str(old_npz), "--epochs", str(args.old_epochs), "--out", str(old_dir), "--no-export"]
        _regnas("build", "--targets", TARGETS, *old_args)
    old = read_report(old_dir)
    result = read_json(args.out) if args.out.is_file() else {}
    seeds = [s for s in result.get("seeds_raw", []) if s["seed"] not in args.seeds and result.get("data") == label]
    supernet = args.supernet
    for seed in args.seeds:
        with_dir, without_dir = work / f"new-with-seed{seed}", work / f"new-without-seed{seed}"
        common = ["build", "--targets", TARGETS, "--data", args.data, "--seed", str(seed), "--no-export"]
        if supernet is not None:
            common += ["--supernet", str(supernet)]
        deployed = [a for t in TARGETS.split(",") for a in ("--deployed", f"{t}={old_dir / t}")]
        seconds = {"with": _regnas(*common, "--out", str(with_dir), *deployed)}
        if supernet is None:
            supernet = with_dir / "supernet.safetensors"
            common += ["--supernet", str(supernet)]
        seconds["without"] = _regnas(*common, "--out", str(without_dir))
        _compare(without_dir, with_dir)
        seeds.append(_seed_row(seed, read_report(with_dir), read_report(without_dir), seconds))
        _write(args, label, seeds, old, n_old)
    return 0


def _write(args: argparse.Namespace, label: str, seeds: list[dict], old: dict, n_old: int) -> None:
    members = [m for s in seeds for m in s["members"]]
    with_, without = np.mean([m["nfr_with"] for m in members]), np.mean([m["nfr_without"] for m in members])
    result = {
        "benchmark": "upgrade",
        "data": label,
        "seeds": [s["seed"] for s in seeds],
        "old_training_images": n_old,
        "old_epochs": args.old_epochs,
        "old_top1": {m["target"]: m["top1"] for m in old["family"]},
        "nfr_vs_deployed_ratio": float(with_ / without) if without else None,
        "nfr_vs_deployed_with": float(with_),
        "nfr_vs_deployed_without": float(without),
        "worst_top1_delta_points": float(min(100 * (m["top1_with"] - m["top1_without"]) for m in members)),
        "internal_nfr_with": [s["internal_nfr_with"] for s in seeds],
        "internal_nfr_without": [s["internal_nfr_without"] for s in seeds],
        "seeds_raw": seeds,
        **provenance(),
    }
    write_json(args.out, result)
    print(f"{'seed':>4} {'target':8} {'NFR with':>9} {'without':>9} {'top-1 with':>11} {'without':>9}")
    for s in seeds:
        for m in s["members"]:
            print(
                f"{s['seed']:>4} {m['target']:8} {m['nfr_with']:>9.2%} {m['nfr_without']:>9.2%} "
                f"{m['top1_with']:>11.2%} {m['top1_without']:>9.2%}"
            )
    ratio, delta = result["nfr_vs_deployed_ratio"], result["worst_top1_delta_points"]
    print(f"NFR vs deployed, with / without: {ratio}; worst top-1 delta {delta:+.2f} pts")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())

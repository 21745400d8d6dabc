"""Wall time of `regnas build --targets phone,edge,server` from scratch, exports and check included, per dataset.

    python benchmarks/build_speed.py [--data digits fashion-mnist] [--space NAME] [--work build/bench] [--out FILE] [--repeats N]

Targets (2 CPU cores): the default digits build under 3 minutes, Fashion-MNIST under 45 minutes.
Each run builds into a fresh `WORK/<space>-<data>` directory through the real command line with its
default options (the time budget plans the supernet's epochs; the space is the build's default for
the data unless `--space` names one), and leaves it there:
`supernet_quality.py`, `nfr_family.py` and `quant_flips.py` reuse those builds.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from regnas.builddir import read_report
from regnas.io import read_json, write_json
from workdirs import provenance, work_dir

LIMITS_S = {"digits": 180, "fashion-mnist": 2700}


def _timed_build(space: str | None, data: str, work: Path) -> dict:
    """One `regnas build` in a fresh process, timed from the outside, with its report's stage times."""
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.time()
    cmd = [sys.executable, "-m", "regnas", "build", "--data", data, *(["--space", space] if space else []), "--out", str(work)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.time() - t0
    if proc.returncode not in (0, 1):
        return {"error": proc.stderr, "exit": proc.returncode}
    report = read_report(work)
    return {
        "seconds": seconds,
        "space": report["config"]["space"],
        "exit": proc.returncode,
        "stages_s": report["timing_s"],
        "plan_s": report.get("plan_s"),
        "epochs": report["config"]["train"]["epochs"],
        "time_budget_min": report["config"]["train"]["time_budget_min"],
        "top1": {m["target"]: m["top1"] for m in report["family"]},
        "check": {k: report["check"][k] for k in ("passed", "failures", "inconclusive")},
    }


def _default_space(data: str) -> str:
    """The space `regnas build --data DATA` picks when none is named (it names the work folder and the JSON rows)."""
    from regnas.data import load_dataset
    from regnas.spaces import default_space

    return default_space(load_dataset(data, 0).input_shape)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["digits"])
    ap.add_argument("--space", default=None, help="search space of the builds (default: the build's default for each dataset)")
    ap.add_argument("--work", type=Path, default=Path("build/bench"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/build_speed.json"))
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="builds per dataset (stages vary between runs: a goal is met when its slowest run is)",
    )
    args = ap.parse_args()
    old = read_json(args.out) if args.out.is_file() else {}
    runs = old.get("runs", [])
    for data in args.data:
        limit = LIMITS_S.get(data)
        space = args.space or _default_space(data)
        runs = [r for r in runs if (r.get("space", "mbv3"), r["data"]) != (space, data)]
        for repeat in range(args.repeats):
            run = _timed_build(args.space, data, work_dir(args.work, space, data))
            if "error" in run:
                print(run["error"], file=sys.stderr)
                return run["exit"]
            met = None if limit is None else run["seconds"] <= limit
            runs.append({"data": data, "repeat": repeat, **run, "limit_s": limit, "met": met, "provenance": provenance()})
            print(
                f"{run['space']} {data} run {repeat + 1}/{args.repeats}: {run['seconds']:.0f}s (limit {limit}s): "
                + ", ".join(f"{k} {v:.0f}s" for k, v in run["stages_s"].items())
                + f"; {run['epochs']} epochs; top-1 "
                + ", ".join(f"{k} {100 * v:.2f}%" for k, v in run["top1"].items())
            )
    write_json(args.out, {"benchmark": "build_speed", **provenance(), "runs": runs})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

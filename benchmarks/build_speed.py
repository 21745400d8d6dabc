"""Wall time of `regnas build --targets phone,edge,server` from scratch, per dataset.

    python benchmarks/build_speed.py [--data digits fashion-mnist] [--out FILE]

Targets (2 CPU cores): digits under 3 minutes, Fashion-MNIST under 30 minutes. Each run builds
into a fresh directory through the real command line, so training and search are included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from regnas.io import write_json

LIMITS_S = {"digits": 180, "fashion-mnist": 1800}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["digits"])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/build_speed.json"))
    args = ap.parse_args()
    runs = []
    for data in args.data:
        work = Path(tempfile.mkdtemp(prefix=f"regnas-speed-{data}-"))
        t0 = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "regnas", "build", "--targets", "phone,edge,server", "--data", data, "--out", str(work)],
            capture_output=True,
            text=True,
        )
        seconds = time.time() - t0
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        report = json.loads((work / "report.json").read_text())
        stages = report["timing_s"]
        limit = LIMITS_S.get(data)
        runs.append(
            {
                "data": data,
                "seconds": seconds,
                "stages_s": stages,
                "limit_s": limit,
                "met": None if limit is None else seconds <= limit,
                "top1": {m["target"]: m["top1"] for m in report["family"]},
            }
        )
        print(f"{data}: {seconds:.0f}s (limit {limit}s) train {stages['train']:.0f}s search {stages['search']:.0f}s")
        shutil.rmtree(work)
    host = {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(), "python": platform.python_version()}
    write_json(args.out, {"benchmark": "build_speed", "host": host, "runs": runs})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Flips caused by export and quantization, per format and precision, and batch-1 latency.

    python benchmarks/quant_flips.py [--build build/bench/mbv3-fashion-mnist] [--out FILE]

Exports every member of a Fashion-MNIST build (from `benchmarks/build_speed.py`, or any build
directory) with its targets' exporters, flip-aware quantization included, checks each artifact
on the test split, and times every runnable artifact at batch 1 (1 thread) beside torch eager.
Targets: every int8 and fp16 artifact ≤ 0.2% NFR vs its fp32 model; each int8 artifact whose
per-node fallback kept units in float within 1.3× the batch-1 latency of the same artifact fully
quantized (timed side by side in its runtime during export, in a fresh process; the TensorRT-ready
QDQ model is not, as ONNX Runtime's CPU latency of it says nothing of TensorRT's); the ONNX Runtime
fp32 artifact ≤ 0.15 × torch eager latency at batch 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from regnas.artifacts import export_family, open_artifact
from regnas.builddir import ArtifactRecord, load_member, open_build
from regnas.errors import Unavailable
from regnas.io import write_json
from regnas.logs import configure
from regnas.workflow.check import CheckResult, check, save_check
from workdirs import provenance

ROUNDS = 5
"""Interleaved timing rounds per artifact and per eager member."""
MAX_NFR = 0.002
MAX_LATENCY_RATIO = 0.15
MAX_FALLBACK_SLOWDOWN = 1.3


def eager_ms(net: torch.nn.Module, shape: tuple[int, ...], warmup: int, repeats: int) -> float:
    """Median batch-1 latency of a torch module in eager mode, one thread."""
    torch.set_num_threads(1)
    x = torch.rand(1, *shape)
    with torch.no_grad():
        for _ in range(warmup):
            net(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            net(x)
            times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", type=Path, default=Path("build/bench/mbv3-fashion-mnist"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/quant_flips.json"))
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--timing-only", action="store_true", help="time the artifacts an earlier run exported and checked")
    args = ap.parse_args()
    configure()
    build = open_build(args.build)
    report, targets, data = build.report, build.targets, build.data
    if args.timing_only:
        result, export_s = CheckResult([ArtifactRecord.from_json(a) for a in report["artifacts"]], {}, [], []), None
    else:
        t0 = time.time()
        artifacts = export_family(args.build, targets, data)
        export_s = time.time() - t0
        result = check(args.build, artifacts, targets, data)
        save_check(args.build, report, result)
    shape = tuple(data.input_shape)
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    members = {t.name: load_member(args.build / t.name)[1] for t in targets}
    runtimes, rows = {}, []
    for i, a in enumerate(result.artifacts):
        row = a.to_json()
        try:
            if a.status != "ok":  # not built or not runnable here: nothing to time
                raise Unavailable(a.status)
            runtimes[i] = open_artifact(args.build, a)
        except Unavailable as exc:
            row["latency_ms_p50"], row["latency_skipped"] = None, str(exc)
        rows.append(row)
    # Interleaved rounds (median of the round medians): every artifact and eager member once per round, so a slow phase of the
    # host (one run measured the same fp32 graph at 1.10 and 0.71 ms back to back) lands on all of them.
    times: dict = {key: [] for key in [*runtimes, *members]}
    per_round = max(1, args.repeats // ROUNDS)
    for _ in range(ROUNDS):
        for i, rt in runtimes.items():
            times[i].append(float(np.median(rt.time_ms(x, args.warmup, per_round))))
        for name, net in members.items():
            times[name].append(eager_ms(net, shape, args.warmup, per_round))
    for i, row in enumerate(rows):
        if i in runtimes:
            row["latency_ms_p50"] = float(np.median(times[i]))
        row["torch_eager_ms_p50"] = float(np.median(times[row["target"]]))
    quantized = [r for r in rows if r["precision"] in ("fp16", "int8") and r["nfr_vs_fp32"] is not None]
    fallback = [r for r in rows if (r["quantization"] or {}).get("latency_ms")]
    slowdown = {r["path"]: r["quantization"]["latency_ms"]["chosen"] / r["quantization"]["latency_ms"]["fully_quantized"] for r in fallback}
    ort_fp32 = [r for r in rows if r["format"] == "onnx" and r["precision"] == "fp32" and r["latency_ms_p50"]]
    out = {
        "benchmark": "quant_flips",
        "build": str(args.build),
        "data": report["config"]["data"]["name"],
        "test_samples": len(data["test"]),
        **provenance(),
        "export_s": export_s,
        "artifacts": rows,
        "targets": {
            "max_nfr_vs_fp32": MAX_NFR,
            "worst_quantized_nfr": max((r["nfr_vs_fp32"] for r in quantized), default=None),
            "quantized_within": all(r["nfr_vs_fp32"] <= MAX_NFR for r in quantized),
            "max_fallback_slowdown": MAX_FALLBACK_SLOWDOWN,
            "fallback_slowdown": slowdown,
            "fallback_within": all(v <= MAX_FALLBACK_SLOWDOWN for v in slowdown.values()),
            "max_ort_fp32_over_eager": MAX_LATENCY_RATIO,
            "ort_fp32_over_eager": [r["latency_ms_p50"] / r["torch_eager_ms_p50"] for r in ort_fp32],
            "latency_within": all(r["latency_ms_p50"] <= MAX_LATENCY_RATIO * r["torch_eager_ms_p50"] for r in ort_fp32),
        },
    }
    write_json(args.out, out)
    print(f"{'artifact':36} {'status':10} {'top-1':>7} {'flips':>6} {'NFR/fp32 [95%]':>22} {'float':>5} {'ms':>8} {'eager ms':>9}")
    for r in rows:
        top1 = f"{100 * r['top1']:.2f}" if r["top1"] is not None else "–"
        flips = (
            f"{100 * r['nfr_vs_fp32']:.2f}% [{100 * r['nfr_interval'][0]:.2f}, {100 * r['nfr_interval'][1]:.2f}]"
            if r["flips"] is not None
            else "–"
        )
        kept = len((r["quantization"] or {}).get("kept_float", [])) if r["quantization"] else "–"
        ms = f"{r['latency_ms_p50']:.3f}" if r["latency_ms_p50"] else "–"
        print(
            f"{r['path']:36} {r['status'][:10]:10} {top1:>7} {r['flips'] if r['flips'] is not None else '–':>6} {flips:>22} "
            f"{kept:>5} {ms:>8} {r['torch_eager_ms_p50']:9.3f}"
        )
    print(f"targets: {out['targets']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Flips of a build's artifacts where they will run: on an emulated aarch64 device, and in every runtime their target names.

    python benchmarks/device_flips.py [--build build/bench/resnet-fashion-mnist] [--export] [--out FILE]

Copies a build (default: the Fashion-MNIST build of `build_speed.py`) to `<build>-device`, gives its
targets the built-in targets' `runtimes` and `arch` (builds made before those keys lack them; nothing
else changes), leaves its TVM libraries out unless `--with-libraries` (the aarch64 one, fp32, runs
under qemu far slower than the ONNX Runtime kernels: hours for 10,000 images; the digits test
checks it on the emulated device), optionally re-exports its artifacts (`--export`: flip-aware quantization over every
runtime each target names), then runs `regnas check --rpc` against `regnas device emulate` (a
Neoverse-N1 under qemu-user) and writes, per artifact and run, flips against its fp32 model with the
95% interval and verdict, disagreements with the artifact's run on this host, and the time it took.
Targets: every ARM int8 artifact within its target's `max_nfr_vs_fp32` on the device
(`worst_nfr_vs_fp32`), and every int8 ONNX artifact within it in ONNX Runtime and OpenVINO (`cross_runtime`).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import time
from pathlib import Path

from regnas.builddir import open_build, read_report, write_report
from regnas.device import emulator
from regnas.io import write_json
from regnas.logs import configure
from regnas.runtimes import Remote, runtime_class
from regnas.targets import builtin_targets
from regnas.workflow.check import check_build
from workdirs import provenance


def _retarget(out: Path, with_libraries: bool) -> tuple[list[str], list[str]]:
    """Give the build's recorded targets the built-in ones' `runtimes` and `arch`, and leave its per-architecture libraries
    out of the check unless asked; the names of the targets changed, and the artifacts left out."""
    report, builtin, changed = read_report(out), builtin_targets(), []
    left_out = [] if with_libraries else [a["path"] for a in report["artifacts"] if runtime_class(a["runtime"]).per_arch]
    report["artifacts"] = [a for a in report["artifacts"] if a["path"] not in left_out]
    for t in report["targets"]:
        ref = builtin.get(t["name"])
        if ref is None:
            continue
        extra = {k: v for k, v in ref.to_json().items() if k in ("runtimes", "arch")}
        if any(t.get(k) != v for k, v in extra.items()):
            t.update(extra)
            changed.append(t["name"])
    write_report(out, report)
    return changed, left_out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _row(art: dict, run: dict | None = None) -> dict:
    src = run or art
    keys = ("top1", "flips", "nfr_vs_fp32", "nfr_interval", "verdict", "seconds")
    where = {"runtime": src["runtime"], "device": src.get("device")}
    return {"artifact": art["path"], "target": art["target"], "precision": art["precision"], **where, **{k: src.get(k) for k in keys}}


def summarize(report: dict) -> dict:
    """The JSON's numbers from a checked build's report."""
    device_runs, cross, on_host = [], [], []
    for a in report["artifacts"]:
        if a["status"] != "ok":
            continue
        on_host.append(_row(a))
        if a.get("device"):  # a per-architecture build (the TVM library) that ran on the device itself
            device_runs.append({**_row(a), "vs_host": a.get("vs_host")})
        for r in a.get("runs", []):
            row = {**_row(a, r), "status": r["status"], "vs_host": r.get("vs")}
            (device_runs if r.get("device") else cross).append(row)
    int8_on_device = [r for r in device_runs if r["precision"] == "int8" and r.get("nfr_vs_fp32") is not None]
    int8_cross = [r for r in cross if r["precision"] == "int8"]
    return {
        "worst_nfr_vs_fp32": max((r["nfr_vs_fp32"] for r in int8_on_device), default=None),
        "device": device_runs,
        "cross_runtime": cross,
        "worst_cross_runtime_int8_nfr_vs_fp32": max((r["nfr_vs_fp32"] for r in int8_cross), default=None),
        "host": on_host,
        "check": {k: report["check"][k] for k in ("passed", "failures", "inconclusive")},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", type=Path, default=Path("build/bench/resnet-fashion-mnist"))
    ap.add_argument("--export", action="store_true", help="re-export the artifacts for the targets' runtimes before the check")
    ap.add_argument(
        "--with-libraries", action="store_true", help="check the TVM libraries too (the aarch64 one: hours under qemu for 10,000 images)"
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "device_flips.json")
    args = ap.parse_args()
    configure(1)
    work = args.build.with_name(args.build.name + "-device")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(args.build, work)
    changed, left_out = _retarget(work, args.with_libraries)
    t0 = time.time()
    with emulator.start(port=_free_port()) as device:
        report = check_build(work, Remote(device.host, device.port), export=args.export)
    seconds = time.time() - t0
    result = {
        "benchmark": "device_flips",
        "data": report.sections["config"]["data"]["name"],
        "build": str(args.build),
        "retargeted": changed,
        "left_out": left_out,
        "exported_again": args.export,
        "test_images": len(open_build(work).data["test"].y),
        "limits": {t["name"]: t["max_nfr_vs_fp32"] for t in report.sections["targets"]},
        "check_seconds": round(seconds, 1),
        "emulated_cpu": emulator.CPU,
        **summarize(report.sections),
        **provenance(),
    }
    write_json(args.out, result)
    print(f"{'artifact':32} {'runtime':12} {'where':8} {'flips':>5} {'NFR vs fp32':>11} {'vs host':>8} {'s':>6}  verdict")
    for r in result["device"] + result["cross_runtime"]:
        vs = r.get("vs_host") or {}
        nfr = "–" if r.get("nfr_vs_fp32") is None else f"{r['nfr_vs_fp32']:.2%}"
        print(
            f"{r['artifact']:32} {r['runtime']:12} {'device' if r['device'] else 'host':8} {r.get('flips') or 0:>5} {nfr:>11} "
            f"{vs.get('disagreements', '–')!s:>8} {r.get('seconds') or 0:>6.1f}  {r.get('verdict') or r.get('status')}"
        )
    worst = result["worst_nfr_vs_fp32"], result["worst_cross_runtime_int8_nfr_vs_fp32"]
    print(f"worst int8 NFR vs fp32 on the device: {worst[0]}; in the targets' other runtimes: {worst[1]}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

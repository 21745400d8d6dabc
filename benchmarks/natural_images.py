"""Natural images: the default build on a folder of colour photographs, its family, and memory on a large folder.

    python benchmarks/natural_images.py --data FOLDER [--stages build twins nfr memory] [--seeds 0 1 2]
        [--work build/bench] [--out benchmarks/results/natural_images.json]

Stages (each merges its keys into the JSON, so they can run one at a time):
- `build`: `regnas build --targets phone,edge,server --data FOLDER`, the default command, timed in a fresh
  process into `WORK/<space>-<folder name>`: build minutes, epochs, each member's FLOPs and test top-1, the
  training share of the build, the ladder (server over phone, repeated members) and every int8 artifact's
  flips against its fp32 model with the check's verdict.
- `twins`: the largest, a median and the smallest subnet of that supernet against the same archs trained alone
  with its recipe and epochs (`supernet_quality.py`'s comparison).
- `nfr`: the shipped family (searched with the flip-aware reward, then fine-tuned) against the independent
  baseline and PCT, over `--seeds` search seeds on the same supernet (`nfr_family.py`'s rows).
- `memory`: a folder of 100,000 96-px JPEGs made from FOLDER's images (each upscaled, and once more mirrored)
  is decoded into a fresh cache and every split read once in training batches, in a child process whose peak
  resident memory is measured (and its peak anonymous memory, sampled: what is not the page cache of the
  memory-mapped files).

Targets (2 CPU cores, no GPU): the build <= 60 min with export and check, largest member >= 85% top-1, server >=
phone + 2 points and no member repeating its predecessor; family mean NFR <= 0.5 x baseline and <= 0.6 x PCT
(mean of the seeds), every member within 0.3 points of its baseline counterpart or above; no int8 artifact
`failed`; training >= 60% of the build; the memory pass <= 4 GB resident with a uint8 cache.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nfr_family
import supernet_quality

from regnas.builddir import read_report
from regnas.io import load_tensors, read_json, write_json
from regnas.logs import configure
from workdirs import data_label, provenance, work_dir

TARGETS = {
    "build_minutes": 60,
    "largest_top1": 0.85,
    "ladder_points": 2.0,
    "nfr_over_baseline": 0.5,
    "nfr_over_pct": 0.6,
    "top1_within_points": 0.3,
    "train_share": 0.6,
    "data_peak_rss_gb": 4.0,
}
MEMORY_IMAGES = 100_000
MEMORY_SIZE = 96


def default_space(folder: str) -> str:
    """The space the default build picks for this folder (from its images' headers, nothing decoded)."""
    from regnas.images import layout_of, scan_folder
    from regnas.spaces import default_space as pick

    layout = layout_of(scan_folder(Path(folder)), None)
    return pick((layout.channels, layout.height, layout.width))


def stage_build(args: argparse.Namespace, space: str) -> dict:
    """The default build, timed from outside, and what its report says of the targets."""
    work = work_dir(args.work, space, args.data)
    if not (work / "report.json").is_file():
        t0 = time.time()
        cmd = [sys.executable, "-m", "regnas", "build", "--targets", "phone,edge,server", "--data", args.data, "--out", str(work)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode not in (0, 1):
            sys.exit(f"build failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
        wall, code = time.time() - t0, proc.returncode
    else:
        wall, code = None, None
    report = read_report(work)
    timing = report["timing_s"]
    trained = sum(r["seconds"] for r in read_json(work / "supernet.json")["history"])
    resumed = timing["train"] < 0.5 * trained  # went on from an earlier run's supernet: its minutes are not one build's
    members = [
        {"target": m["target"], "flops": m["flops"], "top1": m["top1"], "same_as_previous": bool(m.get("same_as_previous"))}
        for m in report["family"]
    ]
    int8 = [
        {
            "target": a["target"],
            "format": a["format"],
            "path": a["path"],
            "nfr_vs_fp32": a["nfr_vs_fp32"],
            "flips": a["flips"],
            "interval": a["nfr_interval"],
            "verdict": a["verdict"],
            "slowdown": (a.get("quantization") or {}).get("after", {}).get("slowdown"),
            "other_runtimes": {r["runtime"]: {"flips": r["flips"], "verdict": r["verdict"]} for r in a.get("runs", []) if r.get("verdict")},
        }
        for a in report.get("artifacts", [])
        if a["precision"] == "int8" and a["nfr_vs_fp32"] is not None
    ]
    ladder = 100 * (members[-1]["top1"] - members[0]["top1"])
    return {
        "build_dir": str(work),
        "supernet_sha256": nfr_family.weights_digest(load_tensors(work / "supernet.safetensors")),
        "exit": code if code is not None else (0 if report["check"]["passed"] else 1),  # a build run before: its report says
        "build_minutes": None if resumed else (wall or timing["total"]) / 60,
        "resumed": resumed,
        "supernet_train_s": trained,
        "timing_s": timing,
        "plan_s": report.get("plan_s"),
        "train_share": None if resumed else timing["train"] / timing["total"],
        "epochs": report["config"]["train"]["epochs"],
        "train": report["config"]["train"],
        "test_images": report["config"]["data"]["splits"]["test"],
        "members": members,
        "largest_top1": members[-1]["top1"],
        "ladder_points": ladder,
        "repeats": [m["target"] for m in members if m["same_as_previous"]],
        "int8": int8,
        "worst_int8_nfr": max((a["nfr_vs_fp32"] for a in int8), default=None),
        "int8_failed": [  # in its own runtime or any other the check ran it in (the build exits 1 on either)
            a["path"] + ("" if r is None else f" in {r}")
            for a in int8
            for r, verdict in [(None, a["verdict"]), *((k, o["verdict"]) for k, o in a["other_runtimes"].items())]
            if verdict == "failed"
        ],
    }


def stage_twins(args: argparse.Namespace, space: str) -> dict:
    """Subnets of the build's supernet against their standalone twins."""
    ns = argparse.Namespace(work=args.work, time_budget=None, export=True)
    _, rows = supernet_quality.bench(args.data, space, 0, ns)
    return {"twins": rows, "gaps_points": {r["subnet"]: r["gap_points"] for r in rows}}


def stage_nfr(args: argparse.Namespace, space: str) -> dict:
    """The shipped family against the baseline and PCT over the search seeds."""
    ns = argparse.Namespace(
        data=args.data,
        seeds=args.seeds,
        reward=nfr_family.DEFAULT_REWARD,
        sweep=[],
        finetune="joint",
        keep=args.keep,
        no_control=True,
        targets="phone,edge,server",
        time_budget=None,
        pct_epochs=None,
        work=args.work,
    )
    res = nfr_family.bench_space(ns, space, args.earlier.get("nfr"))
    nfr_family.print_space(res)
    s = res["summary"]
    return {
        "seeds": args.seeds,
        "nfr": res,
        "family_mean_nfr": s["family_finetune"]["mean_nfr"],
        "family_searched_mean_nfr": s["family"]["mean_nfr"],
        "baseline_mean_nfr": s["baseline"]["mean_nfr"],
        "pct_mean_nfr": s["pct"]["mean_nfr"],
        "nfr_over_baseline": res["nfr_over_baseline"]["family_finetune"],
        "nfr_over_pct": res["nfr_over_pct"]["family_finetune"],
        "top1_delta_points": res["finetune_top1_delta_points"],
    }


def make_large_folder(src: str, dst: Path, n: int = MEMORY_IMAGES, size: int = MEMORY_SIZE) -> None:
    """`n` JPEGs of `size` px under `dst`: `src`'s images upscaled, then again mirrored, class folders kept."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image, ImageOps

    from regnas.images import scan_folder

    folder = scan_folder(Path(src))
    jobs = [(f, k) for k in range(-(-n // len(folder.files))) for f in folder.files][:n]

    def write(job: tuple[Path, int]) -> None:
        f, k = job
        out = dst / f.parent.name / f"{f.stem}-{k}.jpg"
        if out.is_file():
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(f) as im:
            big = im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        (ImageOps.mirror(big) if k % 2 else big).save(out, quality=90)

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write, jobs))


def _memory_child(folder: str, cache: str) -> None:
    """In a child process: load, cache and read every split once in batches; print peak memory as JSON."""
    import numpy as np

    from regnas.data import load_dataset, to_float

    peak_anon = [0]

    def sample() -> None:
        while True:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    peak_anon[0] = max(peak_anon[0], int(line.split()[1]) * 1024)
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.time()
    data = load_dataset(folder, 0, cache=Path(cache))
    loaded = time.time() - t0
    seen, checksum = 0, 0.0
    for name in data.splits:
        x = data[name].x
        for i in range(0, len(x), 128):
            batch = to_float(x[i : i + 128])
            checksum += float(batch[:, :, 0, 0].sum())
            seen += len(batch)
    dtypes = sorted({str(data[s].x.dtype) for s in data.splits})
    files = list(Path(cache).rglob("*.u8"))
    print(
        json.dumps(
            {
                "images": seen,
                "input_shape": list(data.input_shape),
                "load_seconds": loaded,
                "pass_seconds": time.time() - t0 - loaded,
                "data_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
                "data_peak_anon_gb": peak_anon[0] / 1e9,
                "cache_dtypes": dtypes,
                "cache_bytes": sum(f.stat().st_size for f in files),
                "cache_bytes_per_image": sum(f.stat().st_size for f in files) / seen,
                "checksum": float(np.float64(checksum)),
            }
        )
    )


def stage_memory(args: argparse.Namespace) -> dict:
    """Decode, cache and one pass over a 100,000-image 96-px folder, in a fresh process."""
    big = args.work / f"{data_label(args.data)}-{MEMORY_IMAGES}x{MEMORY_SIZE}px"
    t0 = time.time()
    make_large_folder(args.data, big)
    made = time.time() - t0
    with tempfile.TemporaryDirectory(dir=args.work) as cache:
        code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import natural_images as n; n._memory_child(*sys.argv[1:])"
        proc = subprocess.run([sys.executable, "-c", code, str(big), cache], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"memory stage failed: {proc.stderr.strip().splitlines()[-1:]}")
    return {"memory": {"folder": str(big), "make_seconds": made, **json.loads(proc.stdout.strip().splitlines()[-1])}}


def summarize(result: dict) -> dict:
    """The targets, met or not, from whatever stages have run."""
    met: dict[str, bool | None] = {}
    if "build_minutes" in result:
        resumed = result.get("resumed")  # a resumed build's minutes and training share are not one build's: not judged
        met["build_minutes"] = None if resumed else result["build_minutes"] <= TARGETS["build_minutes"]
        met["largest_top1"] = result["largest_top1"] >= TARGETS["largest_top1"]
        met["ladder"] = result["ladder_points"] >= TARGETS["ladder_points"] and not result["repeats"]
        met["int8_none_failed"] = not result["int8_failed"]
        met["train_share"] = None if resumed else result["train_share"] >= TARGETS["train_share"]
    nfr_sha, build_sha = result.get("nfr", {}).get("supernet_sha256"), result.get("supernet_sha256")
    if nfr_sha and build_sha and nfr_sha != build_sha:  # the nfr stage ran on an earlier build's supernet: it judges that one
        result = {**result, "nfr_on_another_supernet": True}
        met |= {"nfr_over_baseline": None, "nfr_over_pct": None, "top1_within": None}
    elif "nfr_over_baseline" in result:
        result = {k: v for k, v in result.items() if k != "nfr_on_another_supernet"}
        met["nfr_over_baseline"] = result["nfr_over_baseline"] <= TARGETS["nfr_over_baseline"]
        met["nfr_over_pct"] = result["nfr_over_pct"] <= TARGETS["nfr_over_pct"]
        met["top1_within"] = all(d >= -TARGETS["top1_within_points"] for d in result["top1_delta_points"].values())
    if "memory" in result:
        mem = result["memory"]
        met["data_peak_rss_gb"] = mem["data_peak_rss_gb"] <= TARGETS["data_peak_rss_gb"] and mem["cache_dtypes"] == ["torch.uint8"]
    return {**result, "targets": TARGETS, "met": met}


def print_table(result: dict) -> None:
    if "members" in result:
        if result.get("resumed"):
            trained = result["supernet_train_s"]
            print(f"build resumed from an earlier run's supernet ({trained:.0f} s of training), {result['epochs']} epochs")
        else:
            print(f"build {result['build_minutes']:.1f} min, {result['epochs']} epochs, training {result['train_share']:.0%} of it")
        for m in result["members"]:
            print(f"  {m['target']:8} {m['flops'] / 1e6:6.2f} MFLOPs  top-1 {100 * m['top1']:.2f}%")
        for a in result["int8"]:
            others = "".join(f"; in {r} {o['flips']} flips, {o['verdict']}" for r, o in a["other_runtimes"].items())
            print(f"  int8 {a['path']}: {a['flips']} flips ({100 * a['nfr_vs_fp32']:.2f}%), {a['verdict']}{others}")
    if "gaps_points" in result:
        print("gaps to standalone twins (points): " + ", ".join(f"{k} {v:+.2f}" for k, v in result["gaps_points"].items()))
    if "family_mean_nfr" in result:
        print(
            f"mean NFR over seeds {result['seeds']}: family {100 * result['family_mean_nfr']:.2f}%, baseline "
            f"{100 * result['baseline_mean_nfr']:.2f}%, PCT {100 * result['pct_mean_nfr']:.2f}% "
            f"(x{result['nfr_over_baseline']:.2f} baseline, x{result['nfr_over_pct']:.2f} PCT)"
            + (", measured on an earlier build's supernet" if result.get("nfr_on_another_supernet") else "")
        )
    if "memory" in result:
        m = result["memory"]
        rss, anon = m["data_peak_rss_gb"], m["data_peak_anon_gb"]
        print(f"memory: {m['images']} images {m['input_shape']}, peak RSS {rss:.2f} GB (anonymous {anon:.2f})")
    print("met: " + json.dumps(result["met"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="an image folder of colour photographs (one subfolder per class)")
    ap.add_argument("--stages", nargs="+", default=["build", "twins", "nfr", "memory"], choices=["build", "twins", "nfr", "memory"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="search seeds of the nfr stage (the first is the build's)")
    ap.add_argument(
        "--keep",
        nargs="*",
        default=[],
        choices=nfr_family.KEEPABLE,
        help="nfr stage: rows of the earlier result in --out to keep, per seed it has (same supernet and settings; nfr_family.py's --keep)",
    )
    ap.add_argument("--work", type=Path, default=Path("build/bench"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/natural_images.json"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    configure(-1)
    old = read_json(args.out) if args.out.is_file() else {}
    args.earlier = old
    result = {k: v for k, v in old.items() if k not in ("targets", "met")}
    result |= {
        "benchmark": "natural_images",
        "data": data_label(args.data),
        **provenance(),
    }
    space = default_space(args.data)
    stages = {
        "build": lambda: stage_build(args, space),
        "twins": lambda: stage_twins(args, space),
        "nfr": lambda: stage_nfr(args, space),
        "memory": lambda: stage_memory(args),
    }
    for name in args.stages:
        t0 = time.time()
        result |= stages[name]()
        result.setdefault("stage_seconds", {})[name] = time.time() - t0
        result.setdefault("stage_provenance", {})[name] = provenance()  # stages of one JSON may run at different commits
        write_json(args.out, summarize(result))
    result = summarize(result)
    print_table(result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

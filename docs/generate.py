"""Generate the documentation pages that are derived from the code and the recorded results.

    python docs/generate.py            # rewrite docs/benchmarks.md and docs/cli.md
    python docs/generate.py --check    # exit 1, naming them, when either page is stale

- `docs/benchmarks.md`: one section per `benchmarks/results/*.json`, rendered by the renderer whose file-name
  pattern matches the file's stem (`RENDERERS`), else by a generic one that lists the keys it finds. Values are
  printed as the JSON holds them (rounded for display), never computed; top-level keys a renderer does not show
  are listed under "Other keys", so nothing in a result goes unmentioned. PNG plots beside a JSON are linked.
- `docs/cli.md`: every subcommand of the parser `regnas.cli.make_parser()` builds, with its usage line and
  options, formatted at a fixed width (no dependence on the terminal).

Both pages are deterministic (sorted files, no timestamps, no absolute paths), so `tests/test_docs.py` can
compare them with what this script would write now. Pages are written atomically (a temporary file in
`docs/`, then `os.replace`).
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

try:
    from regnas.errors import RegnasError
except ImportError:  # run from a checkout that is not installed (`pip install -e .`)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from regnas.errors import RegnasError

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "results"
SCRIPTS = ROOT / "benchmarks"
COMMAND = "python docs/generate.py"
CLI_WIDTH = 100
"""Columns of the usage lines in cli.md: fixed, so the page does not depend on the terminal it was made in."""
PROVENANCE_KEYS = ("date", "commit", "git", "revision", "timestamp", "created", "utc")
"""Key-name parts that mark when or from which commit a result was recorded (printed in each section's header)."""
TOP_DIRS = ("benchmarks", "build", "docs", "examples", "regnas", "scripts", "tests")
"""Top-level folders of this repository: an absolute path in a result is shown from the first of them on."""


# ---------------------------------------------------------------------------------------------------------------
# Markdown helpers


class Md(str):
    """Text that is markdown already (a link, a code span): put in a page as it is."""


def fmt(value: Any) -> str:
    """A JSON value for display: floats to 4 significant digits, null as an en dash, short lists inline."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(value) if not math.isfinite(value) else f"{value:.4g}"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, list):
        if all(not isinstance(v, dict | list) for v in value):
            return "[" + ", ".join(fmt(v) for v in value) + "]"
        return f"({len(value)} items)"
    if isinstance(value, dict):
        return f"({len(value)} keys)" if value else "{}"
    return str(value)


def escape(text: str) -> str:
    """Plain text made safe for a markdown table cell or paragraph; `code spans` are kept as they are."""
    parts = text.replace("\n", " ").split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: no code spans
        parts = ["\\`".join(parts)]
    out = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            for ch in "\\*<>":
                part = part.replace(ch, "\\" + ch)
        out.append(part.replace("|", "\\|"))
    return "`".join(out)


def cell(value: Any) -> str:
    return value.replace("|", "\\|") if isinstance(value, Md) else escape(fmt(value))


def code(text: Any) -> Md:
    text = str(text).replace("`", "'")
    return Md(f"`{text}`")


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    """A markdown table, numeric columns right-aligned; nothing when there are no rows."""
    if not rows:
        return []
    align = []
    for i in range(len(headers)):
        column = [r[i] for r in rows if r[i] is not None and not isinstance(r[i], Md)]
        align.append("---:" if column and all(_numeric(v) for v in column) else "---")
    lines = ["| " + " | ".join(escape(h) for h in headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return [*lines, ""]


def kv_table(items: Iterable[tuple[str, Any]], headers: tuple[str, str] = ("key", "value")) -> list[str]:
    return table(list(headers), [[code(k), v] for k, v in items])


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists and scalars as they are."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def union_keys(dicts: Iterable[dict | None]) -> list[str]:
    """Every key of the dicts, in order of first appearance."""
    return list(dict.fromkeys(k for d in dicts if isinstance(d, dict) for k in d))


def records_table(records: list[dict], columns: list[str] | None = None, max_columns: int = 12) -> list[str]:
    """A list of dicts as tables (nested dicts flattened to dotted columns), split when wider than `max_columns`."""
    flat = [flatten(r) for r in records if isinstance(r, dict)]
    columns = columns or union_keys(flat)
    if not flat or not columns:
        return []
    first, rest = columns[0], columns[1:]
    width = max(1, max_columns - 1)
    chunks = [rest[i : i + width] for i in range(0, len(rest), width)] or [[]]
    out: list[str] = []
    for chunk in chunks:
        out += table([first, *chunk], [[r.get(c) for c in [first, *chunk]] for r in flat])
    return out


def inline(d: dict | None) -> str:
    """A small dict on one line: `key` value, ..."""
    if not d:
        return "–"
    return ", ".join(f"`{k}` {escape(fmt(v))}" for k, v in flatten(d).items())


def display_path(path: Any) -> Any:
    """An absolute path as from the repository's top-level folder it names (else its file name), so no machine's
    layout ends up in the page; relative paths as they are."""
    if not isinstance(path, str) or not os.path.isabs(path):
        return path
    parts = Path(path).parts
    for i, part in enumerate(parts):
        if part in TOP_DIRS:
            while i + 1 < len(parts) - 1 and parts[i + 1] == part:  # a checkout named like its package: regnas/regnas
                i += 1
            return "/".join(parts[i:])
    return parts[-1]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().lower().replace("`", "")
    return "".join(ch for ch in text if ch.isalnum() or ch in "-_ ").replace(" ", "-")


# ---------------------------------------------------------------------------------------------------------------
# A result file, the keys its renderer used, and the page section it becomes


class Result:
    """One results JSON: its data, and which top-level keys have been shown (the rest go to "Other keys")."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data, self.used = path, data, set()

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.data.get(key, default)

    def has(self, key: str) -> bool:
        return key in self.data

    def rest(self) -> dict[str, Any]:
        return {k: v for k, v in self.data.items() if k not in self.used}


Lines = list[str]
Renderer = Callable[[Result, Lines], None]


def read_result(path: Path) -> Result:
    """Parse one results JSON; a corrupt or non-object file is a one-line RegnasError naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegnasError(f"{path.name} is not valid JSON ({exc}); fix or re-run its benchmark, then run {COMMAND}") from exc
    if not isinstance(data, dict):
        raise RegnasError(f"{path.name} holds a JSON {type(data).__name__}, not an object; re-run its benchmark, then run {COMMAND}")
    return Result(path, data)


def records(r: Result, key: str) -> list[dict]:
    """A top-level list of rows; any other shape is a TypeError, so the file is shown generically instead."""
    value = r.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise TypeError(f"`{key}` is not a list of objects")
    return value


def setup(out: Lines, items: list[tuple[str, Any]]) -> None:
    """The bullet list at the top of a section: data, seeds, sample sizes, host."""
    for label, value in items:
        out.append(f"- **{label}**: {value if isinstance(value, Md) else escape(fmt(value))}")
    out.append("")


def not_recorded(what: str = "") -> Md:
    return Md("not recorded in the JSON" + (f" ({what})" if what else ""))


def host_line(host: Any) -> Any:
    return Md(inline(host)) if isinstance(host, dict) else host


def heading(out: Lines, level: int, text: str) -> None:
    out += ["#" * level + " " + text, ""]


# ---------------------------------------------------------------------------------------------------------------
# Renderers, one per benchmark script (keyed by the result file's stem)


def render_build_speed(r: Result, out: Lines) -> None:
    runs = records(r, "runs")
    setup(
        out,
        [
            ("Data", ", ".join(dict.fromkeys(str(x.get("data")) for x in runs)) or None),
            ("Seeds", not_recorded("each run is one default build; `repeat` numbers the runs")),
            ("Sample size", not_recorded("the check messages below name their test-image counts")),
            ("Host", host_line(r.get("host"))),
        ],
    )
    heading(out, 4, "Runs: wall time against the limit")
    out += table(
        [
            "space",
            "data",
            "repeat",
            "seconds",
            "limit_s",
            "met",
            "exit",
            "epochs",
            "time_budget_min",
            "check passed",
            "failures",
            "inconclusive",
        ],
        [
            [
                x.get("space"),
                x.get("data"),
                x.get("repeat"),
                x.get("seconds"),
                x.get("limit_s"),
                x.get("met"),
                x.get("exit"),
                x.get("epochs"),
                x.get("time_budget_min"),
                (x.get("check") or {}).get("passed"),
                len((x.get("check") or {}).get("failures") or []),
                len((x.get("check") or {}).get("inconclusive") or []),
            ]
            for x in runs
        ],
    )
    for key, title in (
        ("stages_s", "Stage seconds (the build's own timing)"),
        ("plan_s", "Time plan (seconds)"),
        ("top1", "Test top-1 per member"),
    ):
        have = [x for x in runs if isinstance(x.get(key), dict)]
        if not have:
            continue
        heading(out, 4, title)
        cols = union_keys(x[key] for x in have)
        out += table(
            ["space", "data", "repeat", *cols],
            [[x.get("space"), x.get("data"), x.get("repeat"), *(x[key].get(c) for c in cols)] for x in have],
        )
    messages = [(x, kind, m) for x in runs for kind in ("failures", "inconclusive") for m in (x.get("check") or {}).get(kind) or []]
    if messages:
        out += ["<details><summary>Check messages</summary>", ""]
        out += table(
            ["space", "data", "repeat", "kind", "message"], [[x.get("space"), x.get("data"), x.get("repeat"), k, m] for x, k, m in messages]
        )
        out += ["</details>", ""]


def render_lut_accuracy(r: Result, out: Lines) -> None:
    rows = records(r, "runtimes")
    setup(
        out,
        [
            ("Data", Md(f"{escape(fmt(r.get('data')))}, space {escape(fmt(r.get('space')))}")),
            ("Seeds", not_recorded()),
            ("Sample size", Md("per runtime: `n` subnets scored, `calibration.fitted_on` fitted, `repeatability.n` timed twice (tables)")),
            ("Host", Md(f"`cpu_count` {escape(fmt(r.get('cpu_count')))}")),
        ],
    )
    keys = ["n", "within_5pct", "within_10pct", "rmspe", "spearman"]
    heading(out, 4, "Calibrated LUT against measured latency")
    out += table(
        ["target", "runtime", "precision", "threads", "units", *keys, "meets_goal"],
        [[x.get(k) for k in ("target", "runtime", "precision", "threads", "units", *keys, "meets_goal")] for x in rows],
    )
    for key, title in (("before_calibration", "Plain sum of the LUT (before calibration)"), ("repeatability", "The device against itself")):
        have = [x for x in rows if isinstance(x.get(key), dict)]
        if have:
            heading(out, 4, f"{title}: `{key}`")
            out += table(["target", *keys], [[x.get("target"), *(x[key].get(k) for k in keys)] for x in have])
    cals = [x for x in rows if isinstance(x.get("calibration"), dict)]
    if cals:
        heading(out, 4, "Calibration")
        loo = union_keys(x["calibration"].get("loo_rmspe") for x in cals)
        out += table(
            ["target", "model", "fitted_on", *(f"loo_rmspe {k}" for k in loo)],
            [
                [
                    x.get("target"),
                    x["calibration"].get("model"),
                    x["calibration"].get("fitted_on"),
                    *((x["calibration"].get("loo_rmspe") or {}).get(k) for k in loo),
                ]
                for x in cals
            ],
        )
        coefs = {x.get("target"): dict(zip(x["calibration"].get("terms") or [], x["calibration"].get("coef") or [])) for x in cals}
        terms = union_keys(coefs.values())
        if terms:
            out += ["Coefficients (`terms` against `coef`):", ""]
            out += table(["term", *map(str, coefs)], [[code(t), *(c.get(t) for c in coefs.values())] for t in terms])
    heading(out, 4, "Timing and files")
    out += table(
        ["target", "profile_s", "validate_s", "profile_timing", "validate_timing", "lut"],
        [
            [
                x.get("target"),
                x.get("profile_s"),
                x.get("validate_s"),
                x.get("profile_timing"),
                x.get("validate_timing"),
                code(display_path(x.get("lut"))),
            ]
            for x in rows
        ],
    )


def _nfr_space(res: dict, out: Lines, level: int) -> None:
    """One space of nfr_family.py's result (also natural_images.py's `nfr` stage)."""
    names = res.get("targets") or []
    out += [
        f"- **Reward** {escape(fmt(res.get('reward')))}, **fine-tune mode** {escape(fmt(res.get('finetune_mode')))}, "
        f"**targets** {escape(fmt(names))}: NFR(X,Y) is member X's negative flips against member Y, A, B, C being these targets in order",
        f"- **Kept rows** (copied from an earlier run): {escape(fmt(res.get('kept_rows')))}",
        f"- **Supernet**: build {escape(fmt(res.get('build_seconds')))} s, `supernet_sha256` "
        + (code(res["supernet_sha256"]) if res.get("supernet_sha256") else "–"),
        f"- **Supernet training**: {inline(res.get('supernet_train'))}",
        f"- **PCT / fine-tune settings**: {inline(res.get('pct'))}",
        "",
    ]
    summary = res.get("summary") or {}
    if summary:
        heading(out, level, f"Mean over the seeds (runs: {len(res.get('runs') or [])})")
        pairs = union_keys(s.get("nfr") for s in summary.values())
        tops = union_keys(s.get("top1") for s in summary.values())
        out += table(
            ["row", *(f"top1 {t}" for t in tops), *pairs, "mean_nfr", "mean_top1"],
            [
                [
                    code(kind),
                    *((s.get("top1") or {}).get(t) for t in tops),
                    *((s.get("nfr") or {}).get(p) for p in pairs),
                    s.get("mean_nfr"),
                    s.get("mean_top1"),
                ]
                for kind, s in summary.items()
            ],
        )
    ratios = [("nfr_over_baseline", res.get("nfr_over_baseline") or {}), ("nfr_over_pct", res.get("nfr_over_pct") or {})]
    kinds = union_keys(d for _, d in ratios)
    if kinds:
        heading(out, level, "Mean NFR ratios")
        out += table(["row", *(k for k, _ in ratios)], [[code(k), *(d.get(k) for _, d in ratios)] for k in kinds])
    deltas = [("family", res.get("top1_delta_points") or {}), ("family_finetune", res.get("finetune_top1_delta_points") or {})]
    members = union_keys(d for _, d in deltas)
    if members:
        heading(out, level, "Top-1 against the baseline's member (points)")
        out += table(
            ["member", "family (`top1_delta_points`)", "family_finetune (`finetune_top1_delta_points`)"],
            [[m, *(d.get(m) for _, d in deltas)] for m in members],
        )
    corr = res.get("nfr_vs_shared_weight") or {}
    met = res.get("met")
    out += [
        f"- `relative_nfr_reduction`: {escape(fmt(res.get('relative_nfr_reduction')))}",
        f"- NFR against shared-weight fraction over {len(corr.get('pairs') or [])} member pairs: "
        f"spearman {escape(fmt(corr.get('spearman')))}, pearson {escape(fmt(corr.get('pearson')))}",
        f"- `met`: {inline(met) if isinstance(met, dict) else escape(fmt(met))}",
        "",
    ]
    runs = [x for x in res.get("runs") or [] if isinstance(x, dict)]
    if runs:
        kinds = [k for k in union_keys(runs) if isinstance(runs[0].get(k), dict)]
        pairs = union_keys((x.get(k) or {}).get("nfr") for x in runs for k in kinds)
        tops = union_keys((x.get(k) or {}).get("top1") for x in runs for k in kinds)
        out += ["<details><summary>Per-seed rows</summary>", ""]
        out += table(
            ["seed", "row", *(f"top1 {t}" for t in tops), *pairs],
            [
                [x.get("seed"), code(k), *((x[k].get("top1") or {}).get(t) for t in tops), *((x[k].get("nfr") or {}).get(p) for p in pairs)]
                for x in runs
                for k in kinds
                if isinstance(x.get(k), dict)
            ],
        )
        flops = [
            (x.get("seed"), k, x[k]["flops"])
            for x in runs
            for k in kinds
            if isinstance(x.get(k), dict) and isinstance(x[k].get("flops"), dict)
        ]
        if flops:
            cols = union_keys(f for _, _, f in flops)
            out += ["FLOPs of the searched members:", ""]
            out += table(["seed", "row", *(f"flops {c}" for c in cols)], [[s, code(k), *(f.get(c) for c in cols)] for s, k, f in flops])
        out += table(["seed", "seconds"], [[x.get("seed"), x.get("seconds")] for x in runs])
        out += ["</details>", ""]


def render_nfr_family(r: Result, out: Lines) -> None:
    setup(
        out,
        [
            ("Data", r.get("data")),
            ("Seeds", r.get("seeds")),
            ("Sample size", not_recorded("test split only")),
            ("Host", host_line(r.get("host"))),
            ("Targets", Md(inline(r.get("target")))),
            ("met (every space's `family_finetune`)", r.get("met")),
        ],
    )
    plot = r.get("plot")
    if plot and not (r.path.parent / plot).is_file():
        out += [f"The JSON names the plot `{plot}`, which is not beside it.", ""]
    for space, res in (r.get("spaces") or {}).items():
        heading(out, 4, f"Space `{space}`")
        _nfr_space(res, out, 5)


def render_quant_flips(r: Result, out: Lines) -> None:
    setup(
        out,
        [
            ("Data", r.get("data")),
            ("Build", code(r.get("build"))),
            ("Seeds", not_recorded("the build's")),
            ("Sample size", Md(f"{escape(fmt(r.get('test_samples')))} test images (`test_samples`)")),
            ("Host", host_line(r.get("machine"))),
            ("Export seconds", r.get("export_s")),
        ],
    )
    rows = records(r, "artifacts")
    notes = list(dict.fromkeys(x.get("status") for x in rows if x.get("status") not in ("ok", None)))

    def status(x: dict) -> Any:
        s = x.get("status")
        return s if s in ("ok", None) else f"note {notes.index(s) + 1}"

    heading(out, 4, "Artifacts: flips against their fp32 model, batch-1 latency")
    out += table(
        [
            "artifact",
            "runtime",
            "status",
            "top1",
            "flips",
            "nfr_vs_fp32",
            "nfr_interval",
            "nfr_vs_prev",
            "verdict",
            "latency_ms_p50",
            "torch_eager_ms_p50",
        ],
        [
            [
                code(x.get("path")),
                x.get("runtime"),
                status(x),
                x.get("top1"),
                x.get("flips"),
                x.get("nfr_vs_fp32"),
                x.get("nfr_interval"),
                x.get("nfr_vs_prev"),
                x.get("verdict"),
                x.get("latency_ms_p50"),
                x.get("torch_eager_ms_p50"),
            ]
            for x in rows
        ],
    )
    out += [f"{i}. {escape(n)}" for i, n in enumerate(notes, 1)] + ([""] if notes else [])
    quant = [x for x in rows if isinstance(x.get("quantization"), dict)]
    if quant:
        heading(out, 4, "Flip-aware quantization (selected on the val split)")
        out += table(
            [
                "artifact",
                "threshold",
                "configurations",
                "before flips_val",
                "before nfr_val",
                "after flips_val",
                "after nfr_val",
                "after top1_val",
                "kept_float (count)",
                "ranking (count)",
                "latency_ms chosen",
                "latency_ms fully_quantized",
            ],
            [
                [
                    code(x.get("path")),
                    q.get("threshold"),
                    q.get("configurations"),
                    (q.get("before") or {}).get("flips_val"),
                    (q.get("before") or {}).get("nfr_val"),
                    (q.get("after") or {}).get("flips_val"),
                    (q.get("after") or {}).get("nfr_val"),
                    (q.get("after") or {}).get("top1_val"),
                    len(q["kept_float"]) if isinstance(q.get("kept_float"), list) else None,
                    len(q["ranking"]) if isinstance(q.get("ranking"), list) else None,
                    (q.get("latency_ms") or {}).get("chosen"),
                    (q.get("latency_ms") or {}).get("fully_quantized"),
                ]
                for x in quant
                for q in [x["quantization"]]
            ],
        )
    targets = r.get("targets")
    if isinstance(targets, dict):
        heading(out, 4, "Targets")
        out += kv_table(flatten(targets).items())


def render_supernet_quality(r: Result, out: Lines) -> None:
    builds = records(r, "builds")
    setup(
        out,
        [
            ("Data", ", ".join(dict.fromkeys(str(x.get("data")) for x in builds)) or None),
            ("Seeds", Md(inline(r.get("seeds_by_space")) + " (Fashion-MNIST builds, per space)")),
            ("Sample size", not_recorded("test split")),
            ("Host", host_line(r.get("host"))),
        ],
    )
    heading(out, 4, "Headline")
    out += kv_table(
        [(k, r.get(k)) for k in ("largest_top1_fashion", "largest_top1_fashion_space", "fashion_build_seconds") if r.has(k)]
        + [(f"targets.{k}", v) for k, v in (r.get("targets") or {}).items()]
        + [(f"met.{k}", v) for k, v in (r.get("met") or {}).items() if not isinstance(v, dict)]
    )
    by_space = r.get("largest_top1_fashion_by_space") or {}
    per_seed = r.get("largest_top1_fashion_by_space_and_seed") or {}
    seconds = r.get("fashion_build_seconds_by_space") or {}
    met = (r.get("met") or {}).get("by_space") or {}
    spaces = union_keys([by_space, per_seed, seconds, met])
    if spaces:
        heading(out, 4, "Fashion-MNIST per space")
        cols = union_keys(met.values())
        out += table(
            ["space", "seeds", "largest top1 (mean)", "largest top1 per seed", "build seconds", *(f"met {c}" for c in cols)],
            [
                [
                    s,
                    (r.get("seeds_by_space") or {}).get(s),
                    by_space.get(s),
                    per_seed.get(s),
                    seconds.get(s),
                    *((met.get(s) or {}).get(c) for c in cols),
                ]
                for s in spaces
            ],
        )
    gaps = records(r, "gaps")
    if gaps:
        heading(out, 4, "Gap to the standalone twin (points; positive: the twin is better)")
        out += table(
            ["space", "data", "subnet", "seeds", "gap_points", "mean_gap_points"],
            [[x.get(k) for k in ("space", "data", "subnet", "seeds", "gap_points", "mean_gap_points")] for x in gaps],
        )
    if builds:
        heading(out, 4, "Builds")
        tops = union_keys(x.get("family_top1") for x in builds)
        out += table(
            ["space", "data", "seed", "seconds", "limit_s", "exit", "export", "epochs", *(f"top1 {t}" for t in tops)],
            [
                [
                    *(x.get(k) for k in ("space", "data", "seed", "seconds", "limit_s", "exit", "export")),
                    (x.get("train") or {}).get("epochs"),
                ]
                + [(x.get("family_top1") or {}).get(t) for t in tops]
                for x in builds
            ],
        )
        stages = union_keys(x.get("timing_s") for x in builds)
        out += ["Stage seconds (`timing_s`):", ""]
        out += table(
            ["space", "data", "seed", *stages],
            [[x.get("space"), x.get("data"), x.get("seed"), *((x.get("timing_s") or {}).get(s) for s in stages)] for x in builds],
        )
    rows = records(r, "rows")
    if rows:
        keys = [
            "space",
            "data",
            "subnet",
            "seed",
            "flops",
            "supernet_top1",
            "standalone_top1",
            "gap_points",
            "epochs",
            "standalone_train_s",
        ]
        out += ["<details><summary>Per-seed subnets (archs in the JSON)</summary>", ""]
        out += table(keys, [[x.get(k) for k in keys] for x in rows])
        out += ["</details>", ""]
    gpu = r.get("gpu")
    if isinstance(gpu, dict):
        heading(out, 4, "GPU step time")
        out += kv_table(flatten(gpu).items())


def render_natural_images(r: Result, out: Lines) -> None:
    """natural_images.py merges each stage's keys into one JSON: render the stages that are there."""
    setup(
        out,
        [
            ("Data", r.get("data")),
            (
                "Seeds",
                r.get("seeds")
                if r.has("seeds")
                else Md(f"the build's training seed: {escape(fmt((r.data.get('train') or {}).get('seed')))}"),
            ),
            (
                "Sample size",
                Md(f"{escape(fmt(r.get('test_images')))} test images (`test_images`)") if r.has("test_images") else not_recorded(),
            ),
            ("Host", host_line(r.get("host"))),
            ("Build directory", code(r.get("build_dir")) if r.has("build_dir") else None),
            ("Stages run (seconds)", Md(inline(r.get("stage_seconds")))),
            (
                "Stages' commits",
                Md(", ".join(f"`{k}` {escape(str((v or {}).get('commit'))[:7])}" for k, v in r.get("stage_provenance").items()))
                if r.has("stage_provenance")
                else None,
            ),
        ],
    )
    for key, title in (("targets", "Targets"), ("met", "Met")):
        if isinstance(r.data.get(key), dict):
            heading(out, 4, title)
            out += kv_table(flatten(r.get(key)).items())
    for stage in (_natural_build, _natural_twins, _natural_nfr, _natural_memory):
        stage(r, out)


def _natural_build(r: Result, out: Lines) -> None:
    """natural_images.py's `build` stage: the default build, its members and int8 artifacts."""
    if r.has("members") or r.has("build_minutes"):
        heading(out, 4, "Stage `build`: the default build")
        scalars = [
            "exit",
            "build_minutes",
            "epochs",
            "train_share",
            "largest_top1",
            "ladder_points",
            "repeats",
            "worst_int8_nfr",
            "int8_failed",
        ]
        out += kv_table([(k, r.get(k)) for k in scalars if r.has(k)])
        if isinstance(r.data.get("train"), dict):
            out += [f"Training recipe (`train`): {inline(r.get('train'))}", ""]
        for key in ("timing_s", "plan_s"):
            if isinstance(r.data.get(key), dict):
                out += [f"`{key}`:", ""]
                d = r.get(key)
                out += table(list(d), [list(d.values())])
        if isinstance(r.data.get("members"), list):
            out += ["Members (`members`):", ""]
            out += records_table(r.get("members"))
        if isinstance(r.data.get("int8"), list):
            out += ["int8 artifacts against their fp32 models (`int8`):", ""]
            keys = ["target", "format", "path", "flips", "nfr_vs_fp32", "interval", "verdict", "slowdown"]
            out += table(keys, [[code(x.get(k)) if k == "path" else x.get(k) for k in keys] for x in r.get("int8") if isinstance(x, dict)])


def _natural_twins(r: Result, out: Lines) -> None:
    """natural_images.py's `twins` stage."""
    if r.has("twins") or r.has("gaps_points"):
        heading(out, 4, "Stage `twins`: subnets against their standalone twins")
        if isinstance(r.data.get("gaps_points"), dict):
            out += kv_table(r.get("gaps_points").items(), ("subnet", "gap_points"))
        twins = [x for x in r.get("twins") or [] if isinstance(x, dict)]
        keys = ["subnet", "seed", "flops", "supernet_top1", "standalone_top1", "gap_points", "epochs", "standalone_train_s"]
        out += table(keys, [[x.get(k) for k in keys] for x in twins])


def _natural_nfr(r: Result, out: Lines) -> None:
    """natural_images.py's `nfr` stage."""
    nfr_keys = [
        "family_mean_nfr",
        "family_searched_mean_nfr",
        "baseline_mean_nfr",
        "pct_mean_nfr",
        "nfr_over_baseline",
        "nfr_over_pct",
        "top1_delta_points",
    ]
    if r.has("nfr") or any(r.has(k) for k in nfr_keys):
        heading(out, 4, "Stage `nfr`: the shipped family against the baseline and PCT")
        out += kv_table(flatten({k: r.get(k) for k in nfr_keys if r.has(k)}).items())
        if isinstance(r.data.get("nfr"), dict):
            _nfr_space(r.get("nfr"), out, 5)


def _natural_memory(r: Result, out: Lines) -> None:
    """natural_images.py's `memory` stage."""
    if isinstance(r.data.get("memory"), dict):
        heading(out, 4, "Stage `memory`: a large folder decoded and read once")
        out += kv_table((k, code(display_path(v)) if k == "folder" else v) for k, v in flatten(r.get("memory")).items())


def render_upgrade(r: Result, out: Lines) -> None:
    """upgrade.py: the targets' keys, then per seed and member the NFR against the deployed model with and without."""
    seeds = records(r, "seeds_raw")
    setup(
        out,
        [
            ("Data", r.get("data")),
            ("Seeds", r.get("seeds")),
            ("Sample size", Md("per member `n` test images (table); intervals are exact 95%")),
            ("Host", host_line(r.get("host"))),
        ],
    )
    keys = ["nfr_vs_deployed_ratio", "worst_top1_delta_points", "nfr_vs_deployed_with", "nfr_vs_deployed_without"]
    keys += ["internal_nfr_with", "internal_nfr_without", "old_training_images", "old_epochs"]
    out += kv_table((k, r.get(k)) for k in keys if r.has(k))
    if r.has("old_top1"):
        heading(out, 4, "The deployed (old) family's top-1 on its own test split: `old_top1`")
        out += kv_table(r.get("old_top1").items())
    columns = ["n", "nfr_with", "nfr_with_interval", "nfr_without", "nfr_without_interval", "positive_flips_with"]
    columns += ["positive_flips_without", "top1_with", "top1_without", "top1_deployed"]
    heading(out, 4, "Per seed and member: `seeds_raw`")
    rows = [[s.get("seed"), m.get("target"), *(m.get(c) for c in columns)] for s in seeds for m in s["members"]]
    out += table(["seed", "target", *columns], rows)
    per_seed = ["internal_nfr_with", "internal_nfr_without"]
    rows = [[s.get("seed"), *(s.get(k) for k in per_seed), s["seconds"].get("with"), s["seconds"].get("without")] for s in seeds]
    out += table(["seed", *per_seed, "seconds with", "seconds without"], rows)


def render_generic(r: Result, out: Lines) -> None:
    """Any other result: its scalar keys, then its nested values as tables."""
    data = {k: r.get(k) for k in list(r.data)}
    scalars = [(k, v) for k, v in data.items() if not isinstance(v, dict | list) or fmt(v).startswith("[")]
    out += kv_table(scalars)
    for k, v in data.items():
        if isinstance(v, dict) and v:
            heading(out, 4, f"`{k}`")
            out += kv_table(flatten(v).items())
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            heading(out, 4, f"`{k}`")
            out += records_table(v)


RENDERERS: list[tuple[str, Renderer]] = [
    ("build_speed*", render_build_speed),
    ("lut_accuracy*", render_lut_accuracy),
    ("natural_images*", render_natural_images),
    ("nfr_family*", render_nfr_family),
    ("quant_flips*", render_quant_flips),
    ("supernet_quality*", render_supernet_quality),
    ("upgrade*", render_upgrade),
]
"""File-name stem pattern -> renderer; the first match wins, `render_generic` when none does."""


def renderer_for(stem: str) -> Renderer:
    return next((fn for pattern, fn in RENDERERS if fnmatch.fnmatchcase(stem, pattern)), render_generic)


# ---------------------------------------------------------------------------------------------------------------
# docs/benchmarks.md


def script_for(r: Result, scripts: Path) -> Path | None:
    """The benchmark script that wrote a result: its `benchmark` key, else the longest script name its stem starts with."""
    name = r.data.get("benchmark")
    if isinstance(name, str) and (scripts / f"{name}.py").is_file():
        return scripts / f"{name}.py"
    candidates = [p for p in scripts.glob("*.py") if r.path.stem == p.stem or r.path.stem.startswith(p.stem + "_")]
    return max(candidates, key=lambda p: len(p.stem), default=None)


def docstring_parts(script: Path) -> tuple[str, str]:
    """A script's one-line summary and its targets paragraph (from "Target" to the paragraph's end), read without importing it."""
    try:
        doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError, ValueError):
        return "", ""
    lines = doc.splitlines()
    summary = lines[0].strip() if lines else ""
    targets: list[str] = []
    for line in lines:
        if targets and not line.strip():
            break
        if targets or line.startswith("Target"):
            targets.append(line.strip())
            if line.rstrip().endswith("."):  # the sentence (or sentences) that state the targets, not the paragraph's rest
                break
    return summary, " ".join(targets)


def provenance(r: Result) -> list[tuple[str, Any]]:
    """Keys (top level, or in `host`/`machine`) that say when or from which commit the result was recorded."""
    found = []
    for where, d in (("", r.data), ("host.", r.data.get("host")), ("machine.", r.data.get("machine"))):
        if isinstance(d, dict):
            for k, v in d.items():
                parts = k.lower().replace("-", "_").split("_")
                if any(p in PROVENANCE_KEYS for p in parts) and not isinstance(v, dict | list):
                    found.append((where + k, v))
                    if not where:
                        r.used.add(k)
    return found


def plots_for(results: Path) -> dict[str, list[Path]]:
    """Each PNG beside the results, under the JSON whose stem is the longest prefix of its name ("" for none)."""
    stems = sorted((p.stem for p in results.glob("*.json")), key=len, reverse=True)
    out: dict[str, list[Path]] = {}
    for png in sorted(results.glob("*.png")):
        owner = next((s for s in stems if png.stem == s or png.stem.startswith(s + "_")), "")
        out.setdefault(owner, []).append(png)
    return out


def data_of(r: Result) -> Any:
    """The result's dataset: its `data` key, else the `data` of its rows (build_speed's runs, supernet_quality's builds)."""
    if "data" in r.data:
        return r.data["data"]
    rows = [x for v in r.data.values() if isinstance(v, list) for x in v if isinstance(x, dict) and isinstance(x.get("data"), str)]
    return ", ".join(dict.fromkeys(x["data"] for x in rows)) or None


def relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def render_result(r: Result, out: Lines, docs: Path, scripts: Path, plots: list[Path]) -> None:
    name = r.path.name
    heading(out, 2, f"`{name}`")
    script = script_for(r, scripts)
    r.used.add("benchmark")
    if script is not None:
        summary, targets = docstring_parts(script)
        out += [f"Written by [`benchmarks/{script.name}`]({relative(script, docs)})" + (f": {escape(summary)}" if summary else "."), ""]
        if targets:
            out += [f"> {escape(targets)}", ""]
    else:
        out += ["No benchmark script in `benchmarks/` matches this file (no `benchmark` key naming one).", ""]
    recorded = provenance(r)
    out += [
        ("Recorded: " + ", ".join(f"`{k}` {escape(fmt(v))}" for k, v in recorded)) if recorded else "The JSON records no date or commit.",
        "",
    ]
    for png in plots:
        out += [f"![{png.name}]({relative(png, docs)})", ""]
    render = renderer_for(r.path.stem)
    body: Lines = []
    try:
        render(r, body)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        if render is render_generic:
            raise
        print(f"{COMMAND}: {name}: {render.__name__} failed ({type(exc).__name__}: {exc}); rendered generically", file=sys.stderr)
        r.used = {"benchmark", *(k for k, _ in recorded if "." not in k)}
        body = [
            f"_`{render.__name__}` could not read this file ({escape(type(exc).__name__)}: {escape(str(exc))}); "
            "its keys follow as they are._",
            "",
        ]
        render_generic(r, body)
    out += body
    rest = r.rest()
    if rest:
        heading(out, 4, "Other keys")
        out += kv_table((k, v if not isinstance(v, dict) else Md(inline(v))) for k, v in rest.items())


def render_benchmarks(results: Path = RESULTS, docs: Path = DOCS, scripts: Path = SCRIPTS) -> str:
    """The whole of docs/benchmarks.md, from every JSON in `results`."""
    files = sorted(results.glob("*.json"))
    parsed = [read_result(p) for p in files]
    plots = plots_for(results)
    where = relative(results, docs)
    out: Lines = [
        f"<!-- Generated by `{COMMAND}` from benchmarks/results/*.json: do not edit by hand; re-run it after a benchmark run. -->",
        "# Benchmark results",
        "",
        f"_Generated by `{COMMAND}` from [`benchmarks/results`]({where}); do not edit by hand._",
        "",
        "Each section is one result file: the benchmark script that wrote it, its data, seeds and sample sizes, its headline "
        "numbers and the rows behind them, and the plots beside it. Values are printed as the JSON holds them, rounded to 4 "
        "significant digits: fractions stay fractions (0.9 is 90%), `*_points` are percentage points, `*_s` and `seconds` are "
        "seconds, `–` is null (or absent) in the JSON, and a `(n items)` cell is a nested value left to the JSON. Quoted "
        "targets come from the script's docstring; keys a section does not show are listed under *Other keys*.",
        "",
    ]
    if not parsed:
        return "\n".join([*out, "No results yet.", ""])
    out += table(
        ["result", "benchmark", "data"],
        [[Md(f"[`{r.path.name}`](#{slug(r.path.name)})"), r.data.get("benchmark"), data_of(r)] for r in parsed],
    )
    for r in parsed:
        render_result(r, out, docs, scripts, plots.get(r.path.stem, []))
    orphans = plots.get("", [])
    if orphans:
        heading(out, 2, "Plots without a result file")
        for png in orphans:
            out += [f"![{png.name}]({relative(png, docs)})", ""]
    return "\n".join(out).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------------------------------------------
# docs/cli.md


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, width=CLI_WIDTH, max_help_position=32)


def portable(value: str) -> str:
    """A path default without this machine in it: relative to the repository or working directory, or under `~`."""
    path = Path(value)
    if not path.is_absolute():
        return value
    for base, label in ((ROOT, ""), (Path.cwd(), ""), (Path.home(), "~/")):
        try:
            return label + path.relative_to(base).as_posix()
        except ValueError:
            continue
    return value


def default_text(action: argparse.Action) -> Any:
    if action.required:
        return "required"
    if action.nargs == 0:
        return "flag"
    value = action.default
    if value is None or value is argparse.SUPPRESS:
        return "–"
    values = value if isinstance(value, list | tuple) else [value]
    return code(
        " ".join(portable(v.as_posix() if isinstance(v, Path) else str(v)) if isinstance(v, str | Path) else repr(v) for v in values)
    )


def help_text(action: argparse.Action, formatter: argparse.HelpFormatter) -> str | None:
    if not action.help:
        return None
    return " ".join(formatter._expand_help(action).split())


def usage(parser: argparse.ArgumentParser) -> str:
    formatter = _formatter(parser.prog)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return formatter.format_help().strip("\n")


def config_keys(parser: argparse.ArgumentParser) -> dict[str, tuple[str, Any]]:
    """For `regnas build`: each option's key in a config file (`[table] name`) and its default, by argparse dest."""
    if parser.prog.split()[-1] != "build":
        return {}
    from regnas.config import leaves
    from regnas.workflow.build import BuildOptions

    return {leaf.dest: (f"[{leaf.table}] {leaf.name}" if leaf.table else leaf.name, leaf.default) for leaf in leaves(BuildOptions)}


def options_tables(parser: argparse.ArgumentParser) -> Lines:
    formatter = _formatter(parser.prog)
    keys = config_keys(parser)
    shown = [
        a
        for a in parser._actions
        if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
    ]
    positionals = [a for a in shown if not a.option_strings]
    options = [a for a in shown if a.option_strings]
    out: Lines = []
    if positionals:
        out += ["Arguments:", ""]
        out += table(["argument", "help"], [[code(formatter._format_action_invocation(a)), help_text(a, formatter)] for a in positionals])
    if options and keys:
        out += ["Options (each also a key of the config file `--config` reads and every build writes as `DIR/build.toml`):", ""]
        rows = []
        for a in options:
            key, default = keys.get(a.dest, (None, None))
            shown = "flag" if a.nargs == 0 and not key else "–" if default is None or default == () else code(_shown(default))
            rows.append([code(formatter._format_action_invocation(a)), code(key) if key else "–", shown, help_text(a, formatter)])
        out += table(["option", "config key", "default", "help"], rows)
    elif options:
        out += ["Options:", ""]
        out += table(
            ["option", "default", "help"],
            [[code(formatter._format_action_invocation(a)), default_text(a), help_text(a, formatter)] for a in options],
        )
    return out


def _shown(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(map(str, value))
    return value.as_posix() if isinstance(value, Path) else str(value).lower() if isinstance(value, bool) else str(value)


def make_cli_parser() -> argparse.ArgumentParser:
    from regnas import cli

    factory = getattr(cli, "make_parser", None)
    if factory is None:
        raise RegnasError(
            "regnas.cli has no make_parser(); point make_cli_parser in docs/generate.py at the function that builds the parser, "
            f"then run {COMMAND}"
        )
    return factory(eager=True)


def render_cli() -> str:
    """The whole of docs/cli.md, from the parser `regnas.cli.make_parser()` builds."""
    from regnas import cli

    parser = make_cli_parser()
    subparsers = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    doc = (cli.__doc__ or "").split("\n\n")
    notes = [" ".join(p.split()) for p in doc if p.strip().startswith("Exit codes")]
    out: Lines = [
        f"<!-- Generated by `{COMMAND}` from regnas.cli.make_parser(): do not edit by hand; re-run it after a CLI change. -->",
        "# Command-line reference",
        "",
        f"_Generated by `{COMMAND}` from `regnas.cli.make_parser()`; do not edit by hand._ "
        "The [user guide](guide.md) explains the commands; this page lists every option as `--help` prints it.",
        "",
        escape(parser.description or ""),
        "",
        *(escape(n) for n in notes),
        *([""] if notes else []),
        "```text",
        usage(parser),
        "```",
        "",
    ]
    out += options_tables(parser)
    out += ["Every command also takes `-h`, `--help`.", ""]
    if subparsers is None:
        return "\n".join(out).rstrip("\n") + "\n"
    helps = {a.dest: a.help for a in subparsers._choices_actions}
    heading(out, 2, "Commands")
    out += table(
        ["command", "what it does"], [[Md(f"[`{name}`](#{slug('regnas ' + name)})"), helps.get(name)] for name in subparsers.choices]
    )
    for name, sub in subparsers.choices.items():
        heading(out, 2, f"`regnas {name}`")
        out += [escape(sub.description or helps.get(name) or ""), "", "```text", usage(sub), "```", ""]
        out += options_tables(sub)
    return "\n".join(out).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Writing


def render_pages() -> dict[str, str]:
    """Every generated page: file name under docs/ -> its text."""
    return {"benchmarks.md": render_benchmarks(), "cli.md": render_cli()}


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it onto `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def stale_pages(pages: dict[str, str], docs: Path = DOCS) -> list[str]:
    """The pages whose file under `docs` differs from `pages` (or is missing)."""
    return [name for name, text in pages.items() if not (docs / name).is_file() or (docs / name).read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=COMMAND, description="Generate docs/benchmarks.md and docs/cli.md.")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when a page differs from what would be written")
    args = ap.parse_args(argv)
    try:
        pages = render_pages()
    except RegnasError as exc:
        print(f"{COMMAND}: error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        stale = stale_pages(pages)
        for name in stale:
            print(f"docs/{name} is stale: run {COMMAND}", file=sys.stderr)
        return 1 if stale else 0
    for name, text in pages.items():
        path = DOCS / name
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            print(f"docs/{name} is current")
            continue
        write_atomic(path, text)
        print(f"wrote docs/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

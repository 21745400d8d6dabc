"""Human-readable views of a build: a self-contained `report.html` and a markdown summary.

Both are rendered from `report.json` alone (read as a `BuildReport`: members and artifacts as records, the
sections that have none, such as search candidates and LUTs, as written), so `regnas report BUILD_DIR` can
redo them at any time. The HTML embeds its plots as PNG data URIs and loads nothing from anywhere else.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from regnas.builddir import ArtifactRecord, BuildReport, MemberRecord, RunRecord  # noqa: E402
from regnas.io import atomic_path  # noqa: E402


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def _budget(m: MemberRecord) -> str:
    if m.budget_latency_ms is not None:
        return f"{m.budget_latency_ms:.3f} ms"
    return "–" if m.budget_flops is None else f"{m.budget_flops / 1e6:.2f} MFLOPs"


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _member_rows(report: BuildReport) -> list[list[str]]:
    """Family then baseline, one row each: cost, budget, test top-1 and NFR against the member before."""
    return [
        [kind, m.target, f"{m.flops / 1e6:.2f}", _budget(m), _ms(m.predicted_latency_ms), f"{m.params:,}"]
        + [_pct(m.top1), _pct(m.nfr_vs_prev)]
        for kind, members in (("family", report.family), ("baseline", report.baseline))
        for m in members
    ]


DEPLOYED_COLUMNS = ("target", "deployed model", "NFR vs deployed [95%]", "positive flips", "top-1", "without --deployed: NFR", "top-1")


def _deployed_rows(section: dict[str, Any]) -> list[list[str]]:
    """Per member with a deployed model: its flips against it with their interval, beside the family searched without it."""
    rows = []
    for m in section.get("members", []):
        w, wo = m["with"], m["without"]
        nfr = f"{_pct(w['nfr'])} [{_pct(w['nfr_interval'][0])}, {_pct(w['nfr_interval'][1])}] ({w['flips']} of {w['n']})"
        rows.append([m["target"], w["deployed"], nfr, str(w["positive_flips"]), _pct(m["top1_with"])])
        rows[-1] += [f"{_pct(wo['nfr'])} [{_pct(wo['nfr_interval'][0])}, {_pct(wo['nfr_interval'][1])}]", _pct(m["top1_without"])]
    return rows


def _mean_nfr(nfr_vs_prev: list[float | None]) -> float | None:
    """Mean NFR between consecutive members (the first member has none)."""
    flips = [v for v in nfr_vs_prev[1:] if v is not None]
    return float(np.mean(flips)) if flips else None


def markdown_summary(report: BuildReport) -> str:
    """A pull-request comment: the family against the baseline, nesting, flips and the artifact check."""
    lines = [
        "### regnas build",
        "",
        "| | target | MFLOPs | budget | predicted ms | params | top-1 | NFR vs previous |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _member_rows(report)]
    for m in report.family:
        if m.same_as_previous:
            lines.append(f"\n**Warning**: family member {m.target} has the same arch as the one before it: its larger budget buys nothing.")
    lines += ["", "| pair | nested | shared weights (of larger) |", "| --- | --- | --- |"]
    for n in report.sections["nesting"]:
        lines.append(
            f"| {n['smaller']} ⊂ {n['larger']} | {'yes' if n['contains'] and n['literal'] else 'no'} | {n['shared_weight_fraction']:.3f} |"
        )
    fam, base = (_mean_nfr([m.nfr_vs_prev for m in ms]) for ms in (report.family, report.baseline))
    if fam is not None and base is not None:
        lines += ["", f"Mean NFR between consecutive members: family {_pct(fam)}, independent baseline {_pct(base)}."]
    if deployed := report.sections.get("deployed"):
        rewards = f"reward {deployed['reward']}; searched without them: {deployed['without_reward']}"
        lines += ["", f"Against the deployed models on test ({rewards}):"]
        lines += ["", "| " + " | ".join(DEPLOYED_COLUMNS) + " |", "|" + " --- |" * len(DEPLOYED_COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in _deployed_rows(deployed)]
    if finetune := report.sections.get("finetune"):
        before = finetune["before"]  # target, top-1 and NFR of each member before the fine-tune
        flips = _mean_nfr([m["nfr_vs_prev"] for m in before])
        lines.append(
            f"The family is fine-tuned (`--finetune {finetune['mode']}`); before it, top-1 "
            + " / ".join(_pct(m["top1"]) for m in before)
            + (f" and mean NFR {_pct(flips)}." if flips is not None else ".")
        )
    if report.artifacts:
        lines += ["", "| " + " | ".join(ARTIFACT_COLUMNS) + " |", "|" + " --- |" * len(ARTIFACT_COLUMNS)]
        lines += ["| " + " | ".join(_artifact_cells(a)) + " |" for a in report.artifacts]
        for a in report.artifacts:
            q = a.quantization
            if q and q["after"] != q["before"]:
                lines.append(
                    f"- {a.path}: flip-aware quantization kept {q['after']['options']} "
                    f"({_pct(q['before']['nfr_val'])} → {_pct(q['after']['nfr_val'])} val NFR vs fp32{_fallback_cost(q)})"
                )
        lines += [f"- {on_device(a)}" for a in report.artifacts if a.device]
        runs = [(a, r) for a in report.artifacts for r in a.runs]
        if runs:
            lines += ["", "Other runs: the other runtimes each target deploys an artifact with, and its device (`--rpc`).", ""]
            lines += ["| " + " | ".join(RUN_COLUMNS) + " |", "|" + " --- |" * len(RUN_COLUMNS)]
            lines += ["| " + " | ".join(_run_cells(a, r)) + " |" for a, r in runs]
        lines += ["", f"Artifact check on the test split: {_check_verdict(report)}."]
    return "\n".join(lines) + "\n"


def _fallback_cost(q: dict) -> str:
    """What per-unit fallback cost in latency, beside the target's cap; empty when it did not run."""
    ms = q.get("latency_ms") or {}
    if "chosen" not in ms:
        return ""
    cap = f", cap {q['max_slowdown']:g}×" if "max_slowdown" in q else ""  # builds exported before the cap have none
    return f"; {len(q.get('kept_float', []))} units in float, {ms['chosen'] / ms['fully_quantized']:.2f}× its fully quantized latency{cap}"


ARTIFACT_COLUMNS = (
    "artifact",
    "runtime",
    "status",
    "test top-1",
    "flips vs fp32",
    "NFR vs fp32 [95%]",
    "verdict",
    "NFR vs previous member",
)


def _artifact_cells(a: ArtifactRecord) -> list[str]:
    """One artifact's row: what ran, its flips against its fp32 model with their interval and verdict."""
    nfr = "–"
    if a.nfr_vs_fp32 is not None:
        low, high = a.nfr_interval or (None, None)
        nfr = _pct(a.nfr_vs_fp32) + ("" if low is None else f" [{_pct(low)}, {_pct(high)}]")
    flips = "–" if a.flips is None else str(a.flips)
    return [a.path, a.runtime, a.status, _pct(a.top1), flips, nfr, a.verdict or "–", _pct(a.nfr_vs_prev)]


RUN_COLUMNS = ("artifact", "runtime", "where", "status", "test top-1", "flips vs fp32", "NFR vs fp32 [95%]", "verdict", "vs its run here")


def agreement(vs: dict | None) -> str:
    """Disagreements and flips against another run of the same graph, and the classes of the images they differ on."""
    if not vs:
        return "–"
    classes = vs.get("classes") or {}
    where = ", ".join(f"{name} {n}" for name, n in list(classes.items())[:3]) + (", …" if len(classes) > 3 else "")
    return f"{vs['disagreements']} disagreements, {vs['flips']} flips" + (f" ({where})" if where else "")


def _run_cells(a: ArtifactRecord, r: RunRecord) -> list[str]:
    """One more run of an artifact: where, its flips against the fp32 model, and its agreement with the artifact's own run."""
    nfr = "–"
    if r.nfr_vs_fp32 is not None:
        low, high = r.nfr_interval or (None, None)
        nfr = _pct(r.nfr_vs_fp32) + ("" if low is None else f" [{_pct(low)}, {_pct(high)}]")
    flips = "–" if r.flips is None else str(r.flips)
    return [a.path, r.runtime, r.device or "this host", r.status, _pct(r.top1), flips, nfr, r.verdict or "–", agreement(r.vs)]


def on_device(a: ArtifactRecord) -> str:
    """Where a device-checked artifact ran, and how it agreed with this host's build of the same graph."""
    line = f"{a.path} ran on {a.device}"
    if a.vs_host:
        line += f": {agreement(a.vs_host)} vs {a.vs_host['artifact']} (this host)"
    return line


def _check_verdict(report: BuildReport) -> str:
    if not report.passed:
        return "FAILED: " + "; ".join(report.failures)
    undecided = report.inconclusive
    return "passed" + (f"; {len(undecided)} artifact(s) inconclusive on this many test images (see the verdicts)" if undecided else "")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _pareto_plot(report: BuildReport) -> str | None:
    search = report.sections.get("search")
    if not search:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    points = []
    for kind, colour in (("baseline", "#9ecae1"), ("family", "#bdbdbd")):
        for target, cands in search.get(kind, {}).items():
            xs = [c[0] / 1e6 for c in cands]
            ys = [100 * c[1] for c in cands]
            points += list(zip(xs, ys))
            ax.scatter(xs, ys, s=8, color=colour, label=f"{kind} candidates" if target == next(iter(search[kind])) else None)
    front, best = [], -1.0
    for x, y in sorted(points):
        if y > best:
            front.append((x, y))
            best = y
    if front:
        ax.plot(*zip(*front), color="black", lw=1, label="Pareto front (val)")
    for kind, marker, colour in (("family", "*", "#d62728"), ("baseline", "s", "#1f77b4")):
        members = [m for m in (report.family if kind == "family" else report.baseline) if m.val_top1 is not None]
        xs, ys = [m.flops / 1e6 for m in members], [100 * m.val_top1 for m in members]
        ax.scatter(xs, ys, marker=marker, s=120, color=colour, label=kind, zorder=3)
        for m in members:
            ax.annotate(m.target, (m.flops / 1e6, 100 * m.val_top1), textcoords="offset points", xytext=(5, 5), fontsize=8)
    for m in report.family:
        if m.budget_flops is not None:  # latency budgets have no place on a FLOP axis
            ax.axvline(m.budget_flops / 1e6, color="#888", ls="--", lw=0.8)
    ax.set_xlabel("MFLOPs (multiply-accumulates); dashed: FLOP budgets")
    ax.set_ylabel("val top-1 (%)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Search: top-1 vs FLOPs")
    return _png(fig)


def trade_off_plot(points: list[dict[str, Any]], title: str) -> str | None:
    """Mean NFR between consecutive members against mean top-1, one point per reward (or method), front marked."""
    if len(points) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    xs, ys = [100 * p["mean_nfr"] for p in points], [100 * p["mean_top1"] for p in points]
    ax.scatter(xs, ys, color="#d62728", zorder=3)
    for p, x, y in zip(points, xs, ys):
        ax.annotate(p["reward"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front, best = [], -1.0
    for x, y in sorted(zip(xs, ys)):
        if y > best:
            front.append((x, y))
            best = y
    ax.plot(*zip(*front), color="black", lw=1, label="Pareto front (fewer flips, higher top-1)")
    ax.set_xlabel("mean NFR between consecutive members (%, test)")
    ax.set_ylabel("mean top-1 of the members (%, test)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title)
    return _png(fig)


def _heatmaps(report: BuildReport) -> str:
    """NFR between members (row = reference, column = new model), for the family and the baseline; with `--deployed`,
    the family's panel gains a row per deployed model (every member's flips against it)."""
    members = [x.target for x in report.family]
    deployed = report.sections.get("deployed") or {}
    extra = [f"deployed {m['target']}" for m in deployed.get("members", [])] if deployed.get("flip_matrix") else []
    sections = [
        ("REG-NAS family", [*report.sections["flip_matrix"], *(deployed.get("flip_matrix") or [])], members + extra),
        ("independent baseline", report.sections["baseline"]["flip_matrix"], [x.target for x in report.baseline]),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8 + 0.4 * len(extra)))
    vmax = max(100 * max(max(r) for r in matrix) for _, matrix, _ in sections) or 1.0
    for ax, (title, matrix, rows) in zip(axes, sections):
        m = 100 * np.asarray(matrix)
        ax.imshow(m, cmap="Reds", vmin=0, vmax=vmax)
        ax.set_xticks(range(m.shape[1]), rows[: m.shape[1]])
        ax.set_yticks(range(m.shape[0]), rows)
        ax.set_xlabel("new model")
        ax.set_ylabel("reference")
        if m.shape[0] > m.shape[1]:
            ax.axhline(m.shape[1] - 0.5, color="black", linewidth=1)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                colour = "white" if m[i, j] > vmax / 2 else "black"
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8, color=colour)
        ax.set_title(f"{title}: NFR (%)")
    return _png(fig)


def _per_class_plot(report: BuildReport) -> str | None:
    classes = report.sections.get("config", {}).get("data", {}).get("class_names")
    pairs = [(kind, m) for kind, ms in (("family", report.family), ("baseline", report.baseline)) for m in ms if m.flips_per_class]
    if not pairs or not classes:
        return None
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / len(pairs)
    for k, (kind, m) in enumerate(pairs):
        ax.bar(
            np.arange(len(classes)) + k * width,
            m.flips_per_class,
            width,
            label=f"{kind}: → {m.target}",
            hatch="//" if kind == "baseline" else None,
        )
    ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, classes, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("negative flips (test)")
    ax.legend(fontsize=8)
    ax.set_title("Negative flips per class, against the previous member")
    return _png(fig)


def _table(rows: list[list[str]], head: list[str]) -> str:
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _artifact_table(report: BuildReport) -> str:
    arts = report.artifacts
    if not arts:
        return "<p>No artifacts: the build ran with --no-export. Run regnas export on the build directory.</p>"
    rows = [[*_artifact_cells(a), (a.sha256 or "–")[:12]] for a in arts]
    devices = "".join(f"<p>{html.escape(on_device(a))}</p>" for a in arts if a.device)
    runs = [_run_cells(a, r) for a in arts for r in a.runs]
    if runs:
        devices += "<p>Other runs: the other runtimes each target deploys an artifact with, and its device (--rpc).</p>"
        devices += _table(runs, list(RUN_COLUMNS))
    return _table(rows, [*ARTIFACT_COLUMNS, "sha256"]) + devices + f"<p>Check on the test split: {html.escape(_check_verdict(report))}</p>"


def _artifact_heatmap(report: BuildReport) -> str | None:
    matrix = report.sections.get("check", {}).get("flip_matrix")
    if not matrix or len(matrix["labels"]) < 2:
        return None
    m, names = 100 * np.asarray(matrix["nfr"]), matrix["labels"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(names), 1.0 + 0.6 * len(names)))
    ax.imshow(m, cmap="Reds", vmin=0, vmax=max(m.max(), 1e-9))
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{m[i, j]:.1f}", ha="center", va="center", fontsize=6)
    ax.set_title("NFR (%) between runnable artifacts (row = reference)")
    return _png(fig)


def _lut_section(report: BuildReport) -> str:
    luts = report.sections.get("luts") or {}
    if not luts:
        return "<p>No target has a LUT for this space and input size; budgets are FLOPs. Run regnas profile to measure one.</p>"
    rows = []
    for name, lut in luts.items():
        p, v = lut["provenance"], lut.get("validation") or {}
        got = f"{_pct(v.get('within_10pct'))} within 10%, Spearman {v['spearman']:.3f}" if v else "not validated"
        where = f"{p.get('cpu', '?')} ({p.get('host', '?')})"
        rows.append([name, p.get("runtime_version", "?"), f"{p.get('threads')} threads", where, str(p.get("date", "?")), got])
    table = _table(rows, ["target", "runtime", "threads", "measured on", "date", "validation"])
    validated = [(name, lut["validation"]) for name, lut in luts.items() if lut.get("validation")]
    if not validated:
        return table
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, v in validated:
        ax.scatter(v["measured_ms"], v["predicted_ms"], s=12, label=name)
    lo = min(min(v["measured_ms"]) for _, v in validated)
    hi = max(max(v["measured_ms"]) for _, v in validated)
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.fill_between([lo, hi], [0.9 * lo, 0.9 * hi], [1.1 * lo, 1.1 * hi], color="grey", alpha=0.15, label="±10%")
    ax.set_xlabel("measured (ms)")
    ax.set_ylabel("LUT prediction (ms)")
    ax.legend(fontsize=8)
    ax.set_title("LUT prediction vs measurement (held-out subnets)")
    return table + f"<img alt='LUT prediction vs measurement' src='{_png(fig)}'>"


def render_html(report: BuildReport) -> str:
    """The whole report as one HTML page with embedded plots."""
    members = _table(_member_rows(report), ["", "target", "MFLOPs", "budget", "predicted ms", "params", "test top-1", "NFR vs previous"])
    nest = _table(
        [
            [kind, f"{n['smaller']} ⊂ {n['larger']}", str(n["contains"]), str(n["literal"]), f"{n['shared_weight_fraction']:.3f}"]
            for kind, pairs in (("family", report.sections["nesting"]), ("baseline", report.sections["baseline"]["nesting"]))
            for n in pairs
        ],
        ["", "pair", "contains", "literal slices", "shared weight fraction"],
    )
    figures = [
        ("Flips between members", _heatmaps(report)),
        ("Search", _pareto_plot(report)),
        ("Flips against top-1, per reward", trade_off_plot(report.sections.get("reward_sweep", []), "Family per reward, and the baseline")),
        ("Flips per class", _per_class_plot(report)),
        ("Flips between artifacts", _artifact_heatmap(report)),
    ]
    imgs = "".join(f"<h2>{t}</h2><img alt='{t}' src='{src}'>" for t, src in figures if src)
    cfg = report.sections.get("config", {})
    data = cfg.get("data", {})
    reward = cfg.get("reward", {}).get("name", "?")
    lut = _lut_section(report)
    artifacts = _artifact_table(report)
    if deployed := report.sections.get("deployed"):
        members += "<p>Against the deployed models on test (the family searched without them beside it):</p>"
        members += _table(_deployed_rows(deployed), list(DEPLOYED_COLUMNS))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>regnas build report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
th {{ background: #f3f3f3; }} img {{ max-width: 100%; }} .meta {{ color: #666; }}
</style></head><body>
<h1>regnas build report</h1>
<p class="meta">data {html.escape(str(data.get("name", "?")))} {html.escape(str(data.get("input_shape", "")))},
space {html.escape(str(cfg.get("space", "?")))}, seed {html.escape(str(cfg.get("seed", "?")))}, reward {html.escape(str(reward))}</p>
<h2>Family and independent baseline</h2>{members}
<h2>Nesting</h2>{nest}
<h2>Artifacts</h2>{artifacts}
{imgs}
<h2>Latency</h2>{lut}
</body></html>
"""


def write_reports(report: BuildReport) -> list[Path]:
    """Write report.html and summary.md next to the build's report.json, atomically."""
    out = []
    for name, text in (("report.html", render_html(report)), ("summary.md", markdown_summary(report))):
        path = report.out / name
        with atomic_path(path) as tmp:
            tmp.write_text(text)
        out.append(path)
    return out

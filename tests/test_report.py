"""report.html and summary.md, written by regnas build and regnas report, on the shared digits build."""

import shutil
import subprocess

import numpy as np
import pytest

from regnas.cli import main


@pytest.mark.slow
def test_build_writes_a_self_contained_html_report_and_summary(built_copy):
    out = built_copy
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3  # heatmaps, search Pareto plot, flips per class
    assert "http://" not in page and "https://" not in page
    assert page.count("<td>phone ⊂ edge</td>") == 2  # nesting rows for the family and the baseline
    summary = (out / "summary.md").read_text()
    assert "| family | phone |" in summary and "| baseline | server |" in summary
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").read_text() == page


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian package chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(built, tmp_path):
    out, _, _ = built
    shot = tmp_path / "report.png"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
    ]
    cmd = ["chromium", *flags, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,2400", f"--screenshot={shot}"]
    subprocess.run([*cmd, (out / "report.html").as_uri()], capture_output=True, timeout=120, check=True)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (2400, 1100)
    assert (pixels < 128).mean() > 0.01  # tables and plots drew ink, not a blank page


def test_report_of_a_directory_without_a_build_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "has no report.json" in capsys.readouterr().err


def test_summary_states_what_per_unit_fallback_cost_in_latency():
    from regnas.report import _fallback_cost

    record = {"kept_float": ["a", "b"], "latency_ms": {"chosen": 0.26, "fully_quantized": 0.2}, "max_slowdown": 1.3}
    assert _fallback_cost(record) == "; 2 units in float, 1.30× its fully quantized latency, cap 1.3×"
    del record["max_slowdown"]  # exported before the cap existed
    assert _fallback_cost(record) == "; 2 units in float, 1.30× its fully quantized latency"
    assert _fallback_cost({"kept_float": []}) == ""  # the global options sufficed: no fallback ran


def _broken(report: dict, case: str) -> dict:
    if case == "no flip_matrix":
        del report["flip_matrix"]
    elif case == "member without flops":
        del report["family"][0]["flops"]
    elif case == "top1 as text":
        report["family"][1]["top1"] = "99%"
    elif case == "1x1 baseline matrix":
        report["baseline"]["flip_matrix"] = [[0.0]]
    elif case == "check is null":
        report["check"] = None
    elif case == "artifacts not records":
        report["artifacts"] = ["onnx"]
    return report


@pytest.mark.parametrize(
    "case,message",
    [
        ("no flip_matrix", "flip_matrix is missing"),
        ("member without flops", "family[0].flops is missing"),
        ("top1 as text", "family[1].top1 is not valid ('99%')"),
        ("1x1 baseline matrix", "baseline.flip_matrix is not a 3x3 matrix"),
        ("check is null", "check is not an object"),
        ("artifacts not records", "artifacts[0] is not an object"),
    ],
)
def test_a_report_that_breaks_its_schema_is_one_line_exit_2(built_copy, capsys, case, message):
    import json

    out = built_copy
    report = json.loads((out / "report.json").read_text())
    (out / "report.json").write_text(json.dumps(_broken(report, case)))
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_every_value_that_reaches_the_html_is_escaped(built_copy):
    import json

    out = built_copy
    report = json.loads((out / "report.json").read_text())
    script = "<script>alert(1)</script>"
    report["config"]["seed"] = script
    report["config"]["data"]["name"] = script
    report["config"]["data"]["class_names"][0] = script
    report["artifacts"][0]["status"] = f"skipped: {script}"
    (out / "report.json").write_text(json.dumps(report))
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page

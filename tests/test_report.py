"""report.html and summary.md, written by regnas build and regnas report, on the shared digits build."""

import shutil
import subprocess

import numpy as np
import pytest

from regnas.cli import main


@pytest.mark.slow
def test_build_writes_a_self_contained_html_report_and_summary(built):
    out, _, _ = built
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

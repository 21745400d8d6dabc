"""The Python API: `regnas.build`, `regnas.check` and `regnas.gate` return records; bad input raises RegnasError."""

from __future__ import annotations

import pytest

import regnas
from regnas.builddir import Verdict
from regnas.data import load_dataset
from regnas.search import SearchConfig


def test_build_returns_typed_records_and_options_are_checked(digits_supernet, tmp_path):
    _, ckpt = digits_supernet
    report = regnas.build(
        targets="phone,server",
        supernet=ckpt / "supernet.safetensors",
        out=tmp_path / "api",
        search=SearchConfig(population=4, generations=2),
        finetune_mode="none",
        export=False,
    )
    assert isinstance(report, regnas.BuildReport) and [m.target for m in report.family] == ["phone", "server"]
    assert report.member("server").flops >= report.member("phone").flops and len(report.baseline) == 2
    assert not report.checked and report.passed and report.exit_code(strict=True) == 0
    assert regnas.BuildReport.read(tmp_path / "api").family == report.family
    with pytest.raises(regnas.RegnasError, match="no member for target 'edge'"):
        report.member("edge")
    with pytest.raises(regnas.RegnasError, match="unknown build option"):
        regnas.build(target="phone")
    with pytest.raises(regnas.RegnasError, match="does not exist"):
        regnas.build(tmp_path / "missing.toml")


def test_check_and_gate_on_a_built_family(built_copy):
    out = built_copy
    report = regnas.check(out)
    ran = [a for a in report.artifacts if a.ran]
    assert ran and all(a.judged in set(Verdict) for a in ran)
    assert report.exit_code() == (1 if any(a.judged is Verdict.FAILED for a in ran) else 0)
    assert Verdict.of("inconclusive: needs about 3000 test images") is Verdict.INCONCLUSIVE
    result = regnas.gate(out / "edge", out / "server", data="digits", split="test", max_nfr=0.5, max_top1_drop=0.5)
    assert result.n == len(load_dataset("digits", 0)["test"]) and result.passed
    assert result.nfr == pytest.approx(report.member("server").nfr_vs_prev)  # the gate counts the flips the build reported

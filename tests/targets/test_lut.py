"""LUT files, the predictor and its calibration, profiling with resume, validation, on real ONNX Runtime timings."""

import hashlib
import json
import random
import time

import numpy as np
import pytest

from regnas.errors import RegnasError
from regnas.spaces import create_space, space_class
from regnas.targets import parse_target
from regnas.targets import profile as profile_mod
from regnas.targets.lut import LUT, find_lut, load_lut, lut_filename, save_lut, unit_key
from regnas.targets.profile import profile, random_archs, repeatability, validate

TARGET = parse_target({"name": "cpu", "runtime": "onnxruntime", "threads": 1, "budget": {"latency_ms": 1.0}}, "test")


@pytest.fixture(scope="module", autouse=True)
def _rounds_not_seconds():
    """Timing's wall-clock floor spreads a real device's samples over a minute; these tests count rounds instead."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(profile_mod, "MIN_TIMING_S", 0.0)
        yield


@pytest.fixture(scope="module")
def tiny_space():
    """mbv3 on digits with one kernel and one expand choice: 10 units, quick to profile for real."""
    cfg = space_class("mbv3").default_config((1, 8, 8), 10)
    return create_space("mbv3", {**cfg, "kernels": [3], "expands": [3], "depths": [1, 2]})


@pytest.fixture(scope="module")
def tiny_lut(tiny_space, tmp_path_factory):
    out = tmp_path_factory.mktemp("lut") / "cpu.json"
    return out, profile(TARGET, tiny_space, out, warmup=3, repeats=15, progress=False)


def test_profile_measures_every_unit_with_provenance(tiny_space, tiny_lut):
    out, lut = tiny_lut
    assert lut.complete and set(lut.entries) == {unit_key(u) for u in tiny_space.all_units()}
    assert all(0 < e["p10_ms"] <= e["median_ms"] <= e["p90_ms"] for e in lut.entries.values())
    p = lut.provenance
    assert p["runtime_version"].startswith("onnxruntime ") and p["threads"] == 1 and p["repeats"] == 15 and p["cpu"]
    assert load_lut(out).entries == lut.entries


def test_killed_profile_resumes_without_exporting_again(tiny_space, tmp_path, monkeypatch):
    out = tmp_path / "lut.json"
    real, calls = profile_mod.export_on_target, []

    def dies_after_three(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(profile_mod, "export_on_target", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        profile(TARGET, tiny_space, out, warmup=1, repeats=3, progress=False)
    assert not out.exists() and len(list((tmp_path / "lut.json.units").glob("*/artifact"))) == 3
    exported = []
    monkeypatch.setattr(profile_mod, "export_on_target", lambda *a, **k: exported.append(1) or real(*a, **k))
    lut = profile(TARGET, tiny_space, out, warmup=1, repeats=3, progress=False)
    assert lut.complete and len(lut.entries) == len(tiny_space.all_units())
    assert len(exported) == len(tiny_space.all_units()) - 3 and not (tmp_path / "lut.json.units").exists()


class _DriftingHost:
    """Items whose true latency is 1 + index ms, on a host that runs everything 3× slower for a stretch of calls."""

    def __init__(self, slow: range):
        self.calls, self.slow, self.order = 0, slow, []

    def runtime(self, index: int):
        host = self

        class Runtime:
            emulated = None

            def time_ms(self, x, warmup, repeats):
                host.calls += 1
                if repeats > 1:
                    host.order.append(index)
                return np.full(repeats, (1.0 + index) * (3.0 if host.calls in host.slow else 1.0))

        return Runtime()


def test_interleaved_timing_spreads_a_slow_phase_over_every_item(monkeypatch, tmp_path):
    from torch import nn

    n, repeats = 8, 40
    rounds = -(-repeats // profile_mod.BURST)
    host = _DriftingHost(range(n + 10, n + 10 + 2 * n))  # after the warm-ups: two rounds' worth of calls run 3× slower
    monkeypatch.setattr(profile_mod, "export_on_target", lambda m, s, t, work, r: work / "unit.onnx")
    items = [(str(i), nn.Identity(), (1, 2, 2)) for i in range(n)]
    index_of = {hashlib.sha256(k.encode()).hexdigest()[:16]: i for i, (k, _, _) in enumerate(items)}
    monkeypatch.setattr(profile_mod, "load_runtime", lambda name, path, threads, remote: host.runtime(index_of[path.parent.name]))
    timed = profile_mod.time_interleaved(items, TARGET, None, warmup=1, repeats=repeats, seed=0, cache=tmp_path)
    assert [t["median_ms"] for t in timed] == [1.0 + i for i in range(n)]  # every item saw the slow stretch in a minority of rounds
    per_round = [host.order[r * n : (r + 1) * n] for r in range(rounds)]
    assert all(sorted(r) == list(range(n)) for r in per_round) and len({tuple(r) for r in per_round}) > 1


def test_timing_rounds_go_on_until_the_minimum_time(monkeypatch, tmp_path):
    from torch import nn

    host = _DriftingHost(range(0))
    monkeypatch.setattr(profile_mod, "MIN_TIMING_S", 0.3)
    monkeypatch.setattr(profile_mod, "export_on_target", lambda m, s, t, work, r: work / "unit.onnx")
    slow = host.runtime(0)
    monkeypatch.setattr(profile_mod, "load_runtime", lambda name, path, threads, remote: slow)
    monkeypatch.setattr(type(slow), "time_ms", lambda self, x, warmup, repeats: (time.sleep(0.01), np.ones(repeats))[1])
    t0 = time.perf_counter()
    profile_mod.time_interleaved([("a", nn.Identity(), (1, 2, 2))], TARGET, None, warmup=1, repeats=profile_mod.BURST, cache=tmp_path)
    assert time.perf_counter() - t0 >= 0.3  # one round asked for, but the rounds spanned the minimum time


def _fit_on(lut, space, truth, n=12):
    lut = LUT(**{**lut.to_json(), "calibration": None})
    archs = random_archs(space, n, random.Random(0), set())
    lut.fit(space, archs, [truth(a) for a in archs])
    return lut, archs


def test_calibration_recovers_a_known_global_bias(tiny_space, tiny_lut):
    def truth(a):
        return 0.7 * lut.plain_ms(tiny_space, a) - 0.01 * len(tiny_space.units(a)) + 0.05

    lut = tiny_lut[1]
    fitted, archs = _fit_on(lut, tiny_space, truth)
    assert fitted.calibration["model"] == "global" and fitted.calibration["fitted_on"] == 12
    assert np.allclose(fitted.calibration["coef"], [0.7, -0.01, 0.05], atol=1e-6)
    other = tiny_space.sample(random.Random(99))
    assert fitted.predict_ms(tiny_space, other) == pytest.approx(truth(other))


def test_calibration_picks_per_stage_factors_when_stages_are_biased_differently(tiny_space, tiny_lut):
    """A runtime that runs stage 1 blocks at half their standalone cost: only per-group terms can say so."""

    def truth(a):
        factor = {"stage1": 0.5}
        return sum(lut.entries[unit_key(u)]["median_ms"] * factor.get(tiny_space.unit_group(u), 0.9) for u in tiny_space.units(a))

    lut = tiny_lut[1]
    fitted, archs = _fit_on(lut, tiny_space, truth)
    cal = fitted.calibration
    assert cal["model"] == "per_group" and cal["loo_rmspe"]["per_group"] < 1e-6 < cal["loo_rmspe"]["global"]
    coef = dict(zip(cal["terms"], cal["coef"]))
    assert coef["sum_ms[stage1]"] == pytest.approx(0.5) and coef["sum_ms[stage2]"] == pytest.approx(0.9)
    assert all(fitted.predict_ms(tiny_space, a) == pytest.approx(truth(a)) for a in archs)
    with pytest.raises(RegnasError, match="at least 4"):
        _fit_on(lut, tiny_space, truth, n=3)
    typo = LUT(**{**fitted.to_json(), "calibration": {**cal, "terms": ["sum_of_unit_ms", *cal["terms"][1:]]}})
    with pytest.raises(RegnasError, match="unknown calibration term 'sum_of_unit_ms'"):
        typo.predict_ms(tiny_space, archs[0])


def test_validate_scores_before_and_after_calibration(tiny_space, tiny_lut):
    _, lut = tiny_lut
    result = validate(TARGET, tiny_space, lut, n=6, n_fit=4, progress=False)
    for block in (result, result["before_calibration"]):
        assert block["n"] == 6 and 0 <= block["within_5pct"] <= block["within_10pct"] <= 1
        assert block["rmspe"] >= 0 and -1 <= block["spearman"] <= 1
    assert lut.calibration["fitted_on"] == 4 and lut.validation is result
    assert len(result["measured_ms"]) == 6 and all(m > 0 for m in result["measured_ms"])


def test_repeatability_times_the_same_subnets_twice(tiny_space):
    result = repeatability(TARGET, tiny_space, n=3, warmup=2, repeats=9)
    assert result["n"] == 3 and len(result["first_ms"]) == len(result["second_ms"]) == 3
    assert all(m > 0 for m in result["first_ms"] + result["second_ms"])
    for timed in (result["first_ms"], result["second_ms"]):  # the same subnets, smallest then largest first, in both passes
        assert timed[1] > timed[0]
    err = np.abs(np.array(result["second_ms"]) / np.array(result["first_ms"]) - 1)
    assert result["within_10pct"] == pytest.approx(float(np.mean(err <= 0.10)))


def test_bad_luts_are_one_line_errors(tiny_space, tiny_lut, tmp_path):
    out, lut = tiny_lut
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(RegnasError, match="not valid JSON"):
        load_lut(bad)
    obj = json.loads(out.read_text())
    del obj["entries"]
    bad.write_text(json.dumps(obj))
    with pytest.raises(RegnasError, match="missing entries"):
        load_lut(bad)
    other = create_space("mbv3", space_class("mbv3").default_config((1, 28, 28), 10))
    target = parse_target({**TARGET.to_json(), "lut": str(out)}, "t")
    with pytest.raises(RegnasError, match="measured for a mbv3 config with another .*input_shape"):
        find_lut(target, other)
    assert find_lut(target, tiny_space)[1].entries == lut.entries
    assert lut_filename("edge", "mbv3", (1, 8, 8)) == "edge-mbv3-1x8x8.json"
    save_lut(tmp_path / "copy.json", lut)
    assert load_lut(tmp_path / "copy.json").to_json() == lut.to_json()


def test_the_built_in_luts_serve_any_class_count_and_name_what_differs():
    from regnas.targets import resolve_targets

    (phone,) = resolve_targets("phone")
    three = create_space("mbv3", space_class("mbv3").default_config((1, 8, 8), 3))
    path, lut = find_lut(phone, three)
    assert lut.predict_ms(three, three.largest()) > 0  # the head's latency is the 10-class head's: a few multiply-adds
    wider = create_space("mbv3", {**three.config, "input_shape": [3, 8, 8]})
    assert "another input_shape" in lut.mismatch(phone, wider)
    other = parse_target({"name": "x", "runtime": "onnxruntime", "budget": {"flops": 1e6}}, "test")
    assert lut.mismatch(other, three) == "executorch/fp32, not onnxruntime/fp32"


def test_cpu_model_and_flags_are_read_from_cpuinfo_where_there_is_one(tmp_path, monkeypatch):
    """What LUTs and benchmark results record of the CPU: x86 names its flags `flags`, Arm `Features`."""
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp\nCPU part\t: 0xd0c\n"
    for text, model, flags in ((x86, "AMD EPYC", {"fpu", "avx2", "fma"}), (arm, None, {"fp", "asimd", "asimddp"})):
        (tmp_path / "cpuinfo").write_text(text)
        monkeypatch.setattr(profile_mod, "Path", lambda _: tmp_path / "cpuinfo")
        assert profile_mod.cpu_flags() == flags
        assert profile_mod.cpu_model() == (model or profile_mod.platform.processor() or profile_mod.platform.machine())

"""Every exporter writes real artifacts (the end-to-end build's, and a trained digits subnet's); what runs here agrees with torch."""

import sys

import numpy as np
import onnx
import pytest

from regnas.artifacts import artifact_path
from regnas.builddir import BuildReport, load_member, member_dir
from regnas.data import to_float
from regnas.errors import RegnasError, Unavailable
from regnas.evaluate import Evaluator, predict
from regnas.exporters import ExportJob, create_exporter, exporter_names
from regnas.exporters.onnx import export_onnx
from regnas.io import sha256_file
from regnas.runtimes import load_runtime

CASES = [(name, p) for name in exporter_names() for p in create_exporter(name).precisions]


@pytest.fixture(scope="module")
def member(digits, digits_supernet):
    net, _ = digits_supernet
    ev = Evaluator(net, digits)
    space = net.space
    return ev.subnet(space.sample(__import__("random").Random(3))), digits


@pytest.mark.parametrize("name,precision", CASES)
def test_exporter_writes_artifacts_that_run_or_say_why_not(built, digits, tmp_path, name, precision):
    """On the end-to-end build (the built-in targets name every exporter and precision): each artifact exists and runs
    here, agreeing with its member in torch, or says why it cannot."""
    out = built[0]
    report = BuildReport.read(out)
    records = [a for a in report.artifacts if a.format == name and a.precision == precision]
    assert records, f"no built-in target exports {name} {precision}"
    x, ran = digits["test"].x, False
    for a in records:
        path = artifact_path(out, a)
        if a.sha256 is None:  # not written: the exporter said why
            assert a.status.startswith("skipped: ") and not path.exists()
            if a.runtime == "tensorrt":
                assert a.command.startswith("trtexec --onnx=") and f"--{precision}" in a.command
            continue
        assert path.exists() and sha256_file(path) == a.sha256
        _, net = load_member(member_dir(out, a.target))
        if name == "tvm":  # TVM lays functions out differently per compile: what decides behaviour is recorded instead
            graph = export_onnx(net, digits.input_shape, tmp_path / "model-fp32.onnx")
            assert a.options["compiled_from_sha256"] == sha256_file(graph) and a.options["byte_identical_rebuilds"] is False
        if path.suffix == ".onnx":
            onnx.checker.check_model(str(path), full_check=True)  # strict consumers (TensorRT's parser) need a valid graph
        try:
            preds = load_runtime(a.runtime, path).predict(x.numpy())
        except Unavailable as exc:
            assert a.runtime in ("coreml", "tvm"), exc  # Core ML predicts on macOS only; aarch64 TVM needs --rpc
            if a.runtime == "tvm":
                assert path.read_bytes()[:4] == b"\x7fELF" and path.read_bytes()[18] == 0xB7  # EM_AARCH64
            continue
        ran = True
        agree = np.mean(preds == predict(net, x))
        # fp32 must be exact; fp16 close; int8 with its default options may saturate (what flip-aware quantization fixes)
        floor = {"fp32": 1.0, "fp16": 0.97, "int8": 0.5}[precision]
        assert agree >= floor, f"{a.label} agrees with torch on {agree:.1%}"
    assert name == "coreml" or ran  # everything else has a build that runs on this machine


def test_unknown_exporter_and_missing_backend_are_one_line_errors(monkeypatch):
    from regnas.targets import parse_target

    with pytest.raises(RegnasError, match="unknown exporter 'openvino'"):
        parse_target({"name": "x", "exporters": ["openvino"], "budget": {"flops": 1}}, "x.toml")
    with pytest.raises(RegnasError, match="exporter onnx takes a list of precisions"):
        parse_target({"name": "x", "exporters": {"onnx": ["int4"]}, "budget": {"flops": 1}}, "x.toml")
    monkeypatch.setitem(sys.modules, "coremltools", None)
    with pytest.raises(RegnasError, match=r"pip install 'regnas\[coreml\]'"):
        create_exporter("coreml").check_available()


def test_flip_aware_quantization_searches_the_grid_and_keeps_the_best(member, tmp_path, monkeypatch):
    from regnas.artifacts import flip_aware
    from regnas.exporters.onnx import OnnxExporter
    from regnas.targets import Target

    monkeypatch.setattr(OnnxExporter, "float_candidates", lambda *_: [])  # global options only here
    net, data = member
    job = ExportJob(net, data.input_shape, data["calib"].x.numpy(), tmp_path, tmp_path / "scratch")
    job.scratch.mkdir()
    strict = Target("strict", {"flops": 1.0}, max_nfr_vs_fp32=-1.0)  # below any NFR: always search
    val = data["val"]
    exporter = create_exporter("onnx")
    exported, record = flip_aware(exporter, job, "int8", strict, (val.x.numpy(), predict(net, val.x), val.y.numpy()))
    tried = record["tried"]
    assert len(tried) == len(exporter.option_grid("int8")) and record["selected_on"] == "val"
    best = min(tried, key=lambda t: (t["flips_val"], -t["top1_val"]))
    assert record["after"] == best and record["after"]["nfr_val"] <= record["before"]["nfr_val"]
    assert exported[0].options == best["options"]
    kept = load_runtime("onnxruntime", exported[0].path).predict(val.x.numpy())
    from regnas.flips import nfr

    assert nfr(predict(net, val.x), kept, val.y.numpy()) == pytest.approx(best["nfr_val"])


def test_the_grid_stops_at_the_first_options_that_hold(member, tmp_path, monkeypatch):
    from regnas.artifacts import _QuantSearch, flip_aware
    from regnas.exporters.onnx import OnnxExporter
    from regnas.targets import Target

    grid = [{}, {"reduce_range": True}, {"per_channel": False}, {"calib_samples": 2000}]
    flips = {0: 40, 1: 30, 2: 0, 3: 0}
    monkeypatch.setattr(OnnxExporter, "option_grid", lambda self, precision: grid)
    monkeypatch.setattr(OnnxExporter, "float_candidates", lambda *_: [])
    scores = [{"options": o, "flips_val": f, "nfr_val": f / 1000, "top1_val": 0.9} for o, f in zip(grid, flips.values())]
    monkeypatch.setattr(_QuantSearch, "score", lambda self, o, stop_above=None: scores[grid.index(o)])
    net, data = member
    job = ExportJob(net, data.input_shape, data["calib"].x.numpy(), tmp_path, tmp_path / "scratch")
    job.scratch.mkdir()
    val = data["val"]
    _, record = flip_aware(
        create_exporter("onnx"), job, "int8", Target("t", {"flops": 1.0}), (val.x.numpy(), predict(net, val.x), val.y.numpy())
    )
    assert [t["options"] for t in record["tried"]] == grid[:3] and record["after"]["options"] == grid[2]


def test_per_unit_fallback_ranks_units_by_flip_sensitivity_and_keeps_the_fewest_in_float(member, tmp_path, monkeypatch):
    from regnas.artifacts import flip_aware
    from regnas.exporters.onnx import OnnxExporter, preprocessed_compute_nodes
    from regnas.flips import nfr
    from regnas.targets import Target

    net, data = member
    job = ExportJob(net, data.input_shape, data["calib"].x.numpy(), tmp_path, tmp_path / "scratch")
    job.scratch.mkdir()
    units = preprocessed_compute_nodes(job.onnx())[:4]  # four units keep the test short
    monkeypatch.setattr(OnnxExporter, "float_candidates", lambda *_: units)
    monkeypatch.setattr(OnnxExporter, "option_grid", lambda self, p: [{}, {"reduce_range": True}])
    never = Target("never", {"flops": 1.0}, max_nfr_vs_fp32=-1.0, max_int8_slowdown=1e9)  # no configuration meets it
    val = data["val"]
    fp32 = predict(net, val.x)
    exported, record = flip_aware(create_exporter("onnx"), job, "int8", never, (val.x.numpy(), fp32, val.y.numpy()))
    ranking = record["ranking"]
    assert sorted(r["unit"] for r in ranking) == sorted(units)
    assert [(-r["changed"], -r["drift"]) for r in ranking] == sorted((-r["changed"], -r["drift"]) for r in ranking)
    assert all(r["drift"] > 0 for r in ranking)  # quantizing any one unit moves the scores
    # the fully quantized configuration may tie with the fallback's (it does under onnxruntime 1.32); then none stays float
    assert record["kept_float"] == exported[0].options.get("keep_float", []) and set(record["kept_float"]) <= set(units)
    assert record["latency_ms"]["chosen"] > 0 and record["latency_ms"]["fully_quantized"] > 0
    assert record["after"]["slowdown"] == pytest.approx(record["latency_ms"]["chosen"] / record["latency_ms"]["fully_quantized"])
    kept = load_runtime("onnxruntime", exported[0].path).predict(val.x.numpy())
    assert nfr(fp32, kept, val.y.numpy()) == pytest.approx(record["after"]["nfr_val"])
    fewest = min(t["flips_val"] for t in record["tried"])
    assert record["after"]["flips_val"] == fewest
    assert len(record["kept_float"]) == min(len(t["options"].get("keep_float", [])) for t in record["tried"] if t["flips_val"] == fewest)


def test_a_configuration_the_backend_cannot_lower_is_skipped_not_fatal(member, tmp_path, monkeypatch):
    """XNNPACK's partitioner finds dependency cycles in some mixes of int8 and float units: such a trial is recorded and
    never chosen, and the search goes on (it once ended a 50-minute photo build with exit 2)."""
    from regnas.artifacts import flip_aware
    from regnas.errors import LoweringFailed
    from regnas.exporters.onnx import OnnxExporter, preprocessed_compute_nodes
    from regnas.targets import Target

    net, data = member
    job = ExportJob(net, data.input_shape, data["calib"].x.numpy(), tmp_path, tmp_path / "scratch")
    job.scratch.mkdir()
    units = preprocessed_compute_nodes(job.onnx())[:4]
    monkeypatch.setattr(OnnxExporter, "float_candidates", lambda *_: units)
    monkeypatch.setattr(OnnxExporter, "option_grid", lambda self, p: [{}, {"reduce_range": True}])
    lower = OnnxExporter.export

    def export(self, job, precision, options=None):
        if len((options or {}).get("keep_float", [])) == 2:
            raise LoweringFailed("could not lower the model (Invalid partition, found dependency cycles)")
        return lower(self, job, precision, options)

    monkeypatch.setattr(OnnxExporter, "export", export)
    never = Target("never", {"flops": 1.0}, max_nfr_vs_fp32=-1.0, max_int8_slowdown=1e9)
    val = data["val"]
    exported, record = flip_aware(create_exporter("onnx"), job, "int8", never, (val.x.numpy(), predict(net, val.x), val.y.numpy()))
    (failed,) = [t for t in record["tried"] if "lowering_failed" in t]
    assert "dependency cycles" in failed["lowering_failed"] and len(failed["kept_float"]) == 2
    assert len(record["kept_float"]) != 2 and exported[0].path.is_file()
    assert record["after"]["flips_val"] == min(t["flips_val"] for t in record["tried"]) < len(val)


def test_the_latency_cap_keeps_the_fewest_flips_among_configurations_fast_enough(monkeypatch):
    """Timed slower than the cap, the fewest-flips configuration gives way to the next, down to fully quantized."""
    import regnas.artifacts as artifacts

    speed = {(): 1.0, ("a",): 1.2, ("a", "b"): 1.5, ("a", "b", "c"): 1.4}  # float and int8 regions meeting cost most
    monkeypatch.setattr(artifacts, "interleaved_ms", lambda runtime, paths, shape: [float(paths[0]), 1.0])

    class Fake(artifacts._QuantSearch):
        def __init__(self):
            self.runtime, self.job = "onnxruntime", ExportJob(None, (1, 8, 8), None, None, None)

        def snapshot(self, options):
            return str(speed[tuple(options.get("keep_float", ()))])

        def score(self, options, stop_above=None):
            return {"options": options, "flips_val": 9, "kept_float": []}

    trials = [{"flips_val": f, "kept_float": k} for f, k in [(6, ["a"]), (2, ["a", "b", "c"]), (3, ["a", "b"])]]
    best = (trials[1], {"keep_float": ["a", "b", "c"]})
    for cap, kept in [(1.45, ["a", "b", "c"]), (1.3, ["a"]), (1.1, [])]:
        record = {}
        score, opts = Fake().within_slowdown({}, best, trials, cap, record)
        assert opts.get("keep_float", []) == kept and record["max_slowdown"] == cap
        assert record["latency_ms"]["chosen"] == speed[tuple(kept)]
    assert score["flips_val"] == 9  # none fast enough: the fully quantized artifact, judged on val


def test_onnx_units_cover_the_graph_so_keeping_all_in_float_is_exact(member, tmp_path):
    """A unit kept in float takes its activation, residual add and gates with it: with every unit float, int8 is fp32."""
    import onnx

    from regnas.exporters.onnx import preprocessed_compute_nodes, quantize_int8, unit_groups

    net, data = member
    job = ExportJob(net, data.input_shape, data["calib"].x.numpy(), tmp_path, tmp_path / "scratch")
    job.scratch.mkdir()
    groups = unit_groups(job.onnx())
    nodes = [n.name for n in onnx.load(str(job.onnx())).graph.node]
    assert sorted(n for g in groups.values() for n in g) == sorted(nodes)  # each node in exactly one unit
    assert all(g[0] == unit or unit in g for unit, g in groups.items())
    x = data["val"].x.numpy()
    fp32 = load_runtime("onnxruntime", job.onnx()).predict(x)
    every_unit = preprocessed_compute_nodes(job.onnx())  # as the quantizer names them
    path = quantize_int8(job.onnx(), tmp_path / "all-float.onnx", job.calib, {"keep_float": every_unit})
    assert np.array_equal(load_runtime("onnxruntime", path).predict(x), fp32)


def test_executorch_units_cover_every_operator_so_all_float_int8_is_fp32(member, tmp_path):
    """A residual block's add and activation, a head's pooling belong to a unit too: with every unit float, no op is quantized."""
    pytest.importorskip("executorch.exir", reason="the executorch extra is not installed")
    import torch

    from regnas.exporters.executorch import _quantize, compute_modules, unit_owners

    net, data = member
    job = ExportJob(net, data.input_shape, data["calib"].x.numpy(), tmp_path, tmp_path / "scratch")
    owners = unit_owners(job)
    units = create_exporter("executorch").float_candidates(job, "int8")
    assert set(compute_modules(net)) < set(units) == set(owners.values())  # blocks' own ops are units of their own
    quantized = lambda model: sum("quantize_per" in str(n.target) for n in model.graph.nodes)  # noqa: E731
    assert quantized(_quantize(job, {"per_channel": True, "calib_samples": 64})) > 0
    floated = _quantize(job, {"per_channel": True, "calib_samples": 64, "keep_float": units})
    assert quantized(floated) == 0
    x = data["val"].x
    with torch.no_grad():
        assert np.array_equal(floated(to_float(x)).argmax(1).numpy(), predict(net, x))
    with pytest.raises(RegnasError, match="keep_float names 'nope'"):
        _quantize(job, {"per_channel": True, "calib_samples": 64, "keep_float": ["nope"]})


def test_fallback_keeps_the_fewest_units_that_meet_the_limit():
    from regnas.artifacts import _QuantSearch

    class Fake(_QuantSearch):
        def __init__(self):
            self.calls = []

        def score(self, options, stop_above=None):
            k = len(options.get("keep_float", []))
            self.calls.append(k)
            return {"options": options, "flips_val": max(0, 9 - k), "top1_val": 0.9}

    fake = Fake()
    chosen, tried = fake.fallback({}, [f"u{i}" for i in range(20)], allowed=2)
    assert chosen["kept_float"] == [f"u{i}" for i in range(7)]  # 9 - 7 = 2 flips: the fewest units that meet the goal
    assert len(set(fake.calls)) == len(fake.calls) <= 7  # doubling then bisection, each count tried once
    assert len(fake.calls) <= Fake.fallback_trials(20)  # what the val bar's correction counts on
    capped = Fake()
    chosen, _ = capped.fallback({}, [f"u{i}" for i in range(12)], allowed=0)  # only 9 of 12 units in float meet it
    assert len(chosen["kept_float"]) == 9 and capped.calls == [1, 2, 4, 8, 12, 10, 9]  # bisects above 8, which failed
    assert len(capped.calls) <= Fake.fallback_trials(12)
    never, _ = Fake().fallback({}, ["a", "b", "c"], allowed=-1)
    assert never["kept_float"] == ["a", "b", "c"]  # nothing meets the goal: the fewest flips found


def test_a_trial_that_already_flips_more_than_it_may_stops_counting():
    from regnas.artifacts import SCORE_CHUNK, _QuantSearch

    n = 3 * SCORE_CHUNK
    labels = np.zeros(n, dtype=np.int64)
    wrong = np.arange(n) % 100 == 0  # 30 flips, 10 in each chunk

    class Rt:
        def __init__(self):
            self.seen = 0

        def predict(self, x):
            self.seen += len(x)
            return wrong[x].astype(np.int64)

    search = _QuantSearch.__new__(_QuantSearch)
    search.x, search.fp32, search.labels = np.arange(n), labels.copy(), labels
    rt = Rt()
    assert search._count(rt, None) == {"flips_val": 30, "nfr_val": 0.01, "top1_val": 0.99} and rt.seen == n
    assert search._count(Rt(), 30)["flips_val"] == 30  # never above the bar: counted to the end
    rt = Rt()
    stopped = search._count(rt, 5)
    assert stopped["flips_val"] == 10 and stopped["stopped_after"] == SCORE_CHUNK == rt.seen


def test_stopped_trials_change_no_decision_of_the_fallback():
    """Stopping a trial once it flips more than the limit and the best so far leaves the chosen units as counting all."""
    from regnas.artifacts import _QuantSearch

    flips = [30, 28, 31, 25, 40, 12, 9, 14, 6, 5, 4, 3, 2, 2, 1, 0, 0]  # not monotone: the ranking is a guess

    class Fake(_QuantSearch):
        def __init__(self):
            self.bars = []

        def score(self, options, stop_above=None):
            self.bars.append(stop_above)
            f = flips[len(options.get("keep_float", []))]
            stopped = stop_above is not None and f > stop_above
            return {"options": options, "flips_val": f, "top1_val": 0.9, **({"stopped_after": 1} if stopped else {})}

    units = [f"u{i}" for i in range(16)]
    for allowed, to_beat in [(2, 27), (0, 27), (-1, 3), (2, None)]:
        counting_all = Fake.__new__(Fake)
        counting_all.bars = []
        counting_all.score = lambda options, stop_above=None, s=counting_all: Fake.score(s, options)
        stopping = Fake()
        want, _ = counting_all.fallback({}, units, allowed)
        got, tried = stopping.fallback({}, units, allowed, to_beat)
        assert got["kept_float"] == want["kept_float"] and "stopped_after" not in got
        assert any("stopped_after" in t for t in tried)  # and some were stopped
        assert all(b is None or b >= allowed for b in stopping.bars)


def test_a_trial_is_exported_once_and_its_files_come_back_for_timing_and_shipping(tmp_path):
    """Flip-aware quantization scores, times and ships trials in different orders: each is exported only once."""
    import json

    from regnas.artifacts import _QuantSearch
    from regnas.exporters import Exported

    class Writer:
        name, calls = "fake", []

        def export(self, job, precision, options):
            self.calls.append(options)
            path = job.directory / "model-int8.onnx"
            path.write_text(json.dumps(options))
            return [Exported("onnx", precision, path, "onnxruntime", options=options)]

    job = ExportJob(None, (1, 8, 8), None, tmp_path / "out", tmp_path / "scratch")
    job.directory.mkdir()
    job.scratch.mkdir()
    search = _QuantSearch(Writer(), job, "int8", ["onnxruntime"], (None, None, np.zeros(1)))
    a, b = {"keep_float": ["x"]}, {"keep_float": ["x", "y"]}
    search.export(a)
    search.export(b)
    timed = search.snapshot(a)
    assert json.loads(timed.read_text()) == a and timed.parent != job.directory
    _, shipped = search.export(a)
    assert json.loads(shipped.path.read_text()) == a and Writer.calls == [a, b]


@pytest.mark.parametrize("space_name", ["resnet"])
def test_a_space_outside_the_built_fixture_lowers_to_every_local_runtime(digits, space_name, tmp_path):
    """The `built` fixture is mbv3 and the end-to-end build test vit; resnet's blocks (which once broke ExecuTorch's
    lowering) are exported here from a briefly trained subnet, and every artifact that runs here agrees with torch."""
    from regnas.spaces import create_space, space_class
    from regnas.train import TrainConfig, train_standalone

    space = create_space(space_name, space_class(space_name).default_config(digits.input_shape, digits.num_classes))
    net = train_standalone(digits, space, space.smallest(), TrainConfig(epochs=2, batch_size=32, seed=0)).eval()
    x = digits["test"].x
    job = ExportJob(net, digits.input_shape, digits["calib"].x.numpy(), tmp_path, tmp_path / "scratch")
    job.scratch.mkdir()
    torch_preds = predict(net, x)
    for name in ("executorch", "onnx"):
        for a in create_exporter(name).export(job, "int8"):
            assert a.status == "ok", a.status
            agree = np.mean(load_runtime(a.runtime, a.path).predict(x.numpy()) == torch_preds)
            assert agree >= 0.5, f"{name} int8 agrees with torch on {agree:.1%}"


@pytest.mark.parametrize("name,precision", [("onnx", "int8"), ("coreml", "fp16")])
def test_exporting_twice_gives_the_same_bytes(member, tmp_path, name, precision):
    net, data = member
    runs = []
    for run in ("a", "b"):
        job = ExportJob(net, data.input_shape, data["calib"].x.numpy(), tmp_path / run, tmp_path / run / "scratch")
        job.scratch.mkdir(parents=True)
        runs.append([e for e in create_exporter(name).export(job, precision) if e.status == "ok"])
    for a, b in zip(*runs):
        assert sha256_file(a.path) == sha256_file(b.path), a.path.name


def test_opening_a_core_ml_package_leaves_its_bytes_alone(member, tmp_path):
    """coremltools rewrites Manifest.json on open; the runtime must not, or the check calls the artifact changed."""
    pytest.importorskip("coremltools")
    from regnas.runtimes.coreml import CoreMLRuntime

    net, data = member
    job = ExportJob(net, data.input_shape, data["calib"].x.numpy(), tmp_path, tmp_path / "scratch")
    job.scratch.mkdir()
    package = create_exporter("coreml").export(job, "fp16")[0].path
    before = sha256_file(package)
    try:
        CoreMLRuntime(package)
    except Unavailable:
        pass  # off macOS: the package was still opened to read its spec
    assert sha256_file(package) == before

import pytest

from regnas.errors import RegnasError
from regnas.targets import builtin_targets, resolve_targets


def test_builtins_are_ordered_by_budget():
    t = builtin_targets()
    assert set(t) >= {"phone", "edge", "server"}
    assert t["phone"].budget_flops(1000) < t["edge"].budget_flops(1000) < t["server"].budget_flops(1000)


def test_user_target_file(tmp_path):
    p = tmp_path / "watch.toml"
    p.write_text('name = "watch"\nruntime = "onnxruntime"\nmax_int8_slowdown = 1.5\n[budget]\nflops = 2e6\n')
    (t,) = resolve_targets(str(p))
    assert t.name == "watch" and t.budget_flops(10**9) == 2_000_000 and t.max_int8_slowdown == 1.5
    assert t.to_json()["max_int8_slowdown"] == 1.5


ONNX = 'name = "x"\nexporters = ["onnx"]\n'
BUDGET = "[budget]\nflops = 1\n"


@pytest.mark.parametrize(
    "text,match",
    [
        ('name = "x"\n', "needs 'name' and a \\[budget\\]"),
        ('name = "x"\n[budget]\nflops = -1\n', "positive"),
        ('name = "x"\n[budget]\nflops = 1\nflops_fraction = 0.5\n', "exactly one"),
        ('name = "x"\ncolour = "red"\n[budget]\nflops = 1\n', "unknown key 'colour'"),
        ('name = "x"\nthreads = "four"\n[budget]\nflops = 1\n', "threads must be a int"),
        ('name = "x"\nmax_int8_slowdown = 0.5\n[budget]\nflops = 1\n', "max_int8_slowdown is a latency multiple of at least 1"),
        ("name = [", "not valid TOML"),
        ('name = "x"\narch = "riscv"\n[budget]\nflops = 1\n', "arch must be one of aarch64, x86_64"),
        (ONNX + '[runtimes]\nonnx = ["executorch"]\n[budget]\nflops = 1\n', "onnx artifacts run in onnxruntime, openvino"),
        (ONNX + '[runtimes]\ntvm = ["tvm"]\n[budget]\nflops = 1\n', "runtimes.tvm must be .* an exporter this target uses"),
        (ONNX + "[runtimes]\nonnx = []\n[budget]\nflops = 1\n", "non-empty list"),
    ],
)
def test_bad_target_files(tmp_path, text, match):
    p = tmp_path / "t.toml"
    p.write_text(text)
    with pytest.raises(RegnasError, match=match):
        resolve_targets(str(p))


def test_a_target_deploys_a_format_in_several_runtimes_and_names_its_arch(tmp_path):
    p = tmp_path / "box.toml"
    p.write_text('name = "box"\narch = "aarch64"\nexporters = ["onnx"]\n[runtimes]\nonnx = ["openvino", "onnxruntime"]\n' + BUDGET)
    (t,) = resolve_targets(str(p))
    assert t.arch == "aarch64" and t.check_runtimes("onnx", "onnxruntime") == ["onnxruntime", "openvino"]
    assert t.check_runtimes("tvm", "tvm") == ["tvm"]
    assert resolve_targets(str(p))[0].to_json()["runtimes"] == {"onnx": ["openvino", "onnxruntime"]}
    edge = builtin_targets()["edge"]
    assert edge.arch == "aarch64" and "openvino" in edge.runtimes["onnx"] and builtin_targets()["server"].arch is None


def test_unknown_and_duplicate_targets():
    with pytest.raises(RegnasError, match="unknown target 'tablet'"):
        resolve_targets("phone,tablet")
    with pytest.raises(RegnasError, match="given twice"):
        resolve_targets("phone,phone")
    with pytest.raises(RegnasError, match="no targets"):
        resolve_targets(" , ")


def test_targets_cli(capsys, tmp_path):
    from regnas.cli import main

    assert main(["targets", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == ["phone", "edge", "server"]
    assert "30% of the largest subnet's FLOPs" in lines[0]
    assert main(["targets", "show", "edge"]) == 0
    assert '"runtime": "tvm"' in capsys.readouterr().out
    assert main(["targets", "show", "tablet"]) == 2
    assert main(["targets", "show"]) == 2

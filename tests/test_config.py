"""`regnas.config`: one declaration per option gives the flags, the TOML file and its checks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from regnas.cli import main, make_parser
from regnas.config import apply_args, dumps_toml, leaves, load_toml
from regnas.errors import RegnasError
from regnas.workflow.build import BuildOptions


def test_settings_survive_a_round_trip_through_toml(tmp_path):
    opts = BuildOptions(rewards=("1,5", "R0"), image_size=32, time_budget=30.0, rpc="10.0.0.2:9090", rpc_key="pi", export=False)
    opts = replace(opts, search=replace(opts.search, population=4), finetune_mode="own", out=Path("b"), seed=3)
    path = tmp_path / "build.toml"
    path.write_text(dumps_toml(opts, "a header\nof two lines"))
    text = path.read_text()
    assert text.startswith("# a header\n# of two lines\n") and "[search]\n" in text and "population = 4" in text
    assert "supernet" not in text  # options at None are left out, so they keep their defaults
    back = load_toml(BuildOptions, path)
    assert back == opts and str(back.remote) == "10.0.0.2:9090 (key pi)" and back.finetune.seed == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[search]\npopulaton = 3", "[search] populaton is not an option; the options here are rewards"),
        ("[serch]\npopulation = 3", "unknown table [serch]; the tables are [data], [train]"),
        ('seed = "one"', "seed must be an integer, got 'one'"),
        ("seed = 1.5", "seed must be an integer, got 1.5"),
        ("[data]\nimage_size = 0", "[data] image_size: must be at least 1, got 0"),
        ("[train]\ntime_budget = -1", "[train] time_budget: must be a positive number of minutes"),
        ('[search]\nrewards = "1,5"', "[search] rewards must be a list of strings"),
        ("[export]\nexport = 1", "[export] export must be true or false, got 1"),
        ("seed = [", "is not valid TOML"),
    ],
)
def test_unknown_keys_and_wrong_types_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "build.toml"
    path.write_text(text)
    with pytest.raises(RegnasError) as info:
        load_toml(BuildOptions, path)
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_the_cli_reports_a_bad_config_file_with_exit_2(tmp_path, capsys):
    path = tmp_path / "build.toml"
    path.write_text("[search]\npopulaton = 3\n")
    assert main(["build", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "populaton is not an option" in err
    assert main(["build", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_flags_override_the_file_and_only_given_flags_do(tmp_path):
    path = tmp_path / "build.toml"
    path.write_text('seed = 4\n[data]\ndata = "fashion-mnist"\n[search]\npopulation = 8\nrewards = ["R2"]\n')
    args = make_parser().parse_args(["build", "--config", str(path), "--population", "5", "--reward", "R0", "--no-finetune"])
    opts = apply_args(load_toml(BuildOptions, args.config), args)
    assert (opts.seed, opts.data, opts.search.population, opts.rewards, opts.finetune_mode) == (4, "fashion-mnist", 5, ("R0",), "none")
    assert opts.search.generations == BuildOptions().search.generations


def test_every_option_has_one_flag_with_its_help_and_default():
    help_text = make_parser(eager=True)._subparsers._group_actions[0].choices["build"].format_help()
    flat = " ".join(help_text.split())
    names = [leaf.flag for leaf in leaves(BuildOptions)]
    assert len(names) == len(set(names)) and "--population" in names and "--no-export" in names
    for leaf in leaves(BuildOptions):
        assert leaf.flag in flat and " ".join(leaf.option.help.split()[:4]) in flat
    assert "evolution population size (default: 16)" in flat and "(default: 1,5)" in flat

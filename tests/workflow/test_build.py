"""`regnas.workflow.build` stages on the shared digits supernet: the split it owns, rewards, fine-tuning, the time plan."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from regnas.builddir import MemberRecord, load_member
from regnas.config import load_toml
from regnas.data import load_dataset
from regnas.distill import DistillConfig
from regnas.errors import RegnasError
from regnas.evaluate import predict
from regnas.search import SearchConfig
from regnas.workflow.build import BuildOptions, build, finetune_mode_of, flag_repeats

FAST = SearchConfig(population=4, generations=2)


def options(ckpt, out, **kw) -> BuildOptions:
    return BuildOptions(out=out, supernet=ckpt / "supernet.safetensors", search=FAST, export=False, **kw)


def test_a_given_supernet_brings_its_own_split_and_seed_only_seeds_the_search(digits_supernet, tmp_path):
    _, ckpt = digits_supernet
    report = build(options(ckpt, tmp_path / "s1", seed=1, finetune_mode="none"))
    assert "finetune" not in report
    split = json.loads((ckpt / "supernet.json").read_text())["split"]
    assert report["config"]["data"]["split"] == split and split["seed"] == 0
    assert report["config"]["seed"] == 1  # the search's seed
    assert report["config"]["data"]["digest"] == load_dataset("digits", 0).digest != load_dataset("digits", 1).digest


def test_flips_against_every_earlier_member_and_a_reward_sweep(digits_supernet, tmp_path):
    _, ckpt = digits_supernet
    report = build(options(ckpt, tmp_path / "all", flips_against="all", rewards=("R2", "R0", "1,5"), finetune_mode="none"))
    assert report["config"]["reward"]["against"] == "all"
    sweep = report["reward_sweep"]
    assert [p["reward"] for p in sweep] == ["R2+all", "R0+all", "1,5+all", "baseline (R0, each target alone)"]
    for point in sweep:
        assert 0 <= point["mean_nfr"] <= 1 and 0 < point["mean_top1"] <= 1 and len(point["members"]) == 3
    assert sweep[0]["mean_top1"] == pytest.approx(sum(m["top1"] for m in report["family"]) / 3)
    for member, anchor in zip(report["family"], report["baseline"]["family"]):  # held to the baseline member at its budget
        assert member["val_top1_floor"] == pytest.approx(max(0.0, anchor["val_top1"] - 0.005))
    html = (tmp_path / "all" / "report.html").read_text()
    assert "Flips against top-1, per reward" in html
    agreement = report["val_test"]
    assert [r["target"] for r in agreement["members"]] == ["phone", "edge", "server"] and agreement["max_abs_top1_gap"] < 0.2
    cached = build(options(ckpt, tmp_path / "all", flips_against="all", rewards=("R2", "R0", "1,5"), finetune_mode="none"))
    assert [p["members"] for p in cached["reward_sweep"]] == [p["members"] for p in sweep]  # from search.json


@pytest.fixture(scope="module")
def searched(digits_supernet, tmp_path_factory):
    """A family searched once, not fine-tuned: each fine-tune mode starts from a copy and reuses its search."""
    _, ckpt = digits_supernet
    out = tmp_path_factory.mktemp("searched")
    build(options(ckpt, out, finetune_mode="none"))
    return out


@pytest.mark.parametrize("mode", ["joint", "own"])
def test_finetune_keeps_the_family_literally_nested(digits_supernet, digits, searched, tmp_path, caplog, mode):
    _, ckpt = digits_supernet
    shutil.copytree(searched, tmp_path / "ft")
    report = build(options(ckpt, tmp_path / "ft", finetune=DistillConfig(epochs=1), finetune_mode=mode))
    assert report["finetune"]["mode"] == mode and report["timing_s"]["finetune"] == report["finetune"]["seconds"] > 0
    assert f"fine-tuned (`--finetune {mode}`)" in (tmp_path / "ft" / "summary.md").read_text()
    before = {m["target"]: m for m in report["finetune"]["before"]}
    assert all(n["contains"] and n["literal"] and n["shared_of_smaller"] == 1.0 for n in report["nesting"])
    assert report["nesting"][0]["shared_weight_fraction"] < 1
    members = [load_member(tmp_path / "ft" / t)[1] for t in ("phone", "edge", "server")]
    for small, large in zip(members, members[1:]):  # the saved weights still nest, bit for bit
        big = dict(large.named_parameters())
        for name, p in small.named_parameters():
            idx = tuple(slice(0, s) for s in p.shape[:2]) + tuple(
                slice((b - s) // 2, (b - s) // 2 + s) for b, s in zip(big[name].shape[2:], p.shape[2:])
            )
            assert torch.equal(big[name][idx], p), name
    for row, net in zip(report["val_test"]["members"], members):  # val/test agreement of the members as shipped
        assert row["val_top1"] == pytest.approx(float((predict(net, digits["val"].x) == digits["val"].y.numpy()).mean()))
    caplog.clear()  # earlier CLI tests leave regnas logging at INFO, so the first build's records are in it too
    with caplog.at_level("INFO", logger="regnas"):
        again = build(options(ckpt, tmp_path / "ft", finetune=DistillConfig(epochs=1), finetune_mode=mode))
    assert "finetune: reusing" in caplog.text and "finetune: epoch" not in caplog.text
    assert [(m["top1"], m["nfr_vs_prev"]) for m in again["family"]] == [(m["top1"], m["nfr_vs_prev"]) for m in report["family"]]
    if mode == "own":  # the first member is not fine-tuned; jointly, it moves with the weights it shares
        assert report["family"][0]["top1"] == before["phone"]["top1"]


def test_family_options_that_cannot_work_are_refused(digits_supernet, tmp_path):
    _, ckpt = digits_supernet
    with pytest.raises(RegnasError, match="unknown --flips-against 'some'"):
        build(options(ckpt, tmp_path / "x", flips_against="some"))
    with pytest.raises(RegnasError, match="needs a family of 2 or more targets"):
        build(options(ckpt, tmp_path / "x", targets="phone", finetune_mode="joint"))
    with pytest.raises(RegnasError, match="unknown --finetune 'all'; use joint"):
        build(options(ckpt, tmp_path / "x", finetune_mode="all"))
    assert not (tmp_path / "x").exists()


def test_the_default_build_fine_tunes_a_family_jointly_and_a_single_target_not_at_all():
    opts = BuildOptions()
    assert opts.rewards == ("1,5",) and finetune_mode_of(opts, 3) == "joint" and finetune_mode_of(opts, 1) is None
    assert finetune_mode_of(BuildOptions(finetune_mode="none"), 3) is None
    assert finetune_mode_of(BuildOptions(finetune_mode="own"), 3) == "own"


def test_the_time_plan_keeps_time_for_the_finetune(tmp_path, monkeypatch):
    import regnas.workflow.build as build_mod

    monkeypatch.setattr(build_mod, "finetune_seconds", lambda *a: 3600.0)
    opts = BuildOptions(out=tmp_path / "b", data="digits", time_budget=30.0, search=FAST, export=False)  # fine-tuned by default
    with pytest.raises(RegnasError, match="leaves no time to train after search and fine-tune \\(about 6[0-9].[0-9] min here\\)"):
        build(opts)
    assert not (tmp_path / "b" / "supernet.safetensors").exists()


def test_a_build_over_its_budget_names_the_stages_that_overran_their_plan(caplog):
    from regnas.workflow.build import warn_overrun

    plan = {"budget": 2400.0, "train": 600.0, "search": 600.0, "finetune": 480.0, "export_and_check": 720.0}
    within = {"train": 600.0, "search": 600.0, "finetune": 480.0, "export": 600.0, "check": 100.0, "total": 2380.0}
    assert warn_overrun(plan, within) == []
    over = {"train": 900.0, "search": 1000.0, "finetune": 500.0, "export": 1270.0, "check": 210.0, "total": 3880.0}
    with caplog.at_level("WARNING", logger="regnas"):
        stages = warn_overrun(plan, over)
    assert [s.split()[0] for s in stages] == ["train", "search", "export_and_check"]
    assert "64.7 min against its 40-min budget" in caplog.text and "search 16.7 min (planned 10.0)" in caplog.text
    assert warn_overrun({}, over) == []  # --epochs: no plan to overrun


def test_a_member_that_repeats_its_predecessor_is_flagged(caplog):
    members = [MemberRecord(t, {"d": d}, 1, None, 1, 0.9, None) for t, d in (("a", [2]), ("b", [2]), ("c", [3]))]
    with caplog.at_level("WARNING", logger="regnas"):
        flag_repeats(members)
    assert [m.to_json().get("same_as_previous") for m in members] == [None, True, False]
    assert "family member b is a's arch" in caplog.text


def test_a_build_writes_its_settings_and_rebuilds_the_same_family_from_them(digits_supernet, tmp_path):
    _, ckpt = digits_supernet
    first = build(options(ckpt, tmp_path / "a", seed=2, finetune_mode="none"))
    written = load_toml(BuildOptions, tmp_path / "a" / "build.toml")
    assert written.seed == 2 and written.space == "mbv3" and written.data_digest == first["config"]["data"]["digest"]
    again = build(replace(written, out=tmp_path / "b"))
    assert [m["arch"] for m in again["family"]] == [m["arch"] for m in first["family"]]
    assert again["config"]["data"]["digest"] == first["config"]["data"]["digest"]
    changed = replace(written, out=tmp_path / "c", supernet=None, data_digest="0" * 64, epochs=1)
    with pytest.raises(RegnasError, match="drop data_digest from the config file"):
        build(changed)
    assert not (tmp_path / "c" / "report.json").exists()

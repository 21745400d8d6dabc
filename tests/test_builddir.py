"""The build directory's owner: members round-trip, reports are versioned, and a foreign directory is refused."""

import pytest
import torch

from regnas import builddir
from regnas.errors import RegnasError
from regnas.io import write_json
from regnas.spaces import create_space, space_class

MINIMAL = {"family": [], "nesting": [], "baseline": {"family": [], "nesting": []}, "targets": []}


def test_member_round_trip_is_the_same_network(tmp_path):
    space = create_space("mbv3", space_class("mbv3").default_config((1, 8, 8), 10))
    torch.manual_seed(0)
    net = space.build_subnet(space.smallest()).eval()
    digest = builddir.save_member(tmp_path / "phone", space, space.smallest(), net, "phone")
    assert builddir.is_member(tmp_path / "phone") and len(digest) == 64
    loaded_space, loaded = builddir.load_member(tmp_path / "phone")
    x = torch.randn(4, 1, 8, 8)
    assert loaded_space.config == space.config
    assert torch.equal(loaded(x), net(x))


def test_report_round_trip_stamps_and_checks_the_format(tmp_path):
    builddir.write_report(tmp_path, MINIMAL)
    assert builddir.is_build(tmp_path)
    assert builddir.read_report(tmp_path)["format"] == builddir.REPORT_FORMAT
    write_json(tmp_path / builddir.REPORT, {**MINIMAL, "format": "regnas-report/0"})
    with pytest.raises(RegnasError, match="report format 'regnas-report/0'"):
        builddir.read_report(tmp_path)


def test_missing_or_foreign_reports_are_one_line_errors(tmp_path):
    with pytest.raises(RegnasError, match="has no report.json; run regnas build"):
        builddir.read_report(tmp_path)
    write_json(tmp_path / builddir.REPORT, {"family": "not a list"})
    with pytest.raises(RegnasError, match="family is missing or not a list"):
        builddir.open_build(tmp_path)


def test_an_unreadable_search_cache_is_no_cache(tmp_path):
    assert builddir.read_search_cache(tmp_path) is None
    (tmp_path / builddir.SEARCH_CACHE).write_text("{truncated")
    assert builddir.read_search_cache(tmp_path) is None
    builddir.write_search_cache(tmp_path, {"key": "k"})
    assert builddir.read_search_cache(tmp_path) == {"key": "k"}


def test_member_records_write_optional_keys_only_when_set_and_refuse_missing_ones():
    rec = builddir.MemberRecord("phone", {"depth": [2]}, 1000, 2000.0, 50, 0.9, None)
    obj = rec.to_json()
    assert "nfr_vs_prev" in obj and obj["nfr_vs_prev"] is None and "weights_sha256" not in obj and "same_as_previous" not in obj
    rec.weights_sha256 = "ab" * 32
    assert builddir.MemberRecord.from_json(rec.to_json(), "r.json") == rec
    with pytest.raises(RegnasError, match="r.json has a malformed member record"):
        builddir.MemberRecord.from_json({"target": "phone"}, "r.json")

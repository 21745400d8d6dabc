"""Families on the shared digits supernet: member records, literal nesting measured on extracted weights, assessment."""

import random

import numpy as np
import pytest

from regnas.evaluate import Evaluator
from regnas.family import Member, assess, nesting


@pytest.fixture(scope="module")
def evaluator(digits_supernet, digits):
    return Evaluator(digits_supernet[0], digits, calib_size=150)


def test_member_records_round_trip_through_json(evaluator):
    space = evaluator.space
    margin = {"runner_up_gap": 0.01, "interval": [-0.002, 0.022], "tied": 3}
    m = Member("edge", space.smallest(), 1_000_000, 0.9, 0.01, 12, [(10, 0.9, None), (20, 0.91, 0.02)], None, margin)
    back = Member.from_json(space, m.to_json(space))
    assert back == m and back.candidates[1] == (20, 0.91, 0.02)


def test_nesting_is_measured_on_the_weights_themselves(evaluator):
    space = evaluator.space
    small, large = space.smallest(), space.largest()
    net_small, net_large = evaluator.subnet(small), evaluator.subnet(large)
    pair = nesting(space, "a", small, net_small, "b", large, net_large)
    assert pair.contains and pair.literal and pair.shared_of_smaller == 1.0
    n_small = sum(p.numel() for p in net_small.parameters())
    n_large = sum(p.numel() for p in net_large.parameters())
    assert pair.shared_weight_fraction == pytest.approx(n_small / n_large)
    reverse = nesting(space, "b", large, net_large, "a", small, net_small)
    assert not reverse.contains and not reverse.literal  # the larger is no prefix of the smaller
    with_itself = nesting(space, "a", small, net_small, "a2", small, evaluator.subnet(small))
    assert with_itself.literal and with_itself.shared_weight_fraction == 1.0


def test_assessment_reports_each_member_and_the_flip_matrix(evaluator, digits):
    space = evaluator.space
    rng = random.Random(0)
    middle = space.sample(rng, space.smallest())
    archs = [space.smallest(), middle, space.largest()]
    members = [Member(t, a, space.flops(a), 0.0, None, 1) for t, a in zip(("phone", "edge", "server"), archs)]
    result = assess(evaluator, members)
    records, matrix = result.section["family"], np.array(result.section["flip_matrix"])
    labels = digits["test"].y.numpy()
    assert [r["target"] for r in records] == ["phone", "edge", "server"]
    assert [r["top1"] for r in records] == [pytest.approx(float(np.mean(p == labels))) for p in result.preds]
    assert records[0]["nfr_vs_prev"] is None and records[1]["nfr_vs_prev"] == pytest.approx(matrix[0, 1])
    assert matrix.shape == (3, 3) and np.all(np.diag(matrix) == 0)
    assert sum(records[2]["flips_per_class"]) == round(matrix[1, 2] * len(labels))
    assert [(n["smaller"], n["larger"]) for n in result.section["nesting"]] == [("phone", "edge"), ("edge", "server")]

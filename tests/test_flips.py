import numpy as np
import pytest

from regnas.flips import compare, flip_matrix, interval, judge, negative_flips, nfi, nfr, pfr, samples_to_decide, top1

LABELS = np.array([0, 1, 2, 3, 0, 1, 2, 3])
OLD = np.array([0, 1, 2, 3, 1, 1, 0, 0])  # right on 0,1,2,3,5
NEW = np.array([0, 2, 2, 0, 0, 1, 0, 3])  # right on 0,2,4,5,7


def test_counts_match_hand_computed_values():
    assert top1(OLD, LABELS) == 5 / 8
    assert top1(NEW, LABELS) == 5 / 8
    assert negative_flips(OLD, NEW, LABELS).tolist() == [False, True, False, True, False, False, False, False]
    assert nfr(OLD, NEW, LABELS) == 2 / 8
    assert pfr(OLD, NEW, LABELS) == 2 / 8
    assert nfi(OLD, NEW, LABELS) == 2 / 3


def test_compare_and_matrix():
    stats = compare(OLD, NEW, LABELS)
    assert (stats.n, stats.flips) == (8, 2)
    m = flip_matrix([OLD, NEW, LABELS], LABELS)
    assert m[0][1] == 2 / 8 and m[1][0] == 2 / 8
    assert m[2][0] == 3 / 8 and m[0][2] == 0.0
    assert all(m[i][i] == 0 for i in range(3))


def test_nfi_without_errors_is_zero_and_shape_mismatch_raises():
    assert nfi(OLD, LABELS, LABELS) == 0.0
    with pytest.raises(ValueError):
        nfr(OLD[:3], NEW, LABELS)


def test_interval_is_the_exact_two_sided_clopper_pearson_interval():
    low, high = interval(0, 100, 0.95)
    assert low == 0 and high == pytest.approx(1 - 0.025 ** (1 / 100))
    low, high = interval(5, 100, 0.95)
    assert 0 < low < 0.05 < high < 0.12
    assert interval(100, 100, 0.95)[1] == 1.0


@pytest.mark.parametrize(
    "flips,n,status",
    [
        (0, 10_000, "passed"),  # the upper bound (0.037%) is within 0.2%
        (50, 10_000, "failed"),  # the lower bound (0.37%) is above 0.2%
        (0, 269, "inconclusive"),  # 0 of 269 cannot show 0.2%: the upper bound is 1.4%
        (1, 269, "inconclusive"),  # nor does one flip (0.37%) show a regression
    ],
)
def test_verdicts_carry_the_uncertainty_of_the_sample(flips, n, status):
    v = judge(flips, n, 0.002)
    assert v.status.startswith(status) and v.low <= flips / n <= v.high


def test_inconclusive_names_a_sample_size_that_would_decide():
    v = judge(0, 269, 0.002)
    need = int(v.status.split("about ")[1].split(" ")[0].replace(",", ""))
    assert judge(0, need, 0.002).status == "passed" and judge(0, need // 2, 0.002).status.startswith("inconclusive")
    assert samples_to_decide(0.002, 0.002) is None

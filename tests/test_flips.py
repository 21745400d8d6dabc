import numpy as np
import pytest

from regnas.flips import compare, flip_matrix, negative_flips, nfi, nfr, pfr, top1

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

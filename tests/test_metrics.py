"""Metrics on hand-made inputs whose values are worked out by hand below."""

import math

import numpy as np
import pytest

from mnemonics_lib.metrics import (
    accuracy_matrix,
    average_incremental_accuracy,
    chaudhry_forgetting,
    forgetting_rate,
    last_accuracy,
    old_new_accuracy,
    stack_accuracy_rows,
)

NAN = np.nan
# A[p, g]: accuracy after phase p on the classes of phase g.  A[1, 0] > A[0, 0] on
# purpose, so the Chaudhry max over p differs from the Mnemonics A[0, 0].
A = np.array(
    [
        [80.0, NAN, NAN],
        [85.0, 70.0, NAN],
        [50.0, 65.0, 90.0],
    ]
)

# 6 classes, two per phase; labels are order positions.
PHASE_OF_CLASS = np.array([0, 0, 1, 1, 2, 2])


def test_accuracy_row_per_phase_group():
    y_true = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    y_pred = np.array([0, 1, 1, 1, 2, 0, 0, 3])
    row = accuracy_matrix(y_true, y_pred, PHASE_OF_CLASS, phase=1)
    # group 0 (classes 0,1): preds 0,1,1,1 vs 0,0,1,1 -> 3/4 = 75 %
    # group 1 (classes 2,3): preds 2,0,0,3 vs 2,2,3,3 -> 2/4 = 50 %
    # group 2 not seen yet -> nan
    assert row.shape == (3,)
    np.testing.assert_array_equal(row[:2], [75.0, 50.0])
    assert math.isnan(row[2])


def test_accuracy_row_groups_follow_the_mapping_not_label_ranges():
    # Class 2 belongs to phase 0 here: groups come from phase_of_class only.
    poc = np.array([0, 1, 0])
    row = accuracy_matrix(np.array([0, 1, 2, 2]), np.array([0, 0, 2, 1]), poc, phase=1)
    # group 0 = classes {0, 2}: samples 0,2,2 -> correct 0,2 -> 2/3; group 1 = class 1: 0/1
    np.testing.assert_allclose(row, [200.0 / 3.0, 0.0])


def test_stack_rows_builds_lower_triangular_matrix():
    rows = [A[0], A[1], A[2]]
    mat = stack_accuracy_rows(rows)
    np.testing.assert_array_equal(mat, A)  # nan == nan under assert_array_equal
    assert np.isnan(mat[np.triu_indices(3, k=1)]).all()


def test_stack_rows_rejects_values_above_diagonal_and_ragged_rows():
    bad = A.copy()
    bad[0, 2] = 10.0
    with pytest.raises(ValueError, match="above the diagonal"):
        stack_accuracy_rows(list(bad))
    with pytest.raises(ValueError, match="shape"):
        stack_accuracy_rows([A[0], A[1][:2]])
    with pytest.raises(ValueError, match="no accuracy rows"):
        stack_accuracy_rows([])


def test_forgetting_rate_is_first_column_drop():
    # A[0, 0] - A[2, 0] = 80 - 50 = 30
    assert forgetting_rate(A) == pytest.approx(30.0)


def test_chaudhry_forgetting_uses_max_over_earlier_phases():
    # g = 0: max(A[0,0], A[1,0]) - A[2,0] = max(80, 85) - 50 = 35
    # g = 1: max(A[1,1])          - A[2,1] = 70 - 65        = 5
    # mean = (35 + 5) / 2 = 20
    assert chaudhry_forgetting(A) == pytest.approx(20.0)


def test_single_phase_forgetting():
    one = np.array([[77.0]])
    assert forgetting_rate(one) == 0.0
    assert math.isnan(chaudhry_forgetting(one))


def test_matrix_validation():
    with pytest.raises(ValueError, match="square"):
        forgetting_rate(A[:2])
    with pytest.raises(ValueError, match="empty"):
        forgetting_rate(np.empty((0, 0)))
    holey = A.copy()
    holey[2, 1] = NAN
    with pytest.raises(ValueError, match="non-finite"):
        chaudhry_forgetting(holey)


def test_aia_with_and_without_first_phase():
    per_phase = [90.0, 75.0, 60.0, 55.0]
    # (90 + 75 + 60 + 55) / 4 = 280 / 4 = 70
    assert average_incremental_accuracy(per_phase) == pytest.approx(70.0)
    assert average_incremental_accuracy(per_phase, include_first=True) == pytest.approx(70.0)
    # (75 + 60 + 55) / 3 = 190 / 3 = 63.333...
    assert average_incremental_accuracy(per_phase, include_first=False) == pytest.approx(190 / 3)
    assert last_accuracy(per_phase) == 55.0


def test_per_phase_validation():
    with pytest.raises(ValueError, match="empty"):
        average_incremental_accuracy([])
    with pytest.raises(ValueError, match="non-finite"):
        average_incremental_accuracy([80.0, NAN])
    with pytest.raises(ValueError, match="incremental phase"):
        average_incremental_accuracy([80.0], include_first=False)
    with pytest.raises(ValueError, match="1-D"):
        last_accuracy(A)


def test_old_new_accuracy():
    y_true = np.array([0, 1, 2, 3, 4])
    y_pred = np.array([0, 0, 2, 3, 0])
    old, new = old_new_accuracy(y_true, y_pred, n_old=2)
    # old = classes {0, 1}: 0->0 right, 1->0 wrong -> 50 %
    # new = classes {2, 3, 4}: right, right, wrong -> 200/3 %
    assert old == pytest.approx(50.0)
    assert new == pytest.approx(200.0 / 3.0)
    old0, new0 = old_new_accuracy(y_true, y_pred, n_old=0)  # phase 0: nothing is old
    assert math.isnan(old0)
    assert new0 == pytest.approx(60.0)  # 3 of 5


@pytest.mark.parametrize(
    "y_true, y_pred, match",
    [
        (np.array([0, 1]), np.array([0]), "length"),
        (np.array([], dtype=int), np.array([], dtype=int), "empty"),
        (np.array([0.0, 1.0]), np.array([0, 1]), "integer"),
        (np.array([[0, 1]]), np.array([[0, 1]]), "1-D"),
    ],
)
def test_label_validation(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        old_new_accuracy(y_true, y_pred, n_old=1)
    with pytest.raises(ValueError, match=match):
        accuracy_matrix(y_true, y_pred, PHASE_OF_CLASS, phase=0)


def test_accuracy_row_validation():
    y = np.array([0, 1, 2, 3])
    with pytest.raises(ValueError, match="phase=3 outside"):
        accuracy_matrix(y, y, PHASE_OF_CLASS, phase=3)
    with pytest.raises(ValueError, match="introduced after phase 0"):
        accuracy_matrix(y, y, PHASE_OF_CLASS, phase=0)
    with pytest.raises(ValueError, match="no test sample for the classes of phase 1"):
        accuracy_matrix(np.array([0, 1, 4]), np.array([0, 1, 4]), PHASE_OF_CLASS, phase=2)
    with pytest.raises(ValueError, match="outside"):
        accuracy_matrix(np.array([0, 9]), np.array([0, 9]), PHASE_OF_CLASS, phase=2)

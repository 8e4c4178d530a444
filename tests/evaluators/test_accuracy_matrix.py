"""Accuracy-matrix scores against hand-computed 3-task matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clbench.evaluators import (
    EvaluatorError,
    accuracy,
    accuracy_matrix,
    average_accuracy,
    backward_transfer,
    backward_transfer_per_task,
    class_incremental_predictions,
    forgetting,
    forgetting_per_task,
    forward_transfer,
    forward_transfer_per_task,
    macro_f1,
    task_aware_predictions,
)

# Rows: 0 = pretrained, i = after task i. Columns: tasks 1, 2, 3.
# Task 1 peaks after task 2 (0.9), so max-based forgetting (0.9 - 0.6) differs from first-minus-last (0.8 - 0.6).
R = np.array(
    [
        [0.10, 0.20, 0.30],
        [0.80, 0.25, 0.30],
        [0.90, 0.70, 0.40],
        [0.60, 0.50, 0.75],
    ]
)


def test_average_accuracy_is_mean_of_last_row() -> None:
    assert average_accuracy(R) == pytest.approx((0.60 + 0.50 + 0.75) / 3)


def test_backward_transfer_uses_row_where_each_task_was_learned() -> None:
    # Task 1 learned at row 1 (R[1,0]=0.8), task 2 at row 2 (R[2,1]=0.7); both end 0.2 lower.
    np.testing.assert_allclose(backward_transfer_per_task(R), [0.60 - 0.80, 0.50 - 0.70])
    assert backward_transfer(R) == pytest.approx(-0.2)


def test_forgetting_is_max_based_and_differs_from_first_minus_last() -> None:
    # f_1 = max(R[1,0], R[2,0]) - R[3,0] = 0.9 - 0.6; f_2 = R[2,1] - R[3,1] = 0.7 - 0.5.
    np.testing.assert_allclose(forgetting_per_task(R), [0.3, 0.2])
    assert forgetting(R) == pytest.approx(0.25)
    first_minus_last = -backward_transfer(R)
    assert first_minus_last == pytest.approx(0.2)
    assert forgetting(R) != pytest.approx(first_minus_last)


def test_forgetting_ignores_rows_before_the_task_was_learned() -> None:
    # A high zero-shot accuracy (row 0) or one reached before the task was trained (row 1 for task 2) is not
    # something the model learned, so it cannot be forgotten (Chaudhry et al. define a_{l,j} only for l >= j).
    high_early = R.copy()
    high_early[0, :] = 0.99
    high_early[1, 1] = 0.95
    np.testing.assert_allclose(forgetting_per_task(high_early), [0.3, 0.2])


def test_forward_transfer_is_against_row_zero() -> None:
    # Task 2: R[1,1] - R[0,1] = 0.25 - 0.20; task 3: R[2,2] - R[0,2] = 0.40 - 0.30.
    np.testing.assert_allclose(forward_transfer_per_task(R), [0.05, 0.10])
    assert forward_transfer(R) == pytest.approx(0.075)


def test_forward_transfer_with_explicit_baseline() -> None:
    random_init = np.array([0.2, 0.5, 0.5])
    np.testing.assert_allclose(forward_transfer_per_task(R, random_init), [0.25 - 0.5, 0.40 - 0.5])
    with pytest.raises(EvaluatorError, match="baseline"):
        forward_transfer(R, [0.1, 0.2])


def test_single_task_scores_are_nan() -> None:
    one = np.array([[0.1], [0.9]])
    assert average_accuracy(one) == pytest.approx(0.9)
    for score in (backward_transfer, forward_transfer, forgetting):
        assert math.isnan(score(one))


def test_perfect_memory_gives_zero_forgetting_and_bwt() -> None:
    constant = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    assert backward_transfer(constant) == 0.0
    assert forgetting(constant) == 0.0
    assert average_accuracy(constant) == 1.0


def test_accuracy_matrix_from_rows_and_records_agree() -> None:
    from_rows = accuracy_matrix([list(row) for row in R])
    records = [{"train_task": i, "eval_task": j, "value": float(R[i, j])} for i in range(4) for j in range(3)]
    from_records = accuracy_matrix(reversed(records))
    np.testing.assert_array_equal(from_rows, R)
    np.testing.assert_array_equal(from_records, R)
    np.testing.assert_array_equal(accuracy_matrix(R), R)


def test_accuracy_matrix_records_with_custom_keys_and_missing_cells() -> None:
    records = [{"after": 1, "task": 0, "acc": 0.8}, {"after": 2, "task": 1, "acc": 0.7}]
    matrix = accuracy_matrix(records, row_key="after", col_key="task", value_key="acc", num_tasks=3)
    assert matrix.shape == (4, 3)
    assert matrix[1, 0] == 0.8 and matrix[2, 1] == 0.7
    assert np.isnan(matrix[0, 0]) and np.isnan(matrix[3, 2])


def test_accuracy_matrix_rejects_bad_input() -> None:
    with pytest.raises(EvaluatorError, match=r"\(T\+1, T\)"):
        accuracy_matrix([[0.1, 0.2], [0.3, 0.4]])  # T rows: row 0 is missing
    with pytest.raises(EvaluatorError, match="two accuracy records"):
        accuracy_matrix([{"train_task": 1, "eval_task": 0, "value": 0.5}] * 2)
    with pytest.raises(EvaluatorError, match="lacks key"):
        accuracy_matrix([{"stage": 1, "eval_task": 0, "value": 0.5}])
    with pytest.raises(EvaluatorError, match="outside"):
        accuracy_matrix([{"train_task": 5, "eval_task": 0, "value": 0.5}], num_tasks=2)
    with pytest.raises(EvaluatorError):
        average_accuracy(np.zeros((3, 3)))


# Shared head: task A owns classes 0-2, task B owns classes 3-4.
LOGITS = torch.tensor(
    [
        [2.0, 1.0, 0.0, 5.0, 0.0],  # globally class 3 (task B); within task A class 0
        [0.0, 3.0, 0.0, 1.0, 0.0],  # class 1 either way
        [0.0, 0.0, 1.0, 0.0, 4.0],  # globally class 4; within task A class 2
    ]
)


def test_class_incremental_vs_task_aware_predictions() -> None:
    assert class_incremental_predictions(LOGITS).tolist() == [3, 1, 4]
    assert task_aware_predictions(LOGITS, label_offset=0, num_classes=3).tolist() == [0, 1, 2]
    assert task_aware_predictions(LOGITS, label_offset=3, num_classes=2).tolist() == [3, 3, 4]
    target = torch.tensor([0, 1, 2])
    assert accuracy(class_incremental_predictions(LOGITS), target) == pytest.approx(1 / 3)
    assert accuracy(task_aware_predictions(LOGITS, 0, 3), target) == 1.0


def test_task_aware_predictions_with_per_example_tasks() -> None:
    offsets = torch.tensor([0, 3, 0])
    sizes = torch.tensor([3, 2, 3])
    assert task_aware_predictions(LOGITS, offsets, sizes).tolist() == [0, 3, 2]
    with pytest.raises(EvaluatorError, match="do not fit"):
        task_aware_predictions(LOGITS, 4, 2)


def test_accuracy_on_numpy_and_empty() -> None:
    assert accuracy(np.array([1, 2, 3]), np.array([1, 0, 3])) == pytest.approx(2 / 3)
    assert math.isnan(accuracy([], []))
    with pytest.raises(EvaluatorError):
        accuracy([1, 2], [1])


def test_macro_f1_hand_computed() -> None:
    target = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 7, 2]  # 7: another task's class, a false negative for class 1 only
    # class 0: tp 2, fp 0, fn 1 -> 4/5; class 1: tp 1, fp 1, fn 1 -> 2/4; class 2: tp 1 -> 1.
    assert macro_f1(pred, target, labels=[0, 1, 2]) == pytest.approx((0.8 + 0.5 + 1.0) / 3)
    # A label never seen nor predicted is left out rather than scored 0.
    assert macro_f1(pred, target, labels=[0, 1, 2, 9]) == pytest.approx((0.8 + 0.5 + 1.0) / 3)
    assert math.isnan(macro_f1(pred, target, labels=[9]))

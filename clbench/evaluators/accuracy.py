"""Accuracy matrix and the continual-learning scores computed from it.

Index convention (used by every function here and in the report):

    R has shape (T+1, T).
    Rows are *training stages*: row 0 is the model before any training (the pretrained model, not a random
    init); row i (1 <= i <= T) is the model after training task i, tasks counted from 1.
    Columns are *evaluated tasks*, 0-based in code: column c is task c+1.

So task k (1-based) is learned at row k and sits in column k-1; its "diagonal" entry is ``R[k, k-1]``.
In the formulas below tasks are written 1-based (j = 1..T) as in the papers; the code reads ``R[i, j-1]``.

- ACC  = (1/T)     Σ_{j=1..T}   R[T, j]                          (average accuracy after the last task)
- BWT  = (1/(T-1)) Σ_{j=1..T-1} (R[T, j] − R[j, j])              (Lopez-Paz & Ranzato, 2017, Eq. 3)
- FWT  = (1/(T-1)) Σ_{j=2..T}   (R[j-1, j] − b_j), b_j = R[0, j] (Lopez-Paz & Ranzato, 2017, Eq. 4, with the
  pretrained model's row 0 as the baseline b instead of a random init)
- f_j  = max_{l ∈ {j..T-1}} R[l, j] − R[T, j],  F = (1/(T-1)) Σ_{j=1..T-1} f_j   (Chaudhry et al., 2018, Eq. 8)

With a single task (T = 1) BWT, FWT and forgetting average over an empty set and are NaN.

References:
    D. Lopez-Paz, M. Ranzato. Gradient Episodic Memory for Continual Learning. NeurIPS 2017.
    A. Chaudhry, P. K. Dokania, T. Ajanthan, P. H. S. Torr. Riemannian Walk for Incremental Learning:
    Understanding Forgetting and Intransigence. ECCV 2018.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor

from clbench.errors import ClbenchError

FloatArray = NDArray[np.float64]


class EvaluatorError(ClbenchError, ValueError):
    """An evaluator received inputs of the wrong shape or inconsistent contents."""


def accuracy_matrix(
    data: Iterable[Sequence[float] | NDArray[Any]] | Iterable[Mapping[str, Any]] | NDArray[Any],
    *,
    num_tasks: int | None = None,
    row_key: str = "train_task",
    col_key: str = "eval_task",
    value_key: str = "value",
) -> FloatArray:
    """Build the (T+1) × T accuracy matrix R from per-row arrays or from result records.

    Two input forms:

    - **Rows**: T+1 sequences of length T (or a 2-D array); row 0 is before any training, row i after
      training task i.
    - **Records**: mappings with an integer training stage under ``row_key`` (0 = before training, i = after
      task i, 1-based), an integer 0-based evaluated task under ``col_key`` and the accuracy under
      ``value_key``. Filter the records to one unit and one metric before calling. Cells with no record are
      NaN; a cell given twice is an error.

    Args:
        data: Rows or records as above.
        num_tasks: T. Required only for records when the last task's column or row may be missing; by default
            it is inferred (max column + 1, or max row).
        row_key: Record key of the training stage.
        col_key: Record key of the evaluated task.
        value_key: Record key of the accuracy.

    Returns:
        R as a float64 array of shape (T+1, T).

    Raises:
        EvaluatorError: If rows do not form a (T+1) × T matrix, or records are out of range or duplicated.
    """
    if isinstance(data, np.ndarray):
        items: list[Any] = [data] if data.ndim != 2 else list(data)
    else:
        items = list(data)
    if items and all(isinstance(item, Mapping) for item in items):
        return _matrix_from_records(items, num_tasks, row_key, col_key, value_key)
    matrix = np.asarray(items, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] + 1 or matrix.shape[1] == 0:
        raise EvaluatorError(
            f"accuracy rows have shape {matrix.shape}; expected (T+1, T) with row 0 evaluated before training"
        )
    if num_tasks is not None and matrix.shape[1] != num_tasks:
        raise EvaluatorError(f"accuracy rows have {matrix.shape[1]} columns but num_tasks={num_tasks}")
    return matrix


def _matrix_from_records(
    records: list[Mapping[str, Any]], num_tasks: int | None, row_key: str, col_key: str, value_key: str
) -> FloatArray:
    cells: dict[tuple[int, int], float] = {}
    for record in records:
        try:
            row, col, value = int(record[row_key]), int(record[col_key]), float(record[value_key])
        except KeyError as exc:
            raise EvaluatorError(
                f"accuracy record {dict(record)!r} lacks key {exc.args[0]!r}; pass row_key/col_key/value_key"
            ) from None
        if (row, col) in cells:
            raise EvaluatorError(f"two accuracy records for training stage {row}, task {col}; filter first")
        cells[(row, col)] = value
    if num_tasks is None:
        num_tasks = max(max(col + 1 for _, col in cells), max(row for row, _ in cells))
    matrix = np.full((num_tasks + 1, num_tasks), np.nan)
    for (row, col), value in cells.items():
        if not (0 <= row <= num_tasks and 0 <= col < num_tasks):
            raise EvaluatorError(
                f"accuracy record at training stage {row}, task {col} lies outside a {num_tasks}-task matrix"
            )
        matrix[row, col] = value
    return matrix


def _check(R: ArrayLike) -> FloatArray:
    matrix = np.asarray(R, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] + 1 or matrix.shape[1] == 0:
        raise EvaluatorError(f"accuracy matrix has shape {matrix.shape}; expected (T+1, T)")
    return matrix


def _mean(values: FloatArray) -> float:
    return float(values.mean()) if values.size else float("nan")


def average_accuracy(R: ArrayLike) -> float:
    """ACC = (1/T) Σ_j R[T, j]: mean accuracy over all tasks after training the last one.

    Args:
        R: Accuracy matrix of shape (T+1, T) (see the module docstring for the index convention).

    Returns:
        ACC (NaN if any entry of the last row is NaN).
    """
    return _mean(_check(R)[-1])


def backward_transfer_per_task(R: ArrayLike) -> FloatArray:
    """Per-task backward transfer R[T, j] − R[j, j] for tasks j = 1..T-1 (1-based).

    In code: ``R[T, c] - R[c + 1, c]`` for columns c = 0..T-2 (task c+1 is learned at row c+1).

    Args:
        R: Accuracy matrix of shape (T+1, T).

    Returns:
        Array of length T-1; negative values mean the task was forgotten.
    """
    matrix = _check(R)
    T = matrix.shape[1]
    cols = np.arange(T - 1)
    return np.asarray(matrix[T, cols] - matrix[cols + 1, cols], dtype=np.float64)


def backward_transfer(R: ArrayLike) -> float:
    """BWT = (1/(T-1)) Σ_{j=1..T-1} (R[T, j] − R[j, j]) (Lopez-Paz & Ranzato, 2017, Eq. 3).

    Tasks j are 1-based; R[j, j] is the accuracy on task j right after training it, i.e. ``R[j, j-1]`` in
    0-based columns. NaN when T = 1.

    Args:
        R: Accuracy matrix of shape (T+1, T).

    Returns:
        BWT; negative means forgetting.
    """
    return _mean(backward_transfer_per_task(R))


def forward_transfer_per_task(R: ArrayLike, baseline: ArrayLike | None = None) -> FloatArray:
    """Per-task forward transfer R[j-1, j] − b_j for tasks j = 2..T (1-based).

    In code: ``R[c, c] - b[c]`` for columns c = 1..T-1 (row c is the model after task c, just before task
    c+1 is trained).

    Args:
        R: Accuracy matrix of shape (T+1, T).
        baseline: Accuracy of the reference model on each task, length T. Defaults to row 0 of R, the
            pretrained model before any training (not a random init as in Lopez-Paz & Ranzato).

    Returns:
        Array of length T-1.
    """
    matrix = _check(R)
    T = matrix.shape[1]
    b = matrix[0] if baseline is None else np.asarray(baseline, dtype=np.float64)
    if b.shape != (T,):
        raise EvaluatorError(f"forward-transfer baseline has shape {b.shape}; expected ({T},)")
    cols = np.arange(1, T)
    return np.asarray(matrix[cols, cols] - b[cols], dtype=np.float64)


def forward_transfer(R: ArrayLike, baseline: ArrayLike | None = None) -> float:
    """FWT = (1/(T-1)) Σ_{j=2..T} (R[j-1, j] − b_j) (Lopez-Paz & Ranzato, 2017, Eq. 4).

    b_j defaults to R[0, j], the pretrained model's accuracy on task j before any training. Tasks j are
    1-based; R[j-1, j] is the accuracy on task j after training the tasks before it (0-based column j-1).
    Task 1 has no earlier training and is excluded. NaN when T = 1.

    Args:
        R: Accuracy matrix of shape (T+1, T).
        baseline: Optional length-T baseline accuracies replacing row 0.

    Returns:
        FWT; positive means earlier tasks helped zero-shot accuracy on later ones.
    """
    return _mean(forward_transfer_per_task(R, baseline))


def forgetting_per_task(R: ArrayLike) -> FloatArray:
    """Per-task forgetting f_j = max_{l ∈ {j..T-1}} R[l, j] − R[T, j] for tasks j = 1..T-1 (1-based).

    Chaudhry et al. (2018, Eq. 8) take the max over l ∈ {1..k-1} of a_{l,j}, where a_{l,j} is defined only
    for tasks already seen (j ≤ l). Hence the max runs from the row where task j was learned (row j) up to
    row T-1; row 0 and rows before task j was trained are excluded, so a pretrained model's zero-shot
    accuracy never counts as "forgotten". In code, for column c: ``max(R[c+1:T, c]) - R[T, c]``.

    Unlike first-minus-last (``-backward_transfer_per_task``), this counts a task as forgotten from its
    best accuracy, which may be reached after later tasks (positive backward transfer, then a drop).

    Args:
        R: Accuracy matrix of shape (T+1, T).

    Returns:
        Array of length T-1; positive values mean forgetting.
    """
    matrix = _check(R)
    T = matrix.shape[1]
    return np.array([matrix[c + 1 : T, c].max() - matrix[T, c] for c in range(T - 1)], dtype=np.float64)


def forgetting(R: ArrayLike) -> float:
    """F = (1/(T-1)) Σ_{j=1..T-1} f_j, f_j = max_{l ∈ {j..T-1}} R[l, j] − R[T, j] (Chaudhry et al., 2018).

    See `forgetting_per_task` for the range of l. NaN when T = 1.

    Args:
        R: Accuracy matrix of shape (T+1, T).

    Returns:
        Mean forgetting; positive means forgetting.
    """
    return _mean(forgetting_per_task(R))


def class_incremental_predictions(logits: Tensor) -> Tensor:
    """Class-incremental predictions: argmax over all classes of the shared head.

    The model is not told the task, so a Yelp example may be predicted as an IMDB class.

    Args:
        logits: Shared-head logits, ``# [batch, classes]``.

    Returns:
        Global class ids, ``# [batch]``.
    """
    return logits.argmax(dim=-1)


def task_aware_predictions(logits: Tensor, label_offset: int | Tensor, num_classes: int | Tensor) -> Tensor:
    """Task-aware predictions: argmax within the task's own slice of the shared head.

    Prediction = label_offset + argmax_{c < num_classes} logits[:, label_offset + c]. Offsets may differ per
    example (a batch mixing tasks) by passing tensors.

    Args:
        logits: Shared-head logits, ``# [batch, classes]``.
        label_offset: Global id of the task's first class; an int or ``# [batch]``.
        num_classes: Number of classes of the task; an int or ``# [batch]``.

    Returns:
        Global class ids (within each example's task range), ``# [batch]``.
    """
    if isinstance(label_offset, int) and isinstance(num_classes, int):
        if label_offset < 0 or num_classes < 1 or label_offset + num_classes > logits.shape[-1]:
            raise EvaluatorError(
                f"task classes [{label_offset}, {label_offset + num_classes}) do not fit a head of "
                f"{logits.shape[-1]} classes"
            )
        return logits[:, label_offset : label_offset + num_classes].argmax(dim=-1) + label_offset
    offset = torch.as_tensor(label_offset, device=logits.device).reshape(-1, 1)  # [batch or 1, 1]
    count = torch.as_tensor(num_classes, device=logits.device).reshape(-1, 1)  # [batch or 1, 1]
    classes = torch.arange(logits.shape[-1], device=logits.device).unsqueeze(0)  # [1, classes]
    inside = (classes >= offset) & (classes < offset + count)  # [batch, classes]
    if not bool(inside.any(dim=-1).all()):
        raise EvaluatorError("task-aware prediction: some example's task has no classes inside the head")
    return logits.masked_fill(~inside, float("-inf")).argmax(dim=-1)


def _as_numpy(x: Tensor | ArrayLike) -> NDArray[Any]:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def accuracy(pred: Tensor | ArrayLike, target: Tensor | ArrayLike) -> float:
    """Fraction of predictions equal to the target: (1/N) Σ_n [pred_n = target_n].

    Args:
        pred: Predicted class ids, ``# [N]``.
        target: True class ids (same id space as ``pred``), ``# [N]``.

    Returns:
        Accuracy in [0, 1]; NaN for N = 0.
    """
    p, t = _as_numpy(pred).reshape(-1), _as_numpy(target).reshape(-1)
    if p.shape != t.shape:
        raise EvaluatorError(f"accuracy: {p.shape[0]} predictions for {t.shape[0]} targets")
    return float((p == t).mean()) if p.size else float("nan")


def macro_f1(pred: Tensor | ArrayLike, target: Tensor | ArrayLike, labels: Iterable[int]) -> float:
    """Macro-averaged F1 over the given labels: (1/|L|) Σ_{c ∈ L} 2·TP_c / (2·TP_c + FP_c + FN_c).

    Predictions outside ``labels`` (e.g. another task's class under class-incremental evaluation) count as
    false negatives for the true class and as nobody's false positive, as in scikit-learn with ``labels=``.
    A label with TP + FP + FN = 0 (absent from the targets and never predicted) has no defined F1 and is left
    out of the mean, rather than scored 0 as scikit-learn does by default.

    Args:
        pred: Predicted class ids, ``# [N]``.
        target: True class ids, ``# [N]``.
        labels: The class ids to average over (usually the task's global label range).

    Returns:
        Macro-F1 in [0, 1]; NaN if no label has any support or prediction.
    """
    p, t = _as_numpy(pred).reshape(-1), _as_numpy(target).reshape(-1)
    if p.shape != t.shape:
        raise EvaluatorError(f"macro_f1: {p.shape[0]} predictions for {t.shape[0]} targets")
    scores = []
    for label in labels:
        tp = int(np.sum((p == label) & (t == label)))
        fp = int(np.sum((p == label) & (t != label)))
        fn = int(np.sum((p != label) & (t == label)))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")

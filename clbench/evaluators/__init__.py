"""Evaluators: pure metric functions on arrays and tensors.

They never see methods or the runner. Each function's docstring gives its formula, index conventions and
reference. The accuracy matrix convention used throughout: R has shape (T+1, T); row 0 is the pretrained model
before any training, row i the model after training task i (1-based); column j (0-based) is task j+1.
"""

from clbench.evaluators.accuracy import (
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
from clbench.evaluators.drift import (
    FunctionalDrift,
    frobenius_drift,
    functional_drift,
    grouped_frobenius_drift,
    layer_key,
    lora_delta_weight,
)
from clbench.evaluators.profile import ProfileRecord, optimizer_state_mb, parameter_counts, profile
from clbench.evaluators.stats import (
    Summary,
    ci_half_width,
    mean,
    significantly_different,
    std,
    summarize,
    welch_t_test,
)

__all__ = [
    "EvaluatorError",
    "FunctionalDrift",
    "ProfileRecord",
    "Summary",
    "accuracy",
    "accuracy_matrix",
    "average_accuracy",
    "backward_transfer",
    "backward_transfer_per_task",
    "ci_half_width",
    "class_incremental_predictions",
    "forgetting",
    "forgetting_per_task",
    "forward_transfer",
    "forward_transfer_per_task",
    "frobenius_drift",
    "functional_drift",
    "grouped_frobenius_drift",
    "layer_key",
    "lora_delta_weight",
    "macro_f1",
    "mean",
    "optimizer_state_mb",
    "parameter_counts",
    "profile",
    "significantly_different",
    "std",
    "summarize",
    "task_aware_predictions",
    "welch_t_test",
]

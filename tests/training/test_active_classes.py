"""Active classes: which outputs the training cross-entropy sees (all, seen, current); evaluation is unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clbench.data import TaskInfo
from clbench.protocol import RunContext

TASKS = (TaskInfo(0, "a", ("x", "y"), 0), TaskInfo(1, "b", ("u", "v", "w"), 2), TaskInfo(2, "c", ("p", "q"), 5))


def context(active: str, task_index: int) -> RunContext:
    return RunContext(tasks=TASKS, num_labels=7, device=torch.device("cpu"), seed=0,
                      generator=torch.Generator(), buffer_size=0, batch_size=2, active_classes=active,
                      task_index=task_index)


@pytest.mark.parametrize(("active", "finite"), [
    ("all", [[1] * 7, [1] * 7]),
    ("seen", [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0, 0]]),  # tasks 1 and 2 trained or training; task 3 not yet
    ("current", [[0, 0, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 0]]),  # each example's own task
])
def test_loss_logits_mask_what_the_loss_must_not_see(active: str, finite: list[list[int]]) -> None:
    ctx = context(active, task_index=1)
    task_ids = torch.tensor([1, 0])  # a new example of task 2 and a replayed one of task 1
    logits = ctx.loss_logits(torch.zeros(2, 7), task_ids)
    assert torch.isfinite(logits).int().tolist() == finite
    assert torch.equal(ctx.logits(torch.zeros(2, 7), task_ids), torch.zeros(2, 7))  # evaluation: every class


def test_masked_classes_get_no_gradient_from_the_task_loss() -> None:
    ctx = context("current", task_index=1)
    raw = torch.randn(3, 7, requires_grad=True)
    labels = torch.tensor([2, 4, 3])
    nn.functional.cross_entropy(ctx.loss_logits(raw, torch.ones(3, dtype=torch.long)), labels).backward()
    assert raw.grad is not None
    assert torch.count_nonzero(raw.grad[:, [0, 1, 5, 6]]) == 0  # task 1's and task 3's rows untouched
    assert torch.count_nonzero(raw.grad[:, 2:5]) == 9

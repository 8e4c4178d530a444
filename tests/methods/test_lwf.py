"""LwF: the distillation term is zero when the student reproduces the cached teacher, and acts on old classes."""

from __future__ import annotations

import pytest
import torch

from clbench.data import EncodedSplit, TaskInfo
from clbench.methods import RunContext
from clbench.methods.lwf import LwF, LwFConfig, distillation_loss
from clbench.models import build_model

TASKS = (TaskInfo(0, "a", ("x", "y", "z"), 0), TaskInfo(1, "b", ("x", "y"), 3))


def split(task: TaskInfo, n: int) -> EncodedSplit:
    g = torch.Generator().manual_seed(task.index)
    ids = torch.randint(5, 60, (n, 7), generator=g)  # [n, seq]
    labels = task.label_offset + torch.randint(0, task.num_classes, (n,), generator=g)
    return EncodedSplit(ids, torch.randint(2, 8, (n,), generator=g), labels, torch.full((n,), task.index))


def context(head: str = "shared") -> RunContext:
    return RunContext(tasks=TASKS, num_labels=5, device=torch.device("cpu"), seed=0,
                      generator=torch.Generator().manual_seed(1), buffer_size=0, batch_size=4, head=head)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_distillation_is_zero_at_the_teacher_and_positive_elsewhere(temperature: float) -> None:
    teacher = torch.randn(6, 5)
    groups = [torch.arange(3)]
    assert distillation_loss(teacher.clone(), teacher, groups, temperature).abs().item() < 1e-6
    assert distillation_loss(teacher + torch.randn(6, 5), teacher, groups, temperature).item() > 0
    # only the old classes' columns matter
    moved = teacher.clone()
    moved[:, 3:] += 10
    assert distillation_loss(moved, teacher, groups, temperature).abs().item() < 1e-6


def test_distillation_equals_soft_cross_entropy_minus_teacher_entropy() -> None:
    student, teacher, t = torch.randn(4, 3), torch.randn(4, 3), 2.0
    q = torch.softmax(teacher / t, dim=1)
    cross = -(q * torch.log_softmax(student / t, dim=1)).sum(1).mean()
    entropy = -(q * torch.log(q)).sum(1).mean()
    assert torch.allclose(distillation_loss(student, teacher, [torch.arange(3)], t), cross - entropy, atol=1e-6)


@pytest.mark.parametrize("head", ["shared", "per-task"])
def test_hook_loss_is_task_loss_while_the_model_equals_its_cached_teacher(head: str) -> None:
    method = LwF(LwFConfig(distill_weight=3.0, temperature=2.0))
    model = method.setup(build_model("tiny", 5, 0), context(head))
    data = split(TASKS[1], 10)
    method.before_task(TASKS[1], model)
    assert method.train_data(TASKS[1], data, [split(TASKS[0], 10)]) is data
    model.eval()  # no dropout: the student is exactly the teacher
    batch = data.batch(torch.tensor([7, 1, 4]))
    outputs = model(**batch.model_inputs())
    task_loss = torch.tensor(0.5)
    assert torch.allclose(method.loss(model, batch, outputs, task_loss), task_loss, atol=1e-6)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    outputs = model(**batch.model_inputs())
    assert method.loss(model, batch, outputs, task_loss).item() > 0.5 + 1e-6


THREE = (TaskInfo(0, "a", ("x", "y", "z"), 0), TaskInfo(1, "b", ("x", "y"), 3), TaskInfo(2, "c", ("x", "y"), 5))


@pytest.mark.parametrize("head", ["shared", "per-task"])
def test_hook_distils_exactly_the_old_classes(head: str) -> None:
    """λ·KL(softmax(teacher/T) ‖ softmax(student/T)) over tasks 1..t−1's classes only (one softmax over all of
    them with a shared head, one per old task with per-task heads), never over the new task's classes."""
    ctx = RunContext(tasks=THREE, num_labels=7, device=torch.device("cpu"), seed=0,
                     generator=torch.Generator().manual_seed(1), buffer_size=0, batch_size=4, head=head)
    method = LwF(LwFConfig(distill_weight=3.0, temperature=2.0))
    model = method.setup(build_model("tiny", 7, 0), ctx)
    data = split(THREE[2], 10)
    method.before_task(THREE[2], model)
    method.train_data(THREE[2], data, [split(THREE[0], 10), split(THREE[1], 10)])
    model.eval()  # no dropout: the student below is a deterministic network
    rows = torch.tensor([7, 1, 4])
    batch = data.batch(rows)
    with torch.no_grad():
        teacher = model(**data.batch(torch.arange(10)).model_inputs()).logits[rows]  # [3, 7]
        # move only the new task's outputs (differently, so their own softmax changes too): nothing old changes
        model.classifier.weight[5:] += torch.randn(2, model.classifier.in_features,
                                                   generator=torch.Generator().manual_seed(3))
        model.classifier.bias[5:] += torch.tensor([1.0, -2.0])
    task_loss = torch.tensor(0.5)
    outputs = model(**batch.model_inputs())
    moved = outputs.logits[:, 5:].detach()
    assert not torch.allclose(moved.softmax(1), teacher[:, 5:].softmax(1), atol=1e-3)
    torch.testing.assert_close(method.loss(model, batch, outputs, task_loss), task_loss)

    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(2)))
    outputs = model(**batch.model_inputs())
    groups = [[0, 1, 2, 3, 4]] if head == "shared" else [[0, 1, 2], [3, 4]]
    expected = task_loss.clone()
    for cols in groups:
        log_q = torch.log_softmax(teacher[:, cols] / 2.0, dim=1)
        log_p = torch.log_softmax(outputs.logits[:, cols].detach() / 2.0, dim=1)
        expected += 3.0 * (log_q.exp() * (log_q - log_p)).sum(1).mean()
    assert float(expected) > 0.5 + 1e-4
    torch.testing.assert_close(method.loss(model, batch, outputs, task_loss).detach(), expected)


def test_first_task_is_plain_fine_tuning() -> None:
    method = LwF()
    model = method.setup(build_model("tiny", 5, 0), context())
    data = split(TASKS[0], 6)
    method.before_task(TASKS[0], model)
    method.train_data(TASKS[0], data, [])
    batch = data.batch(torch.arange(3))
    task_loss = torch.tensor(1.25)
    assert method.loss(model, batch, model(**batch.model_inputs()), task_loss) is task_loss

"""Learning without Forgetting (LwF): distil the previous model's outputs on the new task's inputs.

Li & Hoiem, "Learning without Forgetting", ECCV 2016 / TPAMI 2017. Before training task t, the model as it
stands (the teacher) labels task t's training inputs with its outputs on the classes of tasks 1..t−1. While
training, the loss adds λ · L_old, where L_old makes the current outputs on those old classes match the
teacher's softened distribution at temperature T (Eq. 2, T = 2 in the paper). We write L_old as the KL
divergence KL(softmax(y_old / T) ‖ softmax(ŷ_old / T)), averaged over the batch: it differs from the paper's
soft cross-entropy only by the teacher's entropy, a constant, so the gradients are the same, and it is 0
exactly when the student reproduces the teacher. No T² factor is applied (as in the paper and in Avalanche's
`LwF`). With a shared head the old classes form one distribution; with per-task heads each old task's head is
distilled on its own and the terms are summed (the paper's multi-head form).

No second model is kept: `before_task` keeps a reference to the model handed to it, `train_data` (called
right after, before any step) runs it once over the task's training split and caches the old-class logits,
`[n_train, n_old_classes]` on the CPU, and `loss` gathers the rows of each batch by `Batch.index`. Memory
cost: n_train × n_old_classes floats per task, no stored examples of old tasks.

Hooks: `before_task`, `train_data` (teacher cache), `loss`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from clbench.data import Batch, BatchPlan, EncodedSplit, TaskInfo
from clbench.methods import Hooks, MethodConfig, option
from clbench.search import Choice, LogUniform


@dataclass(frozen=True)
class LwFConfig(MethodConfig):
    """Hyperparameters of LwF."""

    distill_weight: float = option(1.0, "λ_o in Eq. 2 of Li & Hoiem: weight of the distillation loss",
                                    search=LogUniform(0.1, 10.0))
    temperature: float = option(2.0, "T in Eq. 2 of Li & Hoiem: softmax temperature of teacher and student",
                                 search=Choice((1.0, 2.0, 4.0)))

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0, got {self.distill_weight}")


def distillation_loss(student: Tensor, teacher: Tensor, groups: Sequence[Tensor], temperature: float) -> Tensor:
    """Σ_groups KL(softmax(teacher_g / T) ‖ softmax(student_g / T)), each averaged over the batch.

    Args:
        student: `[batch, num_labels]` current logits (with gradient).
        teacher: `[batch, num_labels]` cached teacher logits; only the columns in `groups` are read.
        groups: column indices, one tensor per distribution (all old classes, or one old task each).
        temperature: T.
    """
    total = student.new_zeros(())
    for cols in groups:
        log_p = torch.log_softmax(student[:, cols].float() / temperature, dim=1)  # [batch, |cols|]
        q = torch.softmax(teacher[:, cols].float() / temperature, dim=1)  # [batch, |cols|]
        total = total + nn.functional.kl_div(log_p, q, reduction="batchmean")
    return total


class LwF(Hooks):
    """Learning without Forgetting: distils the previous model's old-class outputs on the new task's inputs."""

    name: ClassVar[str] = "lwf"
    config_cls: ClassVar[type[MethodConfig]] = LwFConfig
    citation: ClassVar[str] = "Li & Hoiem, Learning without Forgetting, ECCV 2016 / TPAMI 2017"
    config: LwFConfig

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self._teacher: nn.Module | None = None  # the model as handed to before_task, until train_data
        self._cache: Tensor | None = None  # [n_train, num_labels] teacher logits (old columns filled)
        self._groups: list[Tensor] = []  # old-class column groups distilled for the current task

    def before_task(self, task: TaskInfo, model: nn.Module) -> None:
        """Remember the model as it is before `task`: it is the teacher for this task."""
        old = self.context.tasks[:task.index]
        self._cache = None
        if not old:
            self._teacher, self._groups = None, []
            return
        self._teacher = model
        if self.context.head == "per-task":
            self._groups = [torch.tensor(list(info.label_range)) for info in old]
        else:
            self._groups = [torch.arange(old[-1].label_offset + old[-1].num_classes)]

    def train_data(self, task: TaskInfo, data: EncodedSplit, previous: Sequence[EncodedSplit]) -> EncodedSplit:
        """Cache the teacher's logits on every training example of `task` (rows in `data` order)."""
        if self._teacher is not None:
            self._cache = teacher_logits(self._teacher, data, self.context.device, self.context.batch_size * 4,
                                         self.context.num_labels)
            self._teacher = None  # drop the reference: training changes the model from here on
        return data

    def loss(self, model: nn.Module, batch: Batch, outputs: Any, task_loss: Tensor) -> Tensor:
        """task_loss + λ · L_old on the batch's cached teacher rows."""
        if self._cache is None or not self._groups or self.config.distill_weight == 0:
            return task_loss
        if batch.index is None:
            raise RuntimeError("lwf needs Batch.index to find the cached teacher logits of a batch")
        teacher = self._cache[batch.index].to(outputs.logits.device)  # [batch, num_labels]
        return task_loss + self.config.distill_weight * distillation_loss(
            outputs.logits, teacher, self._groups, self.config.temperature)

    def after_task(self, task: TaskInfo, model: nn.Module, data: EncodedSplit) -> None:
        self._cache = None


def teacher_logits(model: nn.Module, split: EncodedSplit, device: torch.device, batch_size: int,
                   num_labels: int) -> Tensor:
    """Raw logits `[n, num_labels]` of `model` on every example of `split`, on the CPU, in split order."""
    was_training = model.training
    model.eval()  # the teacher is the deterministic old model (no dropout)
    out = torch.empty(len(split), num_labels)
    with torch.inference_mode():
        for index in BatchPlan(split, batch_size, shuffle=False).indices():
            batch = split.batch(index).to(device)
            out[index] = model(**batch.model_inputs()).logits.float().cpu()
    model.train(was_training)
    return out

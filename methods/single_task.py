"""Single-task reference: every task trained alone, from the pretrained model, with the run's budget.

What the model can learn of each task with no continual learning in the way: the diagonal R[t, t] of its
accuracy matrix is the single-task accuracy that learning accuracy is measured against (the "learning
accuracy" of Riemer et al., "Learning to Learn without Forgetting by Maximizing Transfer and Minimizing
Interference", ICLR 2019, relative to isolated training, as in Díaz-Rodríguez et al. 2018's "don't forget,
there is more than forgetting"). Before each task after the first, the model (encoder and head) is reset to
the weights `setup` saw, so nothing carries over; the rest of its accuracy matrix (off-diagonal cells) says
nothing about forgetting, and the report treats the unit as a reference, not a method.

Hooks: `setup` keeps the starting weights, `before_task` restores them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from clbench.data import TaskInfo
from clbench.methods import Hooks, MethodConfig, RunContext


@dataclass(frozen=True)
class SingleTaskConfig(MethodConfig):
    """The single-task reference has no hyperparameters of its own."""


class SingleTask(Hooks):
    """Reference: each task fine-tuned alone from the pretrained model (no continual learning)."""

    name: ClassVar[str] = "single-task"
    config_cls: ClassVar[type[MethodConfig]] = SingleTaskConfig
    citation: ClassVar[str] = "isolated training per task (Díaz-Rodríguez et al. 2018; Riemer et al. 2019)"
    role: ClassVar[str] = "reference"
    first_task_is_finetuning = True  # task 1 is plain fine-tuning: the runner may share it

    def __init__(self, config: SingleTaskConfig | None = None) -> None:
        super().__init__(config)
        self.start: dict[str, Tensor] = {}

    def setup(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        self.start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return super().setup(model, ctx)

    def before_task(self, task: TaskInfo, model: nn.Module) -> None:
        if task.index > 0:
            model.load_state_dict(self.start)

"""L2 to the previous weights: a one-file regulariser plugin, the smallest complete clbench method.

After each task the trainable weights θ* are stored; later tasks add (λ/2)·‖θ − θ*‖² to the loss, i.e. EWC
with an identity Fisher (the "L2" baseline of Kirkpatrick et al., PNAS 2017, Fig. 2A).

Run it with `clbench run --plugin docs/examples/l2_previous.py --methods naive,l2-previous ...`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from clbench.data import Batch, EncodedSplit, TaskInfo
from clbench.methods import Hooks, MethodConfig, option
from clbench.ops import quadratic_penalty, snapshot


@dataclass(frozen=True)
class L2PreviousConfig(MethodConfig):
    penalty_weight: float = option(1.0, "λ: weight of (λ/2)·‖θ − θ*‖² towards the weights after the last task")


class L2Previous(Hooks):
    """Quadratic pull towards the weights reached after the previous task."""

    name = "l2-previous"
    config_cls = L2PreviousConfig
    citation = "Kirkpatrick et al. 2017 (PNAS), L2 baseline"
    first_task_is_finetuning = True  # no penalty before task 2: the runner may share task 1
    config: L2PreviousConfig

    def __init__(self, config: L2PreviousConfig | None = None) -> None:
        super().__init__(config)
        self.anchor: dict[str, Tensor] = {}

    def loss(self, model: nn.Module, batch: Batch, outputs: Any, task_loss: Tensor) -> Tensor:
        if not self.anchor:
            return task_loss
        ones = {name: torch.ones_like(value) for name, value in self.anchor.items()}
        penalty = quadratic_penalty(model.named_parameters(), self.anchor, ones)
        return task_loss + 0.5 * self.config.penalty_weight * penalty

    def after_task(self, task: TaskInfo, model: nn.Module, data: EncodedSplit) -> None:
        self.anchor = snapshot((n, p) for n, p in model.named_parameters() if p.requires_grad)

    def state_dict(self) -> dict[str, Any]:
        return {f"anchor.{name}": value for name, value in self.anchor.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.anchor = {key.removeprefix("anchor."): value for key, value in state.items()}

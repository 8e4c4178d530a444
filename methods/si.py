"""Synaptic Intelligence (Zenke, Poole & Ganguli, "Continual Learning Through Synaptic Intelligence", ICML 2017).

Each parameter's contribution to the drop in the task loss is accumulated online along the training
trajectory: ω_k += −g_k · Δθ_k at every step (the path integral of Eq. 3 approximated by the step's gradient
g and parameter change Δθ). When a task ends, ω is normalised by the total squared displacement over the
task and added to the importance, Ω_k += ω_k / ((Δ_k)² + ξ) (Eq. 5), and the anchor θ̃ moves to the task's
end point. Training on later tasks adds the surrogate loss c · Σ_k Ω_k (θ̃_k − θ_k)² (Eq. 4).

g is the gradient before clipping, of the task loss alone by default (Zenke et al.'s code uses the
unregularised gradient; the penalty's gradient 2cΩ(θ − θ̃) is subtracted analytically, so no extra
backward pass is needed); `task_gradient_only=false` uses the full gradient as Avalanche does.

Hooks: `before_task` snapshots the task's starting point and clears ω; `loss` adds the penalty;
`after_backward` captures g and θ before the step; `after_step` accumulates ω; `after_task` updates Ω and θ̃.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from clbench.data import Batch, EncodedSplit, TaskInfo
from clbench.methods import Hooks, MethodConfig, option
from clbench.ops import quadratic_penalty, snapshot
from clbench.search import LogUniform


@dataclass(frozen=True)
class SIConfig(MethodConfig):
    """Hyperparameters of SI; symbols follow Zenke et al. 2017."""

    strength: float = option(1.0, "c in Eq. 4: weight of the surrogate loss c·Σ Ω_k (θ̃_k − θ_k)²",
                             search=LogUniform(1e-2, 1e4))
    damping: float = option(1e-3, "ξ in Eq. 5: damping in Ω_k = Σ ω_k / ((Δ_k)² + ξ)")
    task_gradient_only: bool = option(True, "accumulate ω with the gradient of the task loss only (Zenke et al.'s "
                                      "code); false uses the gradient including the penalty (Avalanche)")

    def __post_init__(self) -> None:
        if self.strength < 0:
            raise ValueError(f"strength={self.strength} must be >= 0")
        if self.damping <= 0:
            raise ValueError(f"damping={self.damping} must be > 0 (it keeps Ω finite where a parameter did not "
                             "move)")


class SI(Hooks):
    """Quadratic penalty weighted by each parameter's path-integral contribution to earlier tasks' loss drop."""

    name: ClassVar[str] = "si"
    config_cls: ClassVar[type[MethodConfig]] = SIConfig
    citation: ClassVar[str] = "Zenke, Poole & Ganguli 2017 (ICML)"
    config: SIConfig

    def __init__(self, config: SIConfig | None = None) -> None:
        super().__init__(config)
        self.importance: dict[str, Tensor] = {}  # Ω, summed over finished tasks
        self.anchor: dict[str, Tensor] = {}  # θ̃: parameters at the end of the previous task
        self.start: dict[str, Tensor] = {}  # parameters at the start of the current task
        self.omega: dict[str, Tensor] = {}  # ω of the current task
        self._grad: dict[str, Tensor] = {}  # g of the current step
        self._before: dict[str, Tensor] = {}  # θ before the current step

    @staticmethod
    def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def before_task(self, task: TaskInfo, model: nn.Module) -> None:
        self.start = snapshot(self._trainable(model))
        self.omega = {n: torch.zeros_like(p) for n, p in self.start.items()}

    def loss(self, model: nn.Module, batch: Batch, outputs: Any, task_loss: Tensor) -> Tensor:
        if not self.importance or self.config.strength == 0:
            return task_loss
        return task_loss + self.config.strength * quadratic_penalty(model.named_parameters(), self.anchor,
                                                                    self.importance)

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        penalised = self.config.task_gradient_only and bool(self.importance) and self.config.strength != 0
        self._grad, self._before = {}, {}
        for n, p in self._trainable(model):
            if p.grad is None or n not in self.omega:
                continue
            g = p.grad.detach().clone()
            if penalised and n in self.importance:
                g -= 2 * self.config.strength * self.importance[n] * (p.detach() - self.anchor[n])
            self._grad[n] = g
            self._before[n] = p.detach().clone()

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for n, g in self._grad.items():
            self.omega[n] -= g * (params[n].detach() - self._before[n])  # ω += −g·Δθ
        self._grad, self._before = {}, {}

    @torch.no_grad()
    def after_task(self, task: TaskInfo, model: nn.Module, data: EncodedSplit) -> None:
        end = snapshot(self._trainable(model))
        for n, omega in self.omega.items():
            delta = end[n] - self.start[n]
            contribution = omega / (delta.pow(2) + self.config.damping)  # Eq. 5
            self.importance[n] = self.importance[n] + contribution if n in self.importance else contribution
        self.anchor = end

    def state_dict(self) -> dict[str, Any]:
        return {**{f"importance.{n}": v for n, v in self.importance.items()},
                **{f"anchor.{n}": v for n, v in self.anchor.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.importance = {k[len("importance."):]: v for k, v in state.items() if k.startswith("importance.")}
        self.anchor = {k[len("anchor."):]: v for k, v in state.items() if k.startswith("anchor.")}

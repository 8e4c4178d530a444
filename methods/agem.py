"""Averaged Gradient Episodic Memory (Chaudhry, Ranzato, Rohrbach & Elhoseiny, "Efficient Lifelong Learning
with A-GEM", ICLR 2019).

A-GEM relaxes GEM's one constraint per earlier task to a single constraint on the average memory loss: at
each step it draws a sample from the episodic memory (the run's shared `buffer_size`, split evenly over the
tasks seen, see `clbench.episodic`), computes its gradient g_ref, and if the current gradient g points
against it (gᵀg_ref < 0) replaces g by its projection onto the half-space, in closed form (Eq. 11):
g̃ = g − (gᵀg_ref / g_refᵀg_ref) g_ref. No QP is solved.

The reference gradient comes from `sample_size` memory examples, 256 by default as in the authors' code (the
whole memory while it holds fewer), not from a batch the size of the training batch.

Optimiser: the projection guarantees ⟨g̃, g_ref⟩ ≥ 0, so a plain SGD step −η·g̃ does not increase the memory
sample's loss to first order; Adam's per-coordinate scaling of the step breaks that. The authors train with
plain SGD, and so does `optimizer=sgd` (the default): `configure_optimizer` returns
`torch.optim.SGD(params, lr=sgd_lr)`, still scheduled (warm-up, decay) and clipped by the runner. The run's
`--lr` is AdamW's and does not apply; SGD needs a far larger step, hence `sgd_lr`'s default of 0.03 (the
authors used 0.01-0.1 for their networks). `optimizer=adamw` trains with the runner's AdamW at the run's lr, a
named deviation (`optimizer_name` says which for the report).

Hooks: `after_backward` projects the gradient (one extra forward and backward pass on the memory sample,
through `torch.autograd.grad`, so the current `.grad` is only overwritten by the projected vector);
`configure_optimizer` (SGD); `after_task` stores the memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from clbench.data import EncodedSplit, TaskInfo
from clbench.episodic import TaskMemory, memory_gradient
from clbench.methods import Hooks, MethodConfig, RunContext, option
from clbench.ops import assign_flat_grad, flat_grad
from clbench.search import Choice, LogUniform

OPTIMIZERS = ("sgd", "adamw")


def agem_project(grad: Tensor, ref: Tensor) -> Tensor:
    """g − (gᵀg_ref / g_refᵀg_ref) g_ref where gᵀg_ref < 0, else g unchanged (Eq. 11). # [params]"""
    dot = torch.dot(grad, ref)
    if dot >= 0:
        return grad
    return grad - (dot / torch.dot(ref, ref)) * ref


@dataclass(frozen=True)
class AGEMConfig(MethodConfig):
    """Hyperparameters of A-GEM; symbols follow Chaudhry et al. 2019."""

    sample_size: int = option(256, "examples drawn uniformly from the episodic memory each step to compute the "
                              "reference gradient g_ref in Eq. 11 (the authors' code uses 256; all of the memory "
                              "while it holds fewer; 0: the run's batch size)", search=Choice((16, 64, 256)))
    optimizer: str = option("sgd", "update rule: sgd (plain SGD at sgd_lr, as the authors trained: a step along g̃ "
                            "does not increase the memory sample's loss to first order) or adamw (the runner's "
                            "AdamW at the run's lr; its per-coordinate scaling breaks that guarantee)")
    sgd_lr: float = option(0.03, "η: SGD learning rate when optimizer=sgd (the run's lr is AdamW's); the "
                           "runner's warm-up/decay schedule and clipping still apply; the authors used 0.01-0.1",
                           search=LogUniform(1e-3, 0.3))

    def __post_init__(self) -> None:
        if self.sample_size < 0:
            raise ValueError(f"sample_size={self.sample_size} must be >= 0 (0: the run's batch size)")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} must be one of {', '.join(OPTIMIZERS)}")
        if not self.sgd_lr > 0:
            raise ValueError(f"sgd_lr={self.sgd_lr} must be > 0")


class AGEM(Hooks):
    """Projects each step's gradient when it conflicts with the gradient on a memory sample (closed form)."""

    name: ClassVar[str] = "agem"
    config_cls: ClassVar[type[MethodConfig]] = AGEMConfig
    citation: ClassVar[str] = "Chaudhry et al. 2019 (ICLR)"
    uses_buffer: ClassVar[bool] = True
    requires_buffer: ClassVar[bool] = True
    config: AGEMConfig

    def __init__(self, config: AGEMConfig | None = None) -> None:
        super().__init__(config)
        self.memory = TaskMemory(0)
        self.projections = 0  # steps whose gradient was projected (for inspection)

    def setup(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        self.memory = TaskMemory(ctx.buffer_size)
        return super().setup(model, ctx)

    def reference_grad(self, model: nn.Module, params: list[nn.Parameter]) -> Tensor:
        """g_ref: the gradient of the mean loss on a uniform sample of the memory. # [params]"""
        n = self.config.sample_size or self.context.batch_size
        sample = self.memory.sample(n, self.context.generator)
        return memory_gradient(model, self.context, sample, params, self.context.batch_size)

    def after_backward(self, model: nn.Module) -> None:
        if not self.memory.splits:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        ref = self.reference_grad(model, params)  # [params]
        with torch.no_grad():
            g = flat_grad(params)  # [params]
            if bool(torch.dot(g, ref) < 0):
                assign_flat_grad(params, agem_project(g, ref))
                self.projections += 1

    def configure_optimizer(self, task: TaskInfo, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer | None:
        """Plain SGD at `sgd_lr` (the authors' update rule), or None for the runner's AdamW."""
        return torch.optim.SGD(params, lr=self.config.sgd_lr) if self.config.optimizer == "sgd" else None

    def optimizer_name(self) -> str:
        return f"SGD (lr {self.config.sgd_lr:g})" if self.config.optimizer == "sgd" else super().optimizer_name()

    def after_task(self, task: TaskInfo, model: nn.Module, data: EncodedSplit) -> None:
        self.memory.add(task.index, data, self.context.generator)

    def state_dict(self) -> dict[str, Any]:
        return self.memory.state_dict(prefix="memory.")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory.load_state_dict(state, prefix="memory.")

"""Gradient Episodic Memory (Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning",
NeurIPS 2017).

GEM keeps an episodic memory of every earlier task (here: the run's shared `buffer_size`, split evenly over
the tasks seen so far, see `clbench.episodic`). At each step it computes the gradient g_k of the loss on
each earlier task's memory. If the current gradient g would increase any of those losses (⟨g, g_k⟩ < 0),
g is replaced by the closest vector g̃ that does not: min ½‖g̃ − g‖² s.t. G g̃ ≥ 0, with G the matrix of
memory gradients (Eq. 10). GEM solves the dual, min_v ½ vᵀ G Gᵀ v + gᵀ Gᵀ v s.t. v ≥ 0 (Eq. 11-12), a QP
with one variable per earlier task, and sets g̃ = Gᵀ v + g. As in the authors' code (and Avalanche), the
margin γ enters as the lower bound v ≥ γ ("adding γ to v*", §3), biasing the update towards backward
transfer, and a ridge ε is added to G Gᵀ so quadprog sees a positive-definite matrix.

Optimiser: GEM's guarantee is about the step: with plain SGD the update −η·g̃ satisfies ⟨−η g̃, g_k⟩ ≤ 0, so
to first order no memory loss increases. Adam divides every coordinate by its own running scale, so the step
it takes from g̃ may point against a memory gradient again. The paper trains with plain SGD (learning rate
0.1 for its networks), and so does `optimizer=sgd` (the default): `configure_optimizer` returns
`torch.optim.SGD(params, lr=sgd_lr)`, which the runner still schedules (warm-up, decay) and clips. The run's
`--lr` is AdamW's and does not apply; SGD needs a far larger step than AdamW, hence `sgd_lr`'s default of
0.03, within the 0.01-0.1 the GEM and A-GEM papers used for their networks. `optimizer=adamw` trains with the
runner's AdamW at the run's lr, a named deviation from the paper (`optimizer_name` says which for the report).

Hooks: `setup` checks that quadprog is installed; `after_backward` projects the gradient (it runs one extra
forward and backward pass per earlier task on the model it receives, through `torch.autograd.grad`, so the
current `.grad` is read, then overwritten only with the projected vector); `configure_optimizer` (SGD);
`after_task` stores the memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from clbench.data import EncodedSplit, TaskInfo
from clbench.episodic import TaskMemory, memory_gradient
from clbench.errors import ClbenchError
from clbench.methods import Hooks, MethodConfig, RunContext, option
from clbench.ops import assign_flat_grad, flat_grad
from clbench.search import LogUniform, Uniform

OPTIMIZERS = ("sgd", "adamw")


def solve_dual_qp(memory_grads: Tensor, grad: Tensor, margin: float, ridge: float) -> Tensor:
    """GEM's projected gradient g̃ = Gᵀ v* + g, with v* = argmin_{v ≥ γ} ½ vᵀ(G Gᵀ + εI)v + (G g)ᵀ v.

    Args:
        memory_grads: G, one memory gradient per earlier task. # [tasks, params]
        grad: the current gradient g. # [params]
        margin: γ, the lower bound on the dual variables.
        ridge: ε added to the diagonal of G Gᵀ.

    Returns:
        The projected gradient in float64 on `grad`'s device. # [params]
    """
    try:
        import quadprog
    except ImportError:
        raise ClbenchError("gem needs the quadprog QP solver; install it with `pip install quadprog` or "
                           "`pip install 'clbench[avalanche]'`") from None
    G = memory_grads.double()
    g = grad.double()
    gram = (G @ G.T).cpu().numpy()  # [tasks, tasks]
    P = 0.5 * (gram + gram.T) + ridge * np.eye(len(gram))
    Gg = (G @ g).cpu().numpy()  # [tasks]
    # quadprog: min ½ xᵀPx − aᵀx s.t. Cᵀx ≥ b; here a = −G g, C = I, b = γ
    v = quadprog.solve_qp(P, -Gg, np.eye(len(gram)), np.full(len(gram), margin))[0]
    return G.T @ torch.from_numpy(v).to(G.device) + g


@dataclass(frozen=True)
class GEMConfig(MethodConfig):
    """Hyperparameters of GEM; symbols follow Lopez-Paz & Ranzato 2017 and the authors' code."""

    margin: float = option(0.5, "γ in §3: lower bound on the dual variables v (memory_strength in the "
                           "authors' code); larger values favour backward transfer", search=Uniform(0.0, 1.0))
    ridge: float = option(1e-3, "ε added to the diagonal of G Gᵀ in the dual QP (the authors' code uses 1e-3)")
    memory_batch_size: int = option(0, "examples per forward pass when computing memory gradients "
                                    "(0: the run's batch size)")
    optimizer: str = option("sgd", "update rule: sgd (plain SGD at sgd_lr, as in the paper: a step along g̃ "
                            "increases no memory loss to first order) or adamw (the runner's AdamW at the run's "
                            "lr; its per-coordinate scaling breaks that guarantee)")
    sgd_lr: float = option(0.03, "η: SGD learning rate when optimizer=sgd (the run's lr is AdamW's); the "
                           "runner's warm-up/decay schedule and clipping still apply; the paper used 0.1",
                           search=LogUniform(1e-3, 0.3))

    def __post_init__(self) -> None:
        if self.margin < 0:
            raise ValueError(f"margin={self.margin} must be >= 0")
        if self.ridge <= 0:
            raise ValueError(f"ridge={self.ridge} must be > 0 (quadprog needs a positive-definite matrix)")
        if self.memory_batch_size < 0:
            raise ValueError(f"memory_batch_size={self.memory_batch_size} must be >= 0 (0: the run's batch size)")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} must be one of {', '.join(OPTIMIZERS)}")
        if not self.sgd_lr > 0:
            raise ValueError(f"sgd_lr={self.sgd_lr} must be > 0")


class GEM(Hooks):
    """Projects each step's gradient so that no earlier task's memory loss increases (a QP per step)."""

    name: ClassVar[str] = "gem"
    config_cls: ClassVar[type[MethodConfig]] = GEMConfig
    citation: ClassVar[str] = "Lopez-Paz & Ranzato 2017 (NeurIPS)"
    uses_buffer: ClassVar[bool] = True
    requires_buffer: ClassVar[bool] = True
    requires_packages: ClassVar[tuple[tuple[str, str], ...]] = (
        ("quadprog", "pip install quadprog (or pip install 'clbench[avalanche]')"),)
    first_task_is_finetuning: bool = True  # empty memory on task 1: shared with units of the same optimiser
    config: GEMConfig

    def __init__(self, config: GEMConfig | None = None) -> None:
        super().__init__(config)
        self.memory = TaskMemory(0)
        self.projections = 0  # steps whose gradient was projected (for inspection)

    def setup(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        self.memory = TaskMemory(ctx.buffer_size)
        return super().setup(model, ctx)

    def memory_grads(self, model: nn.Module, params: list[nn.Parameter]) -> Tensor:
        """G: the gradient of each earlier task's memory loss, one row per task. # [tasks, params]"""
        batch_size = self.config.memory_batch_size or self.context.batch_size
        return torch.stack([memory_gradient(model, self.context, self.memory.splits[t], params, batch_size)
                            for t in self.memory.task_indices])

    def after_backward(self, model: nn.Module) -> None:
        if not self.memory.splits:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        G = self.memory_grads(model, params)  # [tasks, params]
        with torch.no_grad():
            g = flat_grad(params)  # [params]
            if bool((G @ g < 0).any()):
                assign_flat_grad(params, solve_dual_qp(G, g, self.config.margin, self.config.ridge))
                self.projections += 1

    def configure_optimizer(self, task: TaskInfo, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer | None:
        """Plain SGD at `sgd_lr` (the paper's update rule), or None for the runner's AdamW."""
        return torch.optim.SGD(params, lr=self.config.sgd_lr) if self.config.optimizer == "sgd" else None

    def optimizer_name(self) -> str:
        return f"SGD (lr {self.config.sgd_lr:g})" if self.config.optimizer == "sgd" else super().optimizer_name()

    def after_task(self, task: TaskInfo, model: nn.Module, data: EncodedSplit) -> None:
        self.memory.add(task.index, data, self.context.generator)

    def state_dict(self) -> dict[str, Any]:
        return self.memory.state_dict(prefix="memory.")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory.load_state_dict(state, prefix="memory.")

"""FIP (geometric): the paper's own update, a metric-aware step of fixed length, solved matrix-free.

Raghavan & Thomson, "Engineering flexible machine learning systems by traversing functionally invariant
paths", Nature Machine Intelligence 6, 2024 (Eq. 2: argmin_dθ ⟨dθ, g dθ⟩ + β⟨dθ, ∇L⟩ with ⟨dθ, dθ⟩ = ε²).

g is the output metric pulled back to the weights on old-task inputs: for a replay batch of B inputs with
logits z_i and softmax p_i, g = (1/B) Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i with J_i = ∂z_i/∂θ (the Gauss–Newton /
Fisher matrix of the softmax; the Bhattacharyya distance of `fip` is (1/8) of it to second order). The
constrained minimum is dθ ∝ −(g + μI)⁻¹ ∇L, μ being the multiplier of the length constraint; β only
scales the solution and disappears when it is rescaled to length ε, so it is not an option here.

How each step after the first task works (`after_backward`, gradients of the new task's CE ready):
1. b = −∇L from the runner's backward; a replay batch of old inputs is drawn from the buffer (`ctx.generator`).
2. g is never materialised: g·v costs one Jacobian-vector product (`torch.func.jvp` through `functional_call`,
   attention on the math SDPA kernel, which has forward-mode derivatives) and one vector-Jacobian product (a
   backward through a logits graph built once per step), ≈ 3–5 forward passes on the replay batch.
3. μ = `damping` × (bᵀgb / bᵀb), the Rayleigh quotient of g along the gradient, so `damping` is scale-free;
   `cg_iterations` conjugate-gradient iterations on (g + μI)δ = b from δ = 0 (the first iterate is the
   gradient direction; more iterations bend it away from directions that change old outputs).
4. δ is rescaled to unit length and written into the gradients as −δ/‖δ‖; `configure_optimizer` returns plain
   SGD with learning rate ε = `step_length`, so the runner's step moves the weights by ε along δ (times the
   runner's warm-up/decay schedule).

Approximation and cost: truncated CG (a few iterations, not the exact solve), the metric from one replay batch
per step, evaluated in eval mode at the current weights. Cost per step ≈ 1 + cg_iterations × (jvp + vjp) on
the replay batch, i.e. roughly (2 + 4·cg_iterations) forward-equivalents on top of the new batch's forward and
backward, and memory for ~5 flat copies of the trainable parameters. The first task is plain fine-tuning with
the runner's AdamW. Hooks: `before_task`, `configure_optimizer`, `after_backward`, `after_task` (buffer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from clbench.data import Batch, EncodedSplit, TaskInfo
from clbench.episodic import TaskMemory
from clbench.methods import Hooks, MethodConfig, RunContext, option
from clbench.methods.fip import sample_replay
from clbench.ops import assign_flat_grad, flat_grad
from clbench.search import LogUniform


@dataclass(frozen=True)
class FIPGeometricConfig(MethodConfig):
    """Step length, damping and solver settings of the geometric FIP step."""

    step_length: float = option(0.05, "ε: Euclidean length of each weight step (the SGD learning rate; the "
                                "runner's warm-up/decay schedule scales it)", search=LogUniform(1e-3, 0.3))
    damping: float = option(0.1, "μ relative to g's Rayleigh quotient along ∇L: large = gradient descent, "
                            "small = stay on the functionally invariant subspace", search=LogUniform(1e-3, 10.0))
    cg_iterations: int = option(4, "conjugate-gradient iterations on (g + μI)δ = −∇L")
    replay_batch_size: int | None = option(None, "old-task inputs per step for the metric g "
                                           "(default: the training batch size)")

    def __post_init__(self) -> None:
        if self.step_length <= 0 or self.damping < 0 or self.cg_iterations < 1:
            raise ValueError("need step_length > 0, damping >= 0 and cg_iterations >= 1")
        if self.replay_batch_size is not None and self.replay_batch_size < 1:
            raise ValueError("replay_batch_size must be >= 1")


class OutputMetric:
    """v ↦ g·v with g = (1/B) Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i on one batch, for the named parameters.

    Build it with the model in eval mode (dropout would make J differ between products); it keeps the
    logits graph for the vector-Jacobian products until it is dropped.
    """

    def __init__(self, model: nn.Module, ctx: RunContext, batch: Batch,
                 named: Sequence[tuple[str, nn.Parameter]]) -> None:
        self.model, self.ctx, self.batch = model, ctx, batch
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.logits = ctx.forward(model, batch).float()  # [B, C], graph kept for Jᵀu
        self.p = torch.softmax(self.logits.detach(), dim=-1)  # [B, C]

    def _function(self, values: dict[str, Tensor]) -> Tensor:
        outputs = torch.func.functional_call(self.model, values, (), self.batch.model_inputs())
        return self.ctx.logits(outputs.logits, self.batch.task_ids).float()

    def jvp(self, vector: Tensor) -> Tensor:
        """J v for a flat parameter vector [P]; returns [B, C]."""
        primals = {n: p.detach() for n, p in zip(self.names, self.params)}
        tangents = {n: t.view_as(p) for n, p, t in zip(self.names, self.params, self._split(vector))}
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):  # fused attention kernels lack forward-mode AD
            _, out = torch.func.jvp(self._function, (primals,), (tangents,))
        return out

    def __call__(self, vector: Tensor) -> Tensor:
        jv = self.jvp(vector)  # [B, C]
        hjv = self.p * (jv - (self.p * jv).sum(-1, keepdim=True)) / len(self.p)  # (diag p − ppᵀ) Jv / B
        grads = torch.autograd.grad(self.logits, self.params, hjv, retain_graph=True, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                          for g, p in zip(grads, self.params)])

    def _split(self, vector: Tensor) -> list[Tensor]:
        return list(torch.split(vector, [p.numel() for p in self.params]))


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, iterations: int,
                       first_product: Tensor | None = None) -> Tensor:
    """Approximately solve A x = b for symmetric positive-definite A, from x = 0.

    Args:
        matvec: v ↦ A v.
        b: Right-hand side [P].
        iterations: CG iterations (each costs one `matvec`, the first none if `first_product` = A b is given).
        first_product: A b, when the caller already has it.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r.dot(r)
    for i in range(iterations):
        ap = first_product if i == 0 and first_product is not None else matvec(p)
        curvature = p.dot(ap)
        if curvature <= 0 or rr == 0:
            break
        alpha = rr / curvature
        x += alpha * p
        r -= alpha * ap
        rr_new = r.dot(r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


class FIPGeometric(Hooks):
    """Steps of length ε along −(g + μI)⁻¹∇L, g the output metric on replayed old-task inputs."""

    name: ClassVar[str] = "fip-geometric"
    config_cls: ClassVar[type[MethodConfig]] = FIPGeometricConfig
    citation: ClassVar[str] = ("Raghavan & Thomson, Engineering flexible machine learning systems by traversing "
                               "functionally invariant paths, Nature Machine Intelligence 2024 (Eq. 2)")
    uses_buffer: ClassVar[bool] = True

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.cfg: FIPGeometricConfig = self.config  # type: ignore[assignment]
        self.buffer = TaskMemory(0)
        self.replay: EncodedSplit | None = None

    def setup(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        self.ctx = ctx
        self.buffer = TaskMemory(ctx.buffer_size)
        return model

    def before_task(self, task: TaskInfo, model: nn.Module) -> None:
        self.replay = self.buffer.all() if len(self.buffer) else None

    def configure_optimizer(self, task: TaskInfo, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer | None:
        if self.replay is None:
            return None  # first task: the runner's AdamW, plain fine-tuning
        return torch.optim.SGD(params, lr=self.cfg.step_length)

    def optimizer_name(self) -> str:
        return f"AdamW (the runner's) on the first task, then SGD (lr {self.cfg.step_length:g}) along unit steps"

    def direction(self, model: nn.Module, named: Sequence[tuple[str, nn.Parameter]], gradient: Tensor) -> Tensor:
        """Unit vector ∝ −(g + μI)⁻¹ ∇L [P], with g measured on a replay batch."""
        assert self.replay is not None
        ctx = self.context
        index = sample_replay(self.replay, self.cfg.replay_batch_size or ctx.batch_size, ctx.generator)
        was_training = model.training
        model.eval()
        try:
            metric = OutputMetric(model, ctx, self.replay.batch(index).to(ctx.device), named)
            b = -gradient
            gb = metric(b)
            mu = self.cfg.damping * b.dot(gb) / b.dot(b).clamp_min(1e-30)
            delta = conjugate_gradient(lambda v: metric(v) + mu * v, b, self.cfg.cg_iterations, gb + mu * b)
        finally:
            model.train(was_training)
        return delta / delta.norm().clamp_min(1e-30)

    def after_backward(self, model: nn.Module) -> None:
        if self.replay is None:
            return
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        gradient = flat_grad(params).float()
        if not torch.isfinite(gradient).all() or gradient.norm() == 0:
            return
        assign_flat_grad(params, -self.direction(model, named, gradient))  # SGD: θ ← θ + ε·δ/‖δ‖

    def after_task(self, task: TaskInfo, model: nn.Module, data: EncodedSplit) -> None:
        self.buffer.add(task.index, data, self.context.generator)
        self.replay = None

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])

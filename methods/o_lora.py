"""O-LoRA: one LoRA adapter per task, each new one kept orthogonal to the old ones' input subspaces.

Wang et al., "Orthogonal Subspace Learning for Language Model Continual Learning", Findings of EMNLP 2023
(arXiv:2310.14152). Not peft's `init_lora_weights="olora"` (orthonormal initialisation, another paper).

Every targeted linear layer W [d_out, d_in] computes W·x + (α/r)·Σ_i B_i·A_i·x over one adapter per task,
with A_i [r, d_in] and B_i [d_out, r]. While task t trains, only A_t, B_t (and a classification head) train; W
and the adapters of tasks i < t are frozen but stay in the forward pass. The rows of A_i span the input
subspace task i writes through, so the loss keeps the new one away from the old ones:

    task loss + λ1 · Σ_layers Σ_{i<t} ‖A_i A_tᵀ‖²_F + λ2 · Σ_layers (‖A_t‖²_F + ‖B_t‖²_F)

The first term is the paper's L_orth: its O_{i,t} = A_iᵀA_t, with A of shape d × r there, is the r × r matrix
A_i A_tᵀ for A stored as [r, d_in] here. The second is the L2 term the authors' code adds on the new adapter
(λ2 = 0 in their scripts). That code sums |A_i A_tᵀ| and unsquared norms; this file uses the paper's squares.

The adapters of every task are created in `setup` (A ~ U(±1/√d_in) from `ctx.generator`, as `lora`; B = 0, so
an adapter changes nothing until it trains). The checkpoint's model state therefore has the same shapes at
every task, and resuming needs no method state. The wrapper exposes peft's layer interface (`base_layer`,
`lora_A`, `active_adapters`, `get_delta_weight`), so `clbench.ops.effective_weights` measures drift on
W + (α/r)·Σ_i B_i A_i under the unwrapped model's names. Hooks: `setup` (wrap), `before_task` (which
parameters train), `loss` (λ1 and λ2 terms), `configure_optimizer` (AdamW at `adapter_lr`, when set).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from clbench.data import Batch, TaskInfo
from clbench.errors import ConfigError
from clbench.methods import Hooks, MethodConfig, RunContext, option
from clbench.search import Choice, LogUniform

# Targets tried in order when `target_modules` is empty: W_q, W_v of BERT-style encoders and of Llama-style
# decoders (the paper adapts the attention's query and value projections, as Hu et al.).
DEFAULT_TARGETS = (("query", "value"), ("q_proj", "v_proj"))
HEADS = ("classifier", "score")  # sequence-classification heads (peft's modules_to_save for SEQ_CLS); they train


@dataclass(frozen=True)
class OLoRAConfig(MethodConfig):
    """O-LoRA hyperparameters; λ1, λ2 as in Wang et al. 2023 and the defaults of the authors' scripts."""

    rank: int = option(8, "r: rank of each task's adapter B_t [d_out, r], A_t [r, d_in] (authors: 8)",
                       search=Choice((4, 8, 16)))
    alpha: float = option(16.0, "α: the adapters add (α/r)·Σ_i B_i A_i (as lora; the authors used α = 32)")
    dropout: float = option(0.1, "dropout on the adapters' input (authors and lora: 0.1)")
    orth_weight: float = option(0.5, "λ1: weight of Σ_layers Σ_{i<t} ‖A_i A_tᵀ‖²_F, the overlap of the new "
                                "adapter's input subspace with earlier tasks' (authors' scripts: 0.5)",
                                search=LogUniform(0.01, 10.0))
    l2_weight: float = option(0.0, "λ2: weight of ‖A_t‖² + ‖B_t‖² summed over layers (authors' scripts: 0)")
    target_modules: tuple[str, ...] = option((), "names of the linear layers that get adapters; empty: "
                                             "query,value (BERT-style) or q_proj,v_proj (Llama-style), "
                                             "whichever the model has")
    adapter_lr: float | None = option(None, "learning rate of the adapters and head (default: the run's; the "
                                      "authors trained T5 at 1e-3)", search=LogUniform(1e-5, 1e-2))

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError("need rank >= 1, alpha > 0 and 0 <= dropout < 1")
        if not (self.orth_weight >= 0 and self.l2_weight >= 0):
            raise ValueError(f"orth_weight={self.orth_weight} and l2_weight={self.l2_weight} must be >= 0")
        if self.adapter_lr is not None and not self.adapter_lr > 0:
            raise ValueError(f"adapter_lr={self.adapter_lr} must be > 0 (or left unset for the run's lr)")


class TaskAdapters(nn.Module):
    """A frozen linear layer plus one LoRA pair per task, all of them in the forward pass."""

    def __init__(self, base: nn.Linear, tasks: int, rank: int, alpha: float, dropout: float,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.base_layer = base
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout)
        d_out, d_in = base.weight.shape
        # fp32 adapters beside a half-precision base, as peft keeps them: AdamW on bf16 factors loses updates
        dtype = torch.float32 if base.weight.dtype in (torch.float16, torch.bfloat16) else base.weight.dtype
        bound = 1.0 / math.sqrt(d_in)
        a = [(torch.rand(rank, d_in, generator=generator) * 2 - 1) * bound for _ in range(tasks)]
        self.lora_A = nn.ParameterDict({str(i): nn.Parameter(a[i].to(base.weight.device, dtype))
                                        for i in range(tasks)})  # A_i [r, d_in]
        self.lora_B = nn.ParameterDict({str(i): nn.Parameter(torch.zeros(d_out, rank, device=base.weight.device,
                                                                         dtype=dtype))
                                        for i in range(tasks)})  # B_i [d_out, r]

    @property
    def active_adapters(self) -> list[str]:
        return list(self.lora_A.keys())

    def get_delta_weight(self, adapter: str) -> Tensor:
        """(α/r)·B_i·A_i [d_out, d_in] of one task's adapter."""
        return self.scaling * self.lora_B[adapter] @ self.lora_A[adapter]

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        # Σ_i B_i A_i x as one product through the stacked factors; adapters not trained yet have B_i = 0.
        a = torch.cat(tuple(self.lora_A.values()))  # [tasks·r, d_in]
        b = torch.cat(tuple(self.lora_B.values()), dim=1)  # [d_out, tasks·r]
        update = self.dropout(x).to(a.dtype) @ a.T @ b.T  # [..., d_out]
        return out + (self.scaling * update).to(out.dtype)


def subspace_overlap(old: Sequence[Tensor], new: Tensor) -> Tensor:
    """Σ_i ‖A_i A_newᵀ‖²_F: zero exactly when the rows of `new` are orthogonal to the rows of every A_i.

    Args:
        old: earlier tasks' A_i, each [r_i, d_in].
        new: the current task's A [r, d_in].
    """
    total = new.new_zeros(())
    for a in old:
        total = total + (a @ new.T).pow(2).sum()  # [r_i, r]
    return total


def adapter_layers(model: nn.Module) -> list[TaskAdapters]:
    return [m for m in model.modules() if isinstance(m, TaskAdapters)]


def install(model: nn.Module, targets: Sequence[str], tasks: int, config: OLoRAConfig,
            generator: torch.Generator) -> None:
    """Replace every `nn.Linear` whose last name component is in `targets` by a `TaskAdapters` around it."""
    linear = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen = [(name, m) for name, m in linear if name.rsplit(".", 1)[-1] in targets]
    missing = sorted(set(targets) - {name.rsplit(".", 1)[-1] for name, _ in chosen})
    if not chosen or missing:
        wanted = ", ".join(missing) if missing else " or ".join(",".join(t) for t in DEFAULT_TARGETS)
        names = sorted({name.rsplit(".", 1)[-1] for name, _ in linear})
        raise ConfigError(f"o-lora: no nn.Linear layer of {type(model).__name__} is named {wanted}; set "
                          f"--set o-lora.target_modules=... to some of: {', '.join(names[:20])}")
    for name, layer in chosen:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, TaskAdapters(layer, tasks, config.rank, config.alpha,
                                                                 config.dropout, generator))


def default_targets(model: nn.Module) -> tuple[str, ...]:
    """The first of `DEFAULT_TARGETS` whose names all occur among the model's linear layers; () if none does."""
    present = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    return next((t for t in DEFAULT_TARGETS if set(t) <= present), ())


class OLoRA(Hooks):
    """One LoRA adapter per task on frozen weights; the new adapter's A is pushed orthogonal to the old ones'."""

    name: ClassVar[str] = "o-lora"
    config_cls: ClassVar[type[MethodConfig]] = OLoRAConfig
    citation: ClassVar[str] = ("Wang et al., Orthogonal Subspace Learning for Language Model Continual "
                               "Learning, Findings of EMNLP 2023")
    task_kinds: ClassVar[tuple[str, ...]] = ("classification", "preference", "generation")

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.cfg: OLoRAConfig = self.config  # type: ignore[assignment]
        self.layers: list[TaskAdapters] = []
        self.task = 0  # index of the task being trained; its adapter is the only one that trains

    def setup(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        self.ctx = ctx
        install(model, self.cfg.target_modules or default_targets(model), len(ctx.tasks), self.cfg,
                ctx.generator)
        self.layers = adapter_layers(model)
        return model

    def before_task(self, task: TaskInfo, model: nn.Module) -> None:
        self.task = task.index
        for name, param in model.named_parameters():
            param.requires_grad_(name.split(".", 1)[0] in HEADS)  # W and every adapter frozen, the head not
        for layer in self.layers:
            layer.lora_A[str(task.index)].requires_grad_(True)
            layer.lora_B[str(task.index)].requires_grad_(True)

    def loss(self, model: nn.Module, batch: Batch, outputs: Any, task_loss: Tensor) -> Tensor:
        key = str(self.task)
        if self.cfg.orth_weight and self.task > 0:
            overlap = sum((subspace_overlap([layer.lora_A[str(i)] for i in range(self.task)], layer.lora_A[key])
                           for layer in self.layers), task_loss.new_zeros(()))
            task_loss = task_loss + self.cfg.orth_weight * overlap
        if self.cfg.l2_weight:
            squares = sum((layer.lora_A[key].pow(2).sum() + layer.lora_B[key].pow(2).sum()
                           for layer in self.layers), task_loss.new_zeros(()))
            task_loss = task_loss + self.cfg.l2_weight * squares
        return task_loss

    def configure_optimizer(self, task: TaskInfo, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer | None:
        """The runner's AdamW at `adapter_lr` when it is set; None (the run's lr) otherwise."""
        return None if self.cfg.adapter_lr is None else self.context.adamw(params, self.cfg.adapter_lr)

    def optimizer_name(self) -> str:
        if self.cfg.adapter_lr is None:
            return super().optimizer_name()
        return f"AdamW (the runner's; adapters at lr {self.cfg.adapter_lr:g})"

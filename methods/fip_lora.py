"""FIP-LoRA: the FIP loss (summed Bhattacharyya distance on replayed inputs + λ·CE) training only LoRA adapters.

Combines Raghavan & Thomson, "Engineering flexible machine learning systems by traversing functionally
invariant paths" (Nature Machine Intelligence 2024) with Hu et al., "LoRA" (ICLR 2022).

The FIP blog post asked whether FIP's retention survives a much smaller trainable footprint: the path is searched only
in the span of the low-rank adapters (and the head, unless frozen), so optimiser state and weight gradients
shrink to the adapters' size while the distance term still protects the old tasks' outputs. The method is a
composition, not a copy: it holds a `LoRA` and an `FIP` instance built from the matching fields of its config
and forwards each hook to them in order — LoRA decides which parameters train (and merges per-task adapters
after the task), FIP caches q at the task's start, adds the distance in `loss` and fills its buffer after the
task. With `first_task=full` (default) the first task is plain fine-tuning of the whole model.
Hooks: `setup`, `before_task`, `extra_inputs` (FIP's fused mode), `loss`, `configure_optimizer` (LoRA's
`adapter_lr`), `after_task`, `state_dict` / `load_state_dict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from clbench.data import Batch, EncodedSplit, TaskInfo
from clbench.methods import Hooks, MethodConfig, RunContext
from clbench.methods.fip import FIP, FIPConfig
from clbench.methods.lora import LoRA, LoRAConfig


@dataclass(frozen=True)
class FIPLoRAConfig(FIPConfig, LoRAConfig):
    """Every FIP option (λ, replay batch, memory-saving and fused modes) and every LoRA option (r, α, policies)."""

    def __post_init__(self) -> None:
        FIPConfig.__post_init__(self)
        LoRAConfig.__post_init__(self)

    def part(self, cls: type[MethodConfig]) -> Any:
        """The `cls` config holding this config's values for `cls`'s fields."""
        return cls(**{f.name: getattr(self, f.name) for f in fields(cls)})


class FIPLoRA(Hooks):
    """FIP's output-distance loss with only LoRA adapters (and optionally the head) trainable."""

    name: ClassVar[str] = "fip-lora"
    config_cls: ClassVar[type[MethodConfig]] = FIPLoRAConfig
    citation: ClassVar[str] = ("Raghavan & Thomson, Nature Machine Intelligence 2024 (FIP) with Hu et al., "
                               "ICLR 2022 (LoRA)")
    uses_buffer: ClassVar[bool] = True
    task_kinds: ClassVar[tuple[str, ...]] = ("classification", "preference", "generation")

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        cfg: FIPLoRAConfig = self.config  # type: ignore[assignment]
        self.lora = LoRA(cfg.part(LoRAConfig))
        self.fip = FIP(cfg.part(FIPConfig))
        self.first_task_is_finetuning = self.lora.first_task_is_finetuning
        self.backward_in_loss = self.fip.backward_in_loss

    def setup(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        self.ctx = ctx
        return self.fip.setup(self.lora.setup(model, ctx), ctx)

    def before_task(self, task: TaskInfo, model: nn.Module) -> None:
        self.lora.before_task(task, model)
        self.fip.before_task(task, model)

    def extra_inputs(self, batch: Batch) -> Batch | None:
        return self.fip.extra_inputs(batch)

    def loss(self, model: nn.Module, batch: Batch, outputs: Any, task_loss: Tensor) -> Tensor:
        return self.fip.loss(model, batch, outputs, task_loss)

    def configure_optimizer(self, task: TaskInfo, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer | None:
        return self.lora.configure_optimizer(task, params)

    def optimizer_name(self) -> str:
        return self.lora.optimizer_name()

    def after_task(self, task: TaskInfo, model: nn.Module, data: EncodedSplit) -> None:
        self.fip.after_task(task, model, data)
        self.lora.after_task(task, model, data)

    def state_dict(self) -> dict[str, Any]:
        return {"fip": self.fip.state_dict(), "lora": self.lora.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fip.load_state_dict(state["fip"])
        self.lora.load_state_dict(state["lora"])

"""LoRA: low-rank adapters trained through peft, with first-task, adapter and head policies.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022.

Each targeted linear layer W [d_out, d_in] computes W·x + (α/r)·B·A·x with A [r, d_in] and B [d_out, r]; the
base weights W stay frozen and only A and B (and, by default, the classifier head) are trained. The adapters
are installed with peft (`LoraConfig`, sequence-classification task type) once in `setup`, so the runner keeps
one model object for the whole stream; the policies decide which parameters train in each task:

- `first_task`: `full` fine-tunes every weight on the first task (the adapters are zero there because B = 0)
  and trains adapters from the second task on, as in the FIP paper's Yelp → IMDB experiment; `lora` trains
  adapters from the first task on.
- `adapter_policy`: `continue` trains one adapter through all tasks; `per_task` merges the finished adapter
  into the base weights after its task (W ← W + (α/r)·B·A) and starts the next task from a fresh adapter.
- `head`: `trainable` is peft's default for sequence classification (the head is a `modules_to_save` copy);
  `frozen` keeps the head at its value when adapters start (random rows under `first_task=lora`, the
  fine-tuned head under `full`), a separate arm because a trained shared head alone can cause forgetting.

Drift is measured by the runner on effective weights W + (α/r)·B·A (`clbench.ops.effective_weights`), under
the same names as the unwrapped model. Adapters are initialised from `ctx.generator` (A uniform in ±1/√d_in
as in peft's Kaiming default, B = 0). On a preference stream the model is a causal LM (peft's causal-LM task
type; its output layer is the tied embedding, so there is no separate head) and the loss is DPO.

Hooks: `setup` (wrap), `before_task` (which parameters train), `configure_optimizer` (the runner's AdamW at
`adapter_lr` while adapters train, when set), `after_task` (merge under `per_task`). The helpers `lora_layers`, `merge_adapters`, `reset_adapters` are reused by `fip-lora`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from clbench.data import EncodedSplit, TaskInfo
from clbench.methods import Hooks, MethodConfig, RunContext, option
from clbench.search import Choice, LogUniform

ADAPTER = "default"  # peft's name for the single adapter slot this method uses
FIRST_TASK = ("full", "lora")
ADAPTER_POLICY = ("continue", "per_task")
HEAD = ("trainable", "frozen")


@dataclass(frozen=True)
class LoRAConfig(MethodConfig):
    """LoRA hyperparameters (Hu et al. 2022, Sec. 4) and the continual-learning policies."""

    rank: int = option(8, "r: rank of the adapter factors B [d_out, r] and A [r, d_in]", search=Choice((4, 8, 16)))
    alpha: float = option(16.0, "α: scaling numerator; the layer adds ΔW = (α/r)·B·A")
    dropout: float = option(0.1, "dropout on the adapter's input (peft lora_dropout)")
    target_modules: tuple[str, ...] = option(("query", "value"), "linear layers that get adapters "
                                             "(W_q, W_v as in Hu et al.; q_proj, v_proj in Llama-style models)")
    first_task: str = option("full", "full: fine-tune every weight on task 1, adapters from task 2 (the FIP "
                             "paper's protocol); lora: adapters from task 1")
    adapter_policy: str = option("continue", "continue: one adapter through all tasks; per_task: a fresh "
                                 "adapter per task, merged into the base weights after its task")
    head: str = option("trainable", "trainable: peft's default (modules_to_save); frozen: the head does not "
                       "train while adapters do")
    adapter_lr: float | None = option(None, "learning rate while adapters train (default: the run's); adapters "
                                      "often need more than full fine-tuning: Hu et al. used 4e-4 to 5e-4 "
                                      "for RoBERTa-base (Table 9)", search=LogUniform(1e-5, 1e-2))

    def __post_init__(self) -> None:
        for key, allowed in (("first_task", FIRST_TASK), ("adapter_policy", ADAPTER_POLICY), ("head", HEAD)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}={getattr(self, key)!r} must be one of {', '.join(allowed)}")
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError("need rank >= 1, alpha > 0 and 0 <= dropout < 1")
        if self.adapter_lr is not None and not self.adapter_lr > 0:
            raise ValueError(f"adapter_lr={self.adapter_lr} must be > 0 (or left unset for the run's lr)")


def lora_layers(model: nn.Module) -> list[Any]:
    """peft's LoRA-wrapped layers of `model` (they hold `base_layer`, `lora_A`, `lora_B`)."""
    return [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")
            and hasattr(m, "get_delta_weight")]


@torch.no_grad()
def reset_adapters(model: nn.Module, generator: torch.Generator) -> None:
    """Start a fresh adapter: A ~ U(±1/√d_in) from `generator`, B = 0, so ΔW = 0."""
    for layer in lora_layers(model):
        a = layer.lora_A[ADAPTER].weight  # [r, d_in]
        bound = 1.0 / math.sqrt(a.shape[1])
        a.copy_((torch.rand(a.shape, generator=generator) * 2 - 1) * bound)
        layer.lora_B[ADAPTER].weight.zero_()  # [d_out, r]


@torch.no_grad()
def merge_adapters(model: nn.Module) -> None:
    """W ← W + (α/r)·B·A in every adapted layer (peft's `get_delta_weight` applies α/r)."""
    for layer in lora_layers(model):
        base = layer.base_layer.weight
        base.add_(layer.get_delta_weight(ADAPTER).to(base.dtype))


# BERT's attention projections and their names in Llama-style causal LMs (q_proj, k_proj, v_proj, o_proj).
PROJECTION_NAMES = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}


def target_names(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """`targets`, with BERT's projection names translated when the model names them the Llama way, so the
    default (W_q, W_v) means the same layers in both."""
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [PROJECTION_NAMES[t] if t not in present and PROJECTION_NAMES.get(t) in present else t for t in targets]


def wrap(model: nn.Module, config: LoRAConfig, kind: str = "classification") -> nn.Module:
    """The model wrapped by peft with one LoRA adapter on `config.target_modules` (a sequence classifier, or a
    causal LM on preference streams)."""
    from peft import LoraConfig, TaskType, get_peft_model

    task_type = TaskType.SEQ_CLS if kind == "classification" else TaskType.CAUSAL_LM
    peft_config = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                             target_modules=target_names(model, config.target_modules), task_type=task_type)
    return get_peft_model(model, peft_config)


def set_trainable(model: nn.Module, adapters: bool, head: bool) -> None:
    """Full fine-tuning (`adapters=False`): every base weight trains. Otherwise only adapters and maybe the head."""
    for name, param in model.named_parameters():
        if ".original_module." in name:
            param.requires_grad_(False)  # peft's untouched copy of the head; the forward uses the other copy
        elif ".lora_" in name:
            param.requires_grad_(adapters)
        elif ".modules_to_save." in name:
            param.requires_grad_(head)
        else:
            param.requires_grad_(not adapters)


class LoRA(Hooks):
    """LoRA adapters (peft) with a full-fine-tuning or adapter first task, continued or per-task adapters."""

    name: ClassVar[str] = "lora"
    config_cls: ClassVar[type[MethodConfig]] = LoRAConfig
    citation: ClassVar[str] = "Hu et al., LoRA: Low-Rank Adaptation of Large Language Models, ICLR 2022"
    task_kinds: ClassVar[tuple[str, ...]] = ("classification", "preference", "generation")

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.cfg: LoRAConfig = self.config  # type: ignore[assignment]
        self.first_task_is_finetuning = self.cfg.first_task == "full"

    def setup(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        self.ctx = ctx
        model = wrap(model, self.cfg, ctx.kind)
        reset_adapters(model, ctx.generator)
        return model

    def trains_adapters(self, task: TaskInfo) -> bool:
        """False on the first task under `first_task=full` (whole-model fine-tuning), True otherwise."""
        return not (self.cfg.first_task == "full" and task.index == 0)

    def before_task(self, task: TaskInfo, model: nn.Module) -> None:
        adapters = self.trains_adapters(task)
        set_trainable(model, adapters=adapters, head=not adapters or self.cfg.head == "trainable")

    def configure_optimizer(self, task: TaskInfo, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer | None:
        """The runner's AdamW at `adapter_lr` while adapters train; None (the run's lr) otherwise."""
        if self.cfg.adapter_lr is None or not self.trains_adapters(task):
            return None
        return self.ctx.adamw(params, self.cfg.adapter_lr)

    def optimizer_name(self) -> str:
        if self.cfg.adapter_lr is None:
            return super().optimizer_name()
        return f"AdamW (the runner's; adapters at lr {self.cfg.adapter_lr:g})"

    def after_task(self, task: TaskInfo, model: nn.Module, data: EncodedSplit) -> None:
        if self.cfg.adapter_policy == "per_task" and self.trains_adapters(task):
            merge_adapters(model)
            reset_adapters(model, self.context.generator)

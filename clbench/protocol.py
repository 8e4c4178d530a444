"""The method protocol: the hooks the runner calls around its one training loop.

A method subclasses `Hooks` (re-exported as `clbench.methods.Hooks`), sets `name` and `config_cls` (a frozen
dataclass whose fields carry `help` metadata) and overrides only the hooks it needs. The runner owns the
dataloaders, optimiser, scheduler, clipping, evaluation and profiling; methods never call `optimizer.step()`
and call `backward()` only from `loss` when they set `backward_in_loss` (documented memory-saving mode).

Call order for each task::

    before_task(task, model)
    data = train_data(task, data, previous)        # e.g. joint training on the union of tasks
    for every step:
        extra = extra_inputs(batch)                # e.g. a replay batch to forward together with the new one
        outputs = model(training_inputs(batch [+ extra]))  -> task_loss on the batch's rows only
        loss = loss(model, batch, outputs, task_loss); loss.backward()
        after_backward(model)                      # gradients ready: projections, path integrals
        optimizer.step(); after_step(model)        # optimizer: configure_optimizer(task, params) or AdamW
    after_task(task, model, data)                  # Fisher, importances, memory buffers

Reference adapters to other libraries (`external_loop = True`, e.g. `avalanche:ewc`) replace only the step
loop: the runner calls `fit_task(task, model, data, settings)` with its own optimiser, schedule and budget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from clbench.config import option
from clbench.data import AnySplit, Batch, EncodedSplit, TaskInfo
from clbench.ops import default_optimizer

__all__ = ["FitResult", "Hooks", "LoopSettings", "MethodConfig", "RunContext", "config_fields", "option"]


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method config; subclasses add frozen fields with `metadata={"help": ...}`."""


@dataclass
class RunContext:
    """What the runner tells a method at setup: the stream layout, device, seed and shared budgets."""

    tasks: tuple[TaskInfo, ...]
    num_labels: int
    device: torch.device
    seed: int
    generator: torch.Generator  # seeded; methods draw all their randomness from it
    buffer_size: int  # shared memory budget (examples) for every method that stores old data
    batch_size: int
    head: str = "shared"  # "shared": argmax over all classes; "per-task": logits restricted to the task
    lr: float = 1e-4  # the run's learning rate and AdamW weight decay; the runner fills both in
    weight_decay: float = 0.01
    active_classes: str = "all"  # which outputs the training cross-entropy sees: all, seen or current
    task_index: int = 0  # the task being trained; the runner sets it before each task
    kind: str = "classification"  # the stream's task kind; "preference" (DPO) or "generation": a causal LM
    beta: float = 0.1  # DPO's β for preference streams (the run's `dpo_beta`)

    def training_inputs(self, batch: Any) -> dict[str, Tensor]:
        """The model inputs a forward pass for `task_loss` needs on `batch`: its rows for classification, a
        preference pair's chosen and rejected rows (2B, DPO compares them), and only the B target (chosen) rows
        for generation, whose loss never reads the alternatives (evaluation scores both, `lm_scores`)."""
        inputs: dict[str, Tensor] = batch.chosen_inputs() if self.kind == "generation" else batch.model_inputs()
        return inputs

    def task_loss(self, outputs: Any, batch: Any) -> Tensor:
        """The runner's task loss on `batch` from the `outputs` of a forward pass over `training_inputs(batch)`
        (rows after the batch's own, e.g. those of `training_inputs(batch.concat(extra))`, are ignored; not on
        preference pairs, whose concat puts both batches' chosen rows before their rejected ones):
        cross-entropy under `loss_logits` for classification, DPO for preference pairs (`clbench.preference`;
        the batch carries its reference log-probs), the target answer's mean token negative log-likelihood for
        generation."""
        if self.kind == "preference":
            from clbench.preference import dpo_loss, pair_log_probs

            if batch.reference is None:
                raise RuntimeError("a preference batch needs its reference log-probs (PairSplit.with_reference)")
            return dpo_loss(pair_log_probs(outputs.logits, batch), batch.reference, self.beta)
        if self.kind == "generation":
            from clbench.preference import target_nll

            return target_nll(outputs.logits, batch)
        logits = self.loss_logits(outputs.logits[:len(batch)], batch.task_ids)  # [batch, num_labels]
        return nn.functional.cross_entropy(logits.float(), batch.labels)

    def loss_of(self, model: nn.Module, batch: Any) -> Tensor:
        """`task_loss` of `model` on `batch` in its own forward pass (e.g. a replay batch, a Fisher sample)."""
        return self.task_loss(model(**self.training_inputs(batch)), batch)

    def adamw(self, params: Sequence[nn.Parameter], lr: float | None = None) -> torch.optim.Optimizer:
        """The runner's default optimiser (AdamW with the run's weight decay) at `lr`, default the run's.

        For `configure_optimizer` hooks that change only the learning rate, e.g. LoRA's `adapter_lr`.
        """
        return default_optimizer(params, self.lr if lr is None else lr, self.weight_decay)

    def logits(self, outputs_logits: Tensor, task_ids: Tensor) -> Tensor:
        """Apply the head policy: with per-task heads, other tasks' logits are masked out."""
        if self.head == "shared":
            return outputs_logits
        return outputs_logits.masked_fill(~self.label_mask(task_ids), float("-inf"))

    def loss_logits(self, outputs_logits: Tensor, task_ids: Tensor) -> Tensor:
        """Logits for a training cross-entropy: the head policy, then the run's active classes.

        `all` keeps every output of the shared head; `seen` masks the classes of tasks after the one being
        trained; `current` keeps only each example's own task's classes (the "labels trick"; van de Ven,
        Tuytelaars & Tolias, "Three types of incremental learning", Nature Machine Intelligence 2022).
        Evaluation and function-space distances use `logits`, never this.
        """
        logits = self.logits(outputs_logits, task_ids)
        if self.active_classes == "all":
            return logits
        if self.active_classes == "current":
            return logits.masked_fill(~self.label_mask(task_ids), float("-inf"))
        seen = self.label_mask(torch.full_like(task_ids, self.task_index))  # the current task's classes ...
        for index in range(self.task_index):  # ... and every earlier task's
            seen |= self.label_mask(torch.full_like(task_ids, index))
        return logits.masked_fill(~seen, float("-inf"))

    def label_mask(self, task_ids: Tensor) -> Tensor:
        """[batch, num_labels] bool: True where the label belongs to the example's task."""
        mask = torch.zeros(len(self.tasks), self.num_labels, dtype=torch.bool)
        for info in self.tasks:
            mask[info.index, info.label_offset:info.label_offset + info.num_classes] = True
        return mask.to(task_ids.device)[task_ids]

    def forward(self, model: nn.Module, batch: Batch) -> Tensor:
        """Logits of `model` on `batch` under the head policy (for replay and distillation terms)."""
        return self.logits(model(**batch.model_inputs()).logits, batch.task_ids)

    def extra_logits(self, outputs: Any, batch: Batch, extra: Batch) -> Tensor:
        """Logits [len(extra), num_labels] of the rows `Hooks.extra_inputs` added to `batch`'s forward pass,
        under the head policy (the runner puts them after the batch's own rows)."""
        return self.logits(outputs.logits[len(batch):], extra.task_ids)


@dataclass
class LoopSettings:
    """What the runner would train one task with, handed to `fit_task` of methods with `external_loop`.

    The values are the runner's own for this task (same optimiser object, schedule, budget and clipping), so
    a reference adapter trains under exactly the budget a native method gets.
    """

    optimizer: torch.optim.Optimizer  # fresh for the task, over `trainable_parameters(model)`
    scheduler: torch.optim.lr_scheduler.LRScheduler  # step once after every optimiser step
    total_steps: int  # optimiser steps for this task: max_steps, or epochs × batches per epoch
    epochs: int
    batch_size: int
    grad_clip: float  # max gradient norm; 0 disables clipping
    precision: str
    device: torch.device
    generator: torch.Generator  # the runner's data-order generator for this unit


@dataclass(frozen=True)
class FitResult:
    """What `fit_task` reports back: work done (for profiling) and the last loss (for divergence checks)."""

    steps: int
    examples: int
    tokens: int
    last_loss: float


class Hooks:
    """No-op defaults for every hook. Subclass this and nothing else.

    Class facts the runner reads: `name` (registry key), `config_cls`, `citation`,
    `first_task_is_finetuning` (True when the first task trains exactly like naive fine-tuning, so the runner
    may share it), `uses_buffer` (True when the method stores old examples within `buffer_size`) and
    `backward_in_loss` (True when `loss` runs its own backward passes and returns a detached value).
    `first_task_is_finetuning` and `backward_in_loss` may depend on the config: a method sets them per instance
    in `__init__`, so the runner reads them from the method instance, not the class.

    Sharing the first task (`clbench.training.sharing`) happens only for a method that sets
    `first_task_is_finetuning = True` itself; the default is False, so nothing is shared by accident. A unit
    that starts from the shared task 1 runs its own `setup`, `before_task` and `after_task`, but its step hooks
    are not called on task 1: a method that needs them there (SI's path integral) must not declare it.

    Requirements, checked with the rest of the configuration before any unit trains: `requires_buffer` (the
    method cannot run with `buffer_size` 0), `requires_packages` ((import name, how to install) pairs) and
    `task_kinds` (the stream kinds it is defined for: "classification", and "preference" for methods whose
    hooks work on preference pairs and causal LMs through `RunContext.task_loss` / `loss_of`).
    """

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    citation: ClassVar[str] = ""
    first_task_is_finetuning: bool = False
    uses_buffer: ClassVar[bool] = False
    role: ClassVar[str] = "method"  # "upper-bound" (joint) or "reference" (single-task): reported apart, not ranked
    requires_buffer: ClassVar[bool] = False
    requires_packages: ClassVar[tuple[tuple[str, str], ...]] = ()
    backward_in_loss: bool = False
    external_loop: ClassVar[bool] = False  # True only for reference adapters that train through `fit_task`
    task_kinds: ClassVar[tuple[str, ...]] = ("classification",)  # task kinds it applies to (validated before runs)

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config = config if config is not None else self.config_cls()
        self.ctx: RunContext | None = None

    @property
    def context(self) -> RunContext:
        if self.ctx is None:
            raise RuntimeError(f"method {self.name!r} used before setup()")
        return self.ctx

    def setup(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        """Called once per unit before row 0 is evaluated; may wrap the model (e.g. PEFT adapters)."""
        self.ctx = ctx
        return model

    def before_task(self, task: TaskInfo, model: nn.Module) -> None:
        """Called before training `task`: snapshot anchors, cache teacher outputs."""

    def train_data(self, task: TaskInfo, data: AnySplit, previous: Sequence[AnySplit]) -> AnySplit:
        """The data to train on for `task`; `previous` holds earlier tasks' training splits."""
        return data

    def extra_inputs(self, batch: Batch) -> Batch | None:
        """Inputs to run through the model in the same forward pass as the new `batch`, or None.

        When given, the runner forwards `batch.concat(extra)` (one pass, padded to the wider of the two),
        computes `task_loss` on the first `len(batch)` rows only, and hands the whole output to `loss`, where
        `ctx.extra_logits(outputs, batch, extra)` gives the extra rows' logits: one larger pass instead of two
        small ones, for devices where kernel launches dominate a step.
        """
        return None

    def loss(self, model: nn.Module, batch: Batch, outputs: Any, task_loss: Tensor) -> Tensor:
        """The loss to backpropagate: `task_loss` plus any penalty."""
        return task_loss

    def after_backward(self, model: nn.Module) -> None:
        """Gradients are ready and not yet clipped or applied."""

    def after_step(self, model: nn.Module) -> None:
        """The optimiser has updated the parameters."""

    def after_task(self, task: TaskInfo, model: nn.Module, data: AnySplit) -> None:
        """Training on `task` finished: compute importances, fill memory buffers, merge adapters."""

    def configure_optimizer(self, task: TaskInfo, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer | None:
        """An optimiser for `task` when the method's update rule needs one; None keeps the runner's AdamW.

        The runner still applies its learning-rate schedule and gradient clipping to whatever is returned.
        """
        return None

    def fit_task(self, task: TaskInfo, model: nn.Module, data: EncodedSplit, settings: LoopSettings) -> FitResult:
        """Train `model` on `data` with another library's loop; called instead of the runner's loop.

        Only for reference adapters (e.g. `avalanche:<strategy>`) that set `external_loop = True`: they run a
        third-party training loop one task at a time, with the runner's optimiser, schedule, step budget and
        clipping from `settings`. Everything else stays the runner's: `before_task`, `train_data`, `after_task`,
        evaluation, drift, profiling and results. Native methods never override this.
        """
        raise NotImplementedError(f"method {self.name!r} sets external_loop but does not implement fit_task")

    def optimizer_name(self) -> str:
        """The update rule this method trains with, in words, for reports: "AdamW (the runner's)" by default.

        A method whose `configure_optimizer` returns another optimiser, or the runner's at another learning
        rate, overrides this to say so (e.g. GEM: "SGD (lr 0.03)"), so a comparison names every deviation.
        """
        return "AdamW (the runner's)"

    def trainable_parameters(self, model: nn.Module) -> Iterator[nn.Parameter]:
        """Parameters handed to the optimiser for the coming task."""
        return (p for p in model.parameters() if p.requires_grad)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values needed to resume after a finished task (no pickled objects)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


def config_fields(config_cls: type[MethodConfig]) -> list[dict[str, Any]]:
    """Name, type, default and help of every config field, for `clbench list methods` and docs."""
    out = []
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        space = f.metadata.get("search")
        out.append({"name": f.name, "type": getattr(f.type, "__name__", str(f.type)), "default": default,
                    "help": f.metadata.get("help", ""), "search": space.describe() if space is not None else None})
    return out

"""Reference adapters `avalanche:<strategy>`: Avalanche 0.6's own strategies, trained one clbench task at a time.

Each adapter is a clbench method with `external_loop = True`: the runner keeps everything around training
(`before_task`, evaluation of every task, drift, profiling, results) and calls `fit_task` for the step loop,
which runs the Avalanche strategy's `train()` on one experience built from the task's training split. The
strategy object lives for the whole unit, so its plugins (EWC importances, SI path integrals, GEM/A-GEM and
replay memories, LwF's previous model) carry over from task to task exactly as in Avalanche.

Same budget as native methods: the strategy trains with the runner's optimiser object (fresh AdamW per task),
its warm-up/decay schedule (stepped after each update), its gradient clipping and its step budget (training
stops after `total_steps` updates), with the run's batch size, head policy and shared `buffer_size` (GEM and
A-GEM store ⌊buffer_size / tasks⌋ patterns per task, Replay `buffer_size` in all). Documented differences:
Avalanche shuffles with the global RNG, so `fit_task` runs it inside `torch.random.fork_rng` seeded from the
runner's generator (reproducible, global state untouched); Avalanche trains in fp32; a resumed unit restarts
the strategy's state (`state_dict` is empty).

Inputs reach Avalanche as `(x, y, t)` tensor batches with `x = [ids; mask]` packed by
`clbench.interop.avalanche`. Every task is packed to the model's maximum length so that memories that mix
tasks (A-GEM, Replay) collate; `PackedSequenceClassifier` trims each batch back to its longest example.

Avalanche itself is imported only inside `fit_task` (and the plugin class built there), so describing the
adapters (`clbench list methods`) imports no Avalanche. The seven adapters differ only in their strategy class,
options and memory, so they are generated from one table (`ADAPTERS`): each is `AvalancheAdapter` (two levels
below `Hooks`) with a config dataclass built from its row.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from clbench.data import EncodedSplit, TaskInfo
from clbench.interop.avalanche import PackedSequenceClassifier, avalanche_dataset
from clbench.protocol import FitResult, Hooks, LoopSettings, MethodConfig, RunContext, option


class HeadLoss(nn.Module):
    """Cross-entropy under the run's head policy, as the runner computes its task loss.

    Avalanche's criterion sees only `(logits, targets)`; with per-task heads the task of each example follows
    from its global label, so the logits of other tasks are masked exactly as `RunContext.logits` does.
    """

    def __init__(self, ctx: RunContext) -> None:
        super().__init__()
        self.ctx = ctx
        label_task = torch.zeros(ctx.num_labels, dtype=torch.long)
        for info in ctx.tasks:
            label_task[info.label_offset:info.label_offset + info.num_classes] = info.index
        self.label_task = label_task  # [num_labels] task index of every global label

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        task_ids = self.label_task.to(targets.device)[targets]  # [batch]
        return nn.functional.cross_entropy(self.ctx.logits(logits, task_ids).float(), targets)


class RunnerBudget:
    """Applies the runner's clipping and schedule inside Avalanche's loop and stops after the step budget.

    A mixin: `budget_plugin_class()` combines it with Avalanche's `SupervisedPlugin` on first use.
    """

    def __init__(self, settings: LoopSettings) -> None:
        super().__init__()
        self.settings = settings
        self.steps = self.examples = self.tokens = 0
        self.last_loss = float("nan")

    def before_update(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if self.settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(strategy.model.parameters(), self.settings.grad_clip)

    def after_update(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.settings.scheduler.step()
        self.steps += 1
        self.examples += len(strategy.mb_y)
        self.tokens += int(strategy.mb_x[:, 1].sum())  # x: [batch, 2, seq], row 1 is the attention mask
        self.last_loss = float(strategy.loss.detach())
        if self.steps >= self.settings.total_steps or not torch.isfinite(torch.tensor(self.last_loss)):
            strategy.stop_training()


@functools.cache
def budget_plugin_class() -> type[RunnerBudget]:
    """`RunnerBudget` as an Avalanche `SupervisedPlugin`, defined on first use so importing this module is cheap."""
    from avalanche.core import SupervisedPlugin

    return type("RunnerBudgetPlugin", (RunnerBudget, SupervisedPlugin), {})


class AvalancheAdapter(Hooks):
    """Shared machinery of the `avalanche:<strategy>` adapters (not registered itself)."""

    strategy_name: ClassVar[str] = ""  # class in avalanche.training.supervised
    external_loop: ClassVar[bool] = True
    first_task_is_finetuning = False  # the strategy's own loop trains task 1, so it is never shared

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        self.strategy: Any = None
        self.packed: PackedSequenceClassifier | None = None
        self.width = 0

    def strategy_options(self, ctx: RunContext) -> dict[str, Any]:
        """Keyword arguments of the strategy beyond model, optimiser, criterion and loop settings.

        By default the config's fields, which adapters name exactly as Avalanche's keyword arguments.
        """
        return dataclasses.asdict(self.config)

    def setup(self, model: nn.Module, ctx: RunContext) -> nn.Module:
        self.packed = PackedSequenceClassifier(model)
        config = getattr(model, "config", None)
        self.width = int(getattr(config, "max_position_embeddings", 0) or 0)
        return super().setup(model, ctx)

    def fit_task(self, task: TaskInfo, model: nn.Module, data: EncodedSplit, settings: LoopSettings) -> FitResult:
        """Train `model` on `data` with the Avalanche strategy, under the runner's optimiser and budget."""
        from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
        from avalanche.training import supervised
        from avalanche.training.plugins import EvaluationPlugin

        ctx = self.context
        if self.packed is None or self.packed.model is not model:
            self.packed = PackedSequenceClassifier(model)
            self.strategy = None
        budget = budget_plugin_class()(settings)
        if self.strategy is None:
            cls = getattr(supervised, self.strategy_name)
            with warnings.catch_warnings():  # clbench records metrics itself; Avalanche's evaluator stays silent
                warnings.filterwarnings("ignore", message="No loggers specified", category=UserWarning)
                evaluator = EvaluationPlugin(loggers=[])
            self.strategy = cls(model=self.packed, optimizer=settings.optimizer, criterion=HeadLoss(ctx),
                                train_mb_size=settings.batch_size, train_epochs=1, eval_mb_size=settings.batch_size,
                                device=settings.device, plugins=[budget], evaluator=evaluator,
                                **self.strategy_options(ctx))
        else:  # a fresh optimiser per task, as native methods get; Avalanche re-maps its parameters
            self.strategy.optimizer = settings.optimizer
            self.strategy.optimized_param_id = None
            self.strategy.plugins = [p for p in self.strategy.plugins if not isinstance(p, RunnerBudget)] + [budget]
        self.strategy.train_epochs = max(1, settings.total_steps)  # at least one step per epoch; budget stops it
        width = max(self.width, data.ids.shape[1])
        experience = DatasetExperience(dataset=avalanche_dataset(data, width), current_experience=task.index)
        seed = int(torch.randint(0, 2**62, (1,), generator=settings.generator))
        devices = [settings.device] if settings.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            self.strategy.train(experience, eval_streams=[], num_workers=0)
        return FitResult(budget.steps, budget.examples, budget.tokens, budget.last_loss)


def _per_task(ctx: RunContext) -> int:
    """Patterns per task that keep T tasks within the shared buffer budget."""
    return max(1, ctx.buffer_size // max(1, len(ctx.tasks)))


@dataclass(frozen=True)
class AdapterSpec:
    """One row of the adapter table: an Avalanche strategy, its options and how it takes the shared memory."""

    strategy: str  # class in avalanche.training.supervised; the registry name is avalanche:<lower-case>
    summary: str
    citation: str
    options: tuple[tuple[str, Any, Any, str], ...] = ()  # (field, type, default, help), named as Avalanche's kwargs
    memory: Callable[[RunContext, Any], dict[str, Any]] | None = None  # strategy kwargs from the shared budget


ADAPTERS: dict[str, AdapterSpec] = {
    "avalanche:naive": AdapterSpec(
        "Naive", "[avalanche] Naive fine-tuning through Avalanche's own training loop (reference for `naive`).",
        "Avalanche 0.6 Naive (Lomonaco et al., CVPR-W 2021)"),
    "avalanche:ewc": AdapterSpec(
        "EWC", "[avalanche] EWC (Kirkpatrick et al. 2017) with Avalanche's batched Fisher (reference for `ewc`).",
        "Kirkpatrick et al., PNAS 2017, via Avalanche 0.6 EWC",
        (("ewc_lambda", float, 1000.0, "λ: weight of the EWC penalty (Avalanche's ewc_lambda)"),
         ("mode", str, "separate", "separate (one penalty per task) or online (decayed running Fisher)"),
         ("decay_factor", float | None, None, "γ for mode=online"))),
    "avalanche:si": AdapterSpec(
        "SynapticIntelligence", "[avalanche] Synaptic Intelligence (Zenke et al. 2017) via Avalanche (reference "
        "for `si`).", "Zenke et al., ICML 2017, via Avalanche 0.6 SynapticIntelligence",
        (("si_lambda", float, 1.0, "c: strength of the SI penalty (Avalanche's si_lambda)"),
         ("eps", float, 1e-7, "ξ: damping of the importance denominator"))),
    "avalanche:gem": AdapterSpec(
        "GEM", "[avalanche] GEM (Lopez-Paz & Ranzato 2017) via Avalanche, memory from the shared budget "
        "(reference for `gem`).", "Lopez-Paz & Ranzato, NeurIPS 2017, via Avalanche 0.6 GEM",
        (("memory_strength", float, 0.5, "γ: margin added to the projected gradient (memory_strength)"),),
        lambda ctx, c: {"patterns_per_exp": _per_task(ctx), "memory_strength": c.memory_strength}),
    "avalanche:agem": AdapterSpec(
        "AGEM", "[avalanche] A-GEM (Chaudhry et al. 2019) via Avalanche, memory from the shared budget "
        "(reference for `agem`).", "Chaudhry et al., ICLR 2019, via Avalanche 0.6 AGEM",
        (("sample_size", int | None, 256,
          "memory examples per reference gradient (256 as in the authors' code and `agem`; unset: the batch size)"),),
        lambda ctx, c: {"patterns_per_exp": _per_task(ctx), "sample_size": c.sample_size or ctx.batch_size}),
    "avalanche:lwf": AdapterSpec(
        "LwF", "[avalanche] Learning without Forgetting (Li & Hoiem 2017) via Avalanche (reference for `lwf`).",
        "Li & Hoiem, ECCV 2016, via Avalanche 0.6 LwF",
        (("alpha", float, 1.0, "λ_o: weight of the distillation loss (Avalanche's alpha)"),
         ("temperature", float, 2.0, "T: softmax temperature of the distillation"))),
    "avalanche:replay": AdapterSpec(
        "Replay", "[avalanche] Experience replay with Avalanche's task-balanced buffer of buffer_size (reference "
        "for `replay`).", "Chaudhry et al. 2019 / Rolnick et al. 2019, via Avalanche 0.6 Replay",
        memory=lambda ctx, c: {"mem_size": ctx.buffer_size}),
}


@functools.cache
def adapter(name: str) -> type[AvalancheAdapter]:
    """The method class of table row `name`, with a frozen config dataclass built from its options."""
    spec = ADAPTERS[name]
    title = "Avalanche" + spec.strategy
    config_cls = dataclasses.make_dataclass(
        title + "Config", [(field, kind, option(default, help)) for field, kind, default, help in spec.options],
        bases=(MethodConfig,), frozen=True)
    config_cls.__doc__ = f"Options of Avalanche's {spec.strategy} strategy."
    memory = spec.memory

    def strategy_options(self: AvalancheAdapter, ctx: RunContext) -> dict[str, Any]:
        return memory(ctx, self.config) if memory is not None else dataclasses.asdict(self.config)

    return type(title, (AvalancheAdapter,), {
        "__doc__": spec.summary, "__module__": __name__, "name": name, "config_cls": config_cls,
        "citation": spec.citation, "strategy_name": spec.strategy, "uses_buffer": memory is not None,
        "strategy_options": strategy_options})

"""Evaluation inside a unit: every task's test split after each task, and the drift records beside it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from clbench.data import LM_KINDS, AnySplit, BatchPlan, TaskInfo
from clbench.data.pairs import PairSplit
from clbench.data.prepare import Prepared
from clbench.evaluators.accuracy import (
    accuracy,
    class_incremental_predictions,
    macro_f1,
    task_aware_predictions,
)
from clbench.evaluators.drift import frobenius_drift_norms, functional_drift
from clbench.ops import copies_into, effective_weights, packed_copies
from clbench.preference import (
    TokenAnchors,
    choice_accuracy,
    general_ability,
    preference_accuracy,
    reward_margins,
    sequence_log_probs,
)
from clbench.protocol import RunContext
from clbench.training.records import UnitRecorder


def autocast(device: torch.device, precision: str) -> Any:
    """bf16/fp16 autocast on CUDA; a disabled context elsewhere (CPU runs stay fp32)."""
    if device.type == "cuda" and precision in ("bf16", "fp16"):
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return torch.autocast(device.type, enabled=False)


def predict(model: nn.Module, split: AnySplit, ctx: RunContext, batch_size: int,
            precision: str = "fp32") -> Tensor:
    """Raw logits [n, num_labels] for every example of `split`, in the split's order; for preference pairs the
    summed response log-probs [n, 2] of (chosen, rejected) (`clbench.preference.sequence_log_probs`)."""
    if isinstance(split, PairSplit):
        return sequence_log_probs(model, split, batch_size, ctx.device, autocast(ctx.device, precision))
    model.eval()
    logits = torch.empty(len(split), ctx.num_labels)
    with torch.inference_mode(), autocast(ctx.device, precision):
        plan = BatchPlan(split, batch_size, shuffle=False)
        for index in plan.indices():
            batch = split.batch(index).to(ctx.device)
            logits[index] = model(**batch.model_inputs()).logits.float().cpu()
    return logits


def evaluate_all(model: nn.Module, prepared: Prepared, ctx: RunContext, records: UnitRecorder, row: int,
                 task: str | None, *, batch_size: int, precision: str, step: int | None = None,
                 kind: str = "accuracy", cached: list[Tensor] | None = None, base: list[Tensor] | None = None,
                 tasks: int | None = None) -> list[Tensor]:
    """Evaluate every task's evaluated split (test, or validation while tuning); append class-incremental and
    task-aware accuracy and macro-F1, each record naming the split.

    Returns the logits (one [n, num_labels] tensor per task evaluated: every task, or the first `tasks`).
    `cached` logits skip the forward passes, e.g. for row 0 of a model identical to one already evaluated. On a
    preference stream the records are preference accuracy (as `acc_cil` and `acc_til`: one head, no task
    identity to use) and the mean reward margin, both against the model before the stream, whose outputs `base`
    holds (None: this is that model). On a generation stream they are answer accuracy: how often the target is
    likelier than the alternative.
    """
    out = []
    all_logits = []
    for info, split in list(zip(prepared.infos, prepared.evaluated))[:tasks]:
        logits = cached[info.index] if cached is not None else predict(model, split, ctx, batch_size, precision)
        all_logits.append(logits)
        if isinstance(split, PairSplit):
            values, measure = lm_scores(logits, logits if base is None else base[info.index], ctx)
            out += [records.record(kind, row, task, eval_task=info.name, eval_index=info.index, step=step,
                                   split=prepared.eval_split, metric=metric, value=value, measure=measure)
                    for metric, value in values.items()]
            continue
        target = split.labels
        cil = class_incremental_predictions(logits)
        til = task_aware_predictions(logits, info.label_offset, info.num_classes)
        labels = list(info.label_range)
        for metric, value in (("acc_cil", accuracy(cil, target)), ("acc_til", accuracy(til, target)),
                              ("f1_cil", macro_f1(cil, target, labels)), ("f1_til", macro_f1(til, target, labels))):
            out.append(records.record(kind, row, task, eval_task=info.name, eval_index=info.index, step=step,
                                      split=prepared.eval_split, metric=metric, value=value))
    records.append(out)
    return all_logits


def lm_scores(log_probs: Tensor, base: Tensor, ctx: RunContext) -> tuple[dict[str, float], str]:
    """A causal LM's scores on one task from its [n, 2] response log-probs, and what they measure: answer
    accuracy on a generation task; on a preference task preference accuracy and the mean reward margin
    against the base model's log-probs `base`. `acc_til` repeats `acc_cil`: one model scores every example."""
    if ctx.kind == "generation":  # the target against the alternative
        value = choice_accuracy(log_probs)
        return {"acc_cil": value, "acc_til": value}, "answer accuracy"
    value = preference_accuracy(log_probs, base)
    margin = float(reward_margins(log_probs, base, ctx.beta).mean())
    return {"acc_cil": value, "reward_margin": margin, "acc_til": value}, "preference accuracy"


class DriftReferences:
    """The effective weights drift is measured from: at the unit's start, and before the task being trained.

    Kept on the model's device, so drift is computed there. "Before" task i+1 is "after" task i, so each task
    takes one snapshot (none after the last task) into buffers reused from task to task; before the first task
    trained in this process it is the start itself, unless the unit resumed from a checkpoint (`restart`).
    """

    def __init__(self, model: nn.Module) -> None:
        self.start = packed_copies(effective_weights(model, device=None, copy=False))  # drift "since the start"
        self.before = self.start

    def restart(self, model: nn.Module) -> None:
        """The model was restored from a checkpoint: the next task's drift is measured from these weights."""
        self.before = packed_copies(effective_weights(model, device=None, copy=False))

    def records(self, records: UnitRecorder, info: TaskInfo, model: nn.Module, more_tasks: bool
                ) -> list[dict[str, Any]]:
        """The drift records of task `info` (the model as trained); keeps it as the next task's "before"."""
        after = effective_weights(model, device=None, copy=False)  # read now, before the model changes
        out = drift_records(records, info, self.before, self.start, after)
        if more_tasks:
            self.before = copies_into(None if self.before is self.start else self.before, after)
        return out


def drift_records(records: UnitRecorder, info: TaskInfo, before: dict[str, Tensor], start: dict[str, Tensor],
                  after: dict[str, Tensor]) -> list[dict[str, Any]]:
    """Fractional Frobenius change of the effective weights over this task and since the start."""
    out = []
    row = info.index + 1
    for metric, reference in (("frobenius_task", before), ("frobenius_total", start)):
        per_tensor, overall, norms = frobenius_drift_norms(reference, after, strict=False)
        out.append(records.record("drift", row, info.name, param="__overall__", metric=metric, value=overall))
        out += [records.record("drift", row, info.name, param=p, metric=metric, value=v, norm_before=norms[p][0],
                               norm_change=norms[p][1])
                for p, v in per_tensor.items()]
    return out


def functional_records(records: UnitRecorder, info: TaskInfo, before: list[Tensor], after: list[Tensor],
                       infos: Sequence[TaskInfo], kind: str = "classification") -> list[dict[str, Any]]:
    """Distance in function space on previous tasks' test inputs, before vs after training `info` (classifiers
    only: a preference stream's outputs are sequence log-probabilities, not a distribution over classes)."""
    out: list[dict[str, Any]] = []
    if kind in LM_KINDS:
        return out
    for old in infos[:info.index]:
        drift = functional_drift(before[old.index], after[old.index])
        for metric, value in drift._asdict().items():
            out.append(records.record("functional", info.index + 1, info.name, eval_task=old.name,
                                      eval_index=old.index, metric=metric, value=value))
    return out


def general_records(model: nn.Module, general: PairSplit, base: TokenAnchors, ctx: RunContext,
                    records: UnitRecorder, row: int, task: str | None, batch_size: int) -> list[dict[str, Any]]:
    """Perplexity of the model on the stream's general text and its KL from the base model there
    (`clbench.preference.general_ability`), as records of type `general` for row `row`."""
    perplexity, kl = general_ability(model, general, base, batch_size, ctx.device)
    return [records.record("general", row, task, split="general", metric=metric, value=value)
            for metric, value in (("perplexity", perplexity), ("kl_base", kl))]

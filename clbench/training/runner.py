"""The runner: the only training loop in clbench, one unit (method × seed) at a time.

A unit builds the model and lets the method wrap it, evaluates every task before training (row 0, or
restores its last checkpoint), then for each task: the method prepares it, the loop trains it, the method
finishes it, and every task is evaluated again (row i) with drift, profile and checkpoint beside. Records are
appended as soon as they are known. A unit that diverges (non-finite loss) or runs out of CUDA memory raises
`UnitFailed`; the executor records it as failed and the other units go on.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from clbench.config import RunConfig
from clbench.data import LM_KINDS, AnySplit, BatchPlan, EncodedSplit, TaskInfo
from clbench.data.pairs import PairSplit
from clbench.data.prepare import Prepared
from clbench.errors import UnitFailed
from clbench.evaluators.profile import ProfileRecord, optimizer_state_mb, parameter_counts, profile
from clbench.models import build_causal_lm, build_model, model_spec
from clbench.preference import GENERAL_TOPK, TokenAnchors, sequence_log_probs, token_anchors
from clbench.protocol import Hooks, LoopSettings, RunContext
from clbench.results import RecordSink
from clbench.training.checkpoint import CheckpointStore, rng_states, set_rng_states
from clbench.training.evaluation import (
    DriftReferences,
    autocast,
    evaluate_all,
    functional_records,
    general_records,
    predict,
)
from clbench.training.heap import kept_heap
from clbench.training.progress import Progress
from clbench.training.records import UnitRecorder
from clbench.training.sharing import SharedStart, TrainedFirstTask


class Diverged(UnitFailed):
    """The loss became NaN or infinite; the unit stops and is recorded as failed."""


class OutOfMemory(UnitFailed):
    """CUDA ran out of memory inside a unit; the message names the batch size and the memory in use."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over `warmup` steps, then linear decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


@dataclass
class Unit:
    """One method × one seed in training: what every stage of the loop reads."""

    config: RunConfig
    prepared: Prepared
    method: Hooks
    model: nn.Module
    built: nn.Module  # the model as built, before `setup` may have wrapped it
    ctx: RunContext
    generator: torch.Generator  # the runner's data order
    records: UnitRecorder
    progress: Progress
    checkpoints: CheckpointStore | None
    shared: SharedStart | None
    forward: Callable[..., Any]  # the training step's forward: the model, or its torch.compile wrapper
    evaluate_unseen: bool = True  # False: after row 0, only the tasks trained so far are evaluated
    base: list[Tensor] | None = None  # preference streams: row 0's outputs, what rewards are measured against
    general_base: TokenAnchors | None = None  # the base model's distributions on the stream's general text

    @property
    def label(self) -> str:
        return self.records.unit

    def evaluate(self, row: int, task: str | None, **kwargs: Any) -> list[Tensor]:
        seen = row if row and not self.evaluate_unseen else None
        logits = evaluate_all(self.model, self.prepared, self.ctx, self.records, row, task,
                              batch_size=self.config.eval_batch_size, precision=self.config.precision, base=self.base,
                              tasks=seen, **kwargs)
        general = self.prepared.general
        if general is not None and kwargs.get("kind", "accuracy") == "accuracy":
            if self.general_base is None:  # row 0: this is the base model
                self.general_base = token_anchors(self.model, general, self.config.eval_batch_size, self.ctx.device,
                                                  GENERAL_TOPK)
            self.records.append(general_records(self.model, general, self.general_base, self.ctx, self.records,
                                                row, task, self.config.eval_batch_size))
        return logits


@dataclass
class TrainedTask:
    """How one task's training went: steps taken, its profile, and the shared first task it reused, if any."""

    steps: int
    profile: ProfileRecord
    optimizer_state_mb: float
    reused: TrainedFirstTask | None


def train_unit(config: RunConfig, prepared: Prepared, method: Hooks, seed: int, sink: RecordSink,
               progress: Progress, *, checkpoints: CheckpointStore | None = None, shared: SharedStart | None = None,
               resume: bool = False, evaluate_unseen: bool = True) -> None:
    """Train one method with one seed through the whole stream, appending results to `sink` as they come.

    Args:
        checkpoints: where to save a checkpoint after every finished task (None: no checkpoints).
        shared: a per-run cache that lets the units of one seed share row 0 and, for methods whose first task is
            plain fine-tuning, the training of task 1 (see `clbench.training.sharing`).
        resume: continue from the unit's last checkpoint (or from scratch without one); a `resume` record first
            tells readers to drop this unit's rows after the checkpoint (`clbench.results.read_records`).
        evaluate_unseen: False: after row 0, each evaluation covers only the tasks trained so far, so the
            matrix above its diagonal (what forward transfer reads) stays empty; a tuning trial, whose objective
            and pruner read only the tasks seen, skips those forward passes.

    Raises:
        UnitFailed: the loss diverged or CUDA ran out of memory; the caller records the unit as failed.
    """
    config = config.for_method(method.name)  # the method's own lr and budget, if its section sets them
    device = resolve_device(config.device)
    try:
        _train_unit(config, prepared, method, seed, sink, progress, checkpoints, shared, resume, evaluate_unseen)
        return
    except torch.cuda.OutOfMemoryError:
        progress.end_task()
        message = _oom_message(config, device)
    # raised outside the except block so the traceback (and the unit's tensors it holds) is freed first
    if device.type == "cuda":
        torch.cuda.empty_cache()
    raise OutOfMemory(message)


def _oom_message(config: RunConfig, device: torch.device) -> str:
    used = ""
    if device.type == "cuda":
        gib = 1024 ** 3
        total = torch.cuda.get_device_properties(device).total_memory / gib
        used = (f" (peak {torch.cuda.max_memory_allocated(device) / gib:.2f} GiB allocated of {total:.2f} GiB on "
                f"{device})")
    return (f"CUDA out of memory with batch_size={config.batch_size}, eval_batch_size={config.eval_batch_size} and "
            f"max_length={config.max_length or 'the stream default'}{used}; lower --batch-size or --max-length, "
            "or use --set precision=bf16")


def _train_unit(config: RunConfig, prepared: Prepared, method: Hooks, seed: int, sink: RecordSink,
                progress: Progress, checkpoints: CheckpointStore | None, shared: SharedStart | None,
                resume: bool, evaluate_unseen: bool) -> None:
    unit = build_unit(config, prepared, method, seed, sink, progress, checkpoints, shared, evaluate_unseen)
    drift = DriftReferences(unit.model)
    first_row, logits = restore_or_row0(unit, seed, resume)
    if first_row:
        drift.restart(unit.model)
    try:
        for info in prepared.infos[first_row:]:
            logits = run_task(unit, info, logits, drift)
    except BaseException:
        if checkpoints is not None:
            checkpoints.wait(quiet=True)  # the last finished task's checkpoint is on disk before the run stops
        raise
    unit.records.append([unit.records.status("done", len(prepared.infos))])
    if checkpoints is not None:
        checkpoints.finish(method.name, seed)


def build_unit(config: RunConfig, prepared: Prepared, method: Hooks, seed: int, sink: RecordSink,
               progress: Progress, checkpoints: CheckpointStore | None, shared: SharedStart | None,
               evaluate_unseen: bool = True) -> Unit:
    """Stage 1: the seeded model, the run context, and the method's `setup` (which may wrap the model)."""
    device = resolve_device(config.device)
    generator = torch.Generator().manual_seed(seed)
    built = build_for(config, prepared, seed).to(device)
    if config.gradient_checkpointing:  # transformers 5 renamed it; older versions have only the first name
        enable = getattr(built, "activation_checkpointing_enable", None) or built.gradient_checkpointing_enable
        enable()  # type: ignore[operator]
    lr = config.lr if config.lr is not None else model_spec(config.model).default_lr
    ctx = RunContext(tasks=prepared.infos, num_labels=prepared.stream.num_labels, device=device, seed=seed,
                     generator=torch.Generator().manual_seed(seed + 1_000_003), buffer_size=config.buffer_size,
                     batch_size=config.batch_size, head=prepared.head, lr=lr, weight_decay=config.weight_decay,
                     active_classes=config.active_classes, kind=prepared.stream.kind, beta=config.dpo_beta)
    model = method.setup(built, ctx)
    forward = torch.compile(model) if config.compile else model  # shares the model's parameters
    return Unit(config, prepared, method, model, built, ctx, generator, UnitRecorder(method.name, seed, sink),
                progress, checkpoints, shared, forward, evaluate_unseen=evaluate_unseen)


def build_for(config: RunConfig, prepared: Prepared, seed: int) -> nn.Module:
    """The unit's model as built from `seed`: a classifier over the stream's classes, or a causal LM for a
    preference or generation stream."""
    if prepared.stream.kind in LM_KINDS:
        return build_causal_lm(config.model, seed, prepared.model_args)
    return build_model(config.model, prepared.stream.num_labels, seed, config.pooling, prepared.model_args)


def restore_or_row0(unit: Unit, seed: int, resume: bool) -> tuple[int, list[Tensor]]:
    """Stage 2: continue from the last checkpoint, or evaluate every task before training (row 0).

    Returns the number of tasks already finished and the logits of the latest evaluation.
    """
    name = unit.method.name
    checkpoint = unit.checkpoints.load(name, seed, unit.ctx.device) if unit.checkpoints is not None and resume \
        else None
    if resume:
        unit.records.append([unit.records.resume(checkpoint.row if checkpoint else -1)])
    if checkpoint is not None:
        unit.model.load_state_dict(checkpoint.model)
        unit.method.load_state_dict(checkpoint.method)
        set_rng_states(checkpoint.rng, unit.generator, unit.ctx.generator, unit.ctx.device)
        if unit.ctx.kind in LM_KINDS:  # rewards and the general-text KL are measured against the model before
            base = base_outputs(unit, seed)  # the stream: build it again
            unit.base = base if unit.ctx.kind == "preference" else None
        unit.progress.message(f"{unit.label}: resumed after task {checkpoint.row}")
        return checkpoint.row, checkpoint.logits
    cached = unit.shared.row0_logits(seed, unit.model) if unit.shared is not None else None
    logits = unit.evaluate(0, None, cached=cached)
    if unit.shared is not None and cached is None:
        unit.shared.add_row0(seed, unit.label, unit.model, logits)
    if unit.ctx.kind == "preference":
        unit.base = logits
    return 0, logits


def base_outputs(unit: Unit, seed: int) -> list[Tensor]:
    """Row 0's outputs, for a resumed unit of a causal LM: the model as built from `seed`, evaluated again (and
    its distributions on the general text)."""
    model = build_for(unit.config, unit.prepared, seed).to(unit.ctx.device)
    outputs = [predict(model, split, unit.ctx, unit.config.eval_batch_size, unit.config.precision)
               for split in unit.prepared.evaluated]
    if unit.prepared.general is not None:
        unit.general_base = token_anchors(model, unit.prepared.general, unit.config.eval_batch_size,
                                          unit.ctx.device, GENERAL_TOPK)
    del model
    return outputs


def run_task(unit: Unit, info: TaskInfo, logits_before: list[Tensor], drift: DriftReferences) -> list[Tensor]:
    """Stages 3–5 for one task: prepare, train, finish, then evaluate and record; returns the new logits."""
    method, model = unit.method, unit.model
    unit.progress.begin_task(unit.label, info.index, len(unit.prepared.infos), info.name)
    unit.ctx.task_index = info.index
    train_splits = unit.prepared.train
    with profile(unit.ctx.device) as rec_before:  # the method prepares: anchors, teacher outputs, its data
        method.before_task(info, model)
        data = method.train_data(info, train_splits[info.index], train_splits[:info.index])
        if unit.ctx.kind == "preference":  # DPO's reference: the model as this task starts, once per pair
            assert isinstance(data, PairSplit)
            data = data.with_reference(sequence_log_probs(model, data, unit.config.eval_batch_size, unit.ctx.device,
                                                          autocast(unit.ctx.device, unit.config.precision)))
    with kept_heap():  # around the optimiser's whole life, so the trim as it ends returns its state too
        trained = train_task(unit, info, data)
    with profile(unit.ctx.device) as rec_after:  # the method finishes: Fisher, importances, memories
        method.after_task(info, model, data)
    with profile(unit.ctx.device) as rec_eval:
        logits = unit.evaluate(info.index + 1, info.name, step=trained.steps)
        rec_eval.add(examples=sum(len(t) for t in logits))
    more_tasks = info.index + 1 < len(unit.prepared.infos)
    records = drift.records(unit.records, info, model, more_tasks)
    records += functional_records(unit.records, info, logits_before, logits, unit.prepared.infos, unit.ctx.kind)
    records += profile_records(unit, info, trained, {"train": trained.profile, "eval": rec_eval,
                                                      "method_before": rec_before, "method_after": rec_after})
    unit.records.append(records)
    checkpoints = unit.checkpoints
    if checkpoints is not None and (more_tasks or checkpoints.keep):
        checkpoints.save(method.name, unit.ctx.seed, info.index + 1, info.name, model, method.state_dict(),
                         rng_states(unit.generator, unit.ctx.generator, unit.ctx.device), logits)
    return logits


def train_task(unit: Unit, info: TaskInfo, data: AnySplit) -> TrainedTask:
    """Stage 4: train one task in one of three modes — reuse the shared first task, the method's external
    loop (reference adapters), or the runner's own step loop."""
    config, method, model = unit.config, unit.method, unit.model
    params = list(method.trainable_parameters(model))
    optimizer = method.configure_optimizer(info, params) or unit.ctx.adamw(params)
    plan = BatchPlan(data, config.batch_size, shuffle=True, generator=unit.generator)
    total = config.max_steps or config.epochs * len(plan)
    warmup = int(config.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lr_schedule, total=total, warmup=warmup))
    shared, seed = unit.shared, unit.ctx.seed
    key = None if shared is None or info.index else SharedStart.key(
        method, unit.built, model, data, unit.prepared.train[0], params, optimizer, unit.generator,
        config.eval_every, (total, warmup, config.grad_clip, config.batch_size), unit.prepared.general is not None)
    reused = shared.reusable(seed, key, model) if shared is not None else None
    if shared is not None and reused is None:
        shared.begin(seed, key, unit.label, model)
    if reused is not None:
        unit.progress.reused(unit.label, info.name, reused.producer, reused.steps)
    else:
        unit.progress.start_task(f"{unit.label} {info.name}", total)
    curves: list[tuple[int, list[Tensor]]] = []
    with profile(unit.ctx.device) as rec:
        if reused is not None:
            steps = SharedStart.apply(reused, model, unit.generator)
        elif method.external_loop:  # reference adapters (Avalanche) train classification streams only
            assert isinstance(data, EncodedSplit)
            settings = LoopSettings(optimizer, scheduler, total, config.epochs, config.batch_size, config.grad_clip,
                                    config.precision, unit.ctx.device, unit.generator)
            steps = fit_external(unit, info, data, settings, rec)
        else:
            steps = step_loop(unit, info, plan, params, optimizer, scheduler, total, rec, curves)
    unit.progress.end_task()
    for step, logits in reused.curves if reused is not None else ():  # the producer's learning curve, as this unit's
        unit.evaluate(info.index + 1, info.name, step=step, kind="curve", cached=logits)
    if shared is not None and reused is None and info.index == 0:
        shared.end(seed, unit.label, model, unit.generator, steps, optimizer_state_mb(optimizer), curves)
    state_mb = reused.optimizer_state_mb if reused is not None else optimizer_state_mb(optimizer)
    optimizer.state.clear()  # freed now, before the kept heap's trim, even where a method's loop keeps the optimiser
    return TrainedTask(steps, rec, state_mb, reused)


def step_loop(unit: Unit, info: TaskInfo, plan: BatchPlan, params: Sequence[nn.Parameter],
              optimizer: torch.optim.Optimizer, scheduler: Any, total: int, rec: ProfileRecord,
              curves: list[tuple[int, list[Tensor]]]) -> int:
    """The runner's own loop: `total` optimiser steps over shuffled epochs of `plan`; returns the steps taken.
    With `eval_every`, the tasks are evaluated every that many steps (all of them, or those trained so far
    without `unit.evaluate_unseen`), and (step, logits) appended to `curves`."""
    step = 0
    while step < total:
        for batch in plan:
            if step >= total:
                break
            loss = train_step(unit.model, unit.method, unit.ctx, batch.to(unit.ctx.device), params, optimizer,
                              unit.config, forward=unit.forward)
            scheduler.step()
            step += 1
            forwarded = unit.ctx.training_inputs(batch)["attention_mask"]  # generation: the targets' tokens only
            rec.add(examples=len(batch), tokens=int(forwarded.sum()), steps=1)
            unit.progress.step(step, loss)
            check_finite(unit, info, loss, step)
            every = unit.config.eval_every
            if every and step % every == 0 and step < total:  # the learning curve between task ends
                curves.append((step, unit.evaluate(info.index + 1, info.name, step=step, kind="curve")))
    return step


def fit_external(unit: Unit, info: TaskInfo, data: EncodedSplit, settings: LoopSettings, rec: ProfileRecord) -> int:
    """Train one task through the method's own `fit_task` loop; returns the steps taken."""
    result = unit.method.fit_task(info, unit.model, data, settings)
    rec.add(examples=result.examples, tokens=result.tokens, steps=result.steps)
    unit.progress.step(result.steps, result.last_loss)
    check_finite(unit, info, result.last_loss, result.steps)
    return result.steps


def check_finite(unit: Unit, info: TaskInfo, loss: float, step: int) -> None:
    if not math.isfinite(loss):
        unit.progress.end_task()
        raise Diverged(f"loss became {loss} at step {step} of task '{info.name}'; lower --lr or the method's "
                       "penalty weight")


def train_step(model: nn.Module, method: Hooks, ctx: RunContext, batch: Any, params: Sequence[nn.Parameter],
               optimizer: torch.optim.Optimizer, config: RunConfig, *, forward: Callable[..., Any] | None = None
               ) -> float:
    """One optimiser step: forward, the method's loss, backward, hooks, clipping, update.

    `forward` computes the outputs in place of `model` (e.g. `torch.compile(model)`, sharing its parameters).
    """
    model.train()
    extra = method.extra_inputs(batch)
    inputs = batch if extra is None else batch.concat(extra)
    with autocast(ctx.device, config.precision):
        outputs = (model if forward is None else forward)(**ctx.training_inputs(inputs))  # generation: targets
        task_loss = ctx.task_loss(outputs, batch)  # cross-entropy, DPO on preference pairs, or target NLL
        loss = method.loss(model, batch, outputs, task_loss)
    if not method.backward_in_loss:
        loss.backward()  # type: ignore[no-untyped-call]
    value = float(loss.detach())
    if not math.isfinite(value):
        optimizer.zero_grad(set_to_none=True)
        return value
    method.after_backward(model)
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    method.after_step(model)
    return value


def profile_records(unit: Unit, info: TaskInfo, trained: TrainedTask, phases: dict[str, ProfileRecord]
                    ) -> list[dict[str, Any]]:
    """Time, throughput and memory per phase of this task, parameter counts, and the sharing note."""
    row, rec = info.index + 1, unit.records
    out = [rec.record("profile", row, info.name, phase=phase, metric=metric, value=value)
           for phase, measured in phases.items() for metric, value in measured.as_dict().items()
           if value is not None and not isinstance(value, (dict, str))]
    trainable, total_params = parameter_counts(unit.model)
    for metric, value in (("trainable_params", trainable), ("total_params", total_params),
                          ("optimizer_state_mb", trained.optimizer_state_mb), ("lr", unit.ctx.lr)):
        out.append(rec.record("profile", row, info.name, phase="train", metric=metric, value=value))
    if trained.reused is not None:
        out.append(rec.record("note", row, info.name, metric="shared_first_task", value=trained.reused.producer))
    return out

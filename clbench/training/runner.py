"""The runner: the only training loop in clbench.

For each unit (method × seed) it builds the model, lets the method wrap it, evaluates every task before
training (row 0), then for each task trains with the method's hooks around the loop and evaluates every
task again (row i). Each finished evaluation, drift measurement and profile is appended to the run's
results at once. A unit that diverges (non-finite loss) is recorded as failed and the other units go on.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from clbench.config import RunConfig, differences, dump_yaml, from_saved, load_yaml, validate
from clbench.data import BatchPlan, EncodedSplit, Stream, TaskInfo
from clbench.data.streams import cache_dir, load_stream
from clbench.data.tokenize import encode_stream
from clbench.errors import ClbenchError, RunDirError
from clbench.evaluators.accuracy import (
    accuracy,
    class_incremental_predictions,
    macro_f1,
    task_aware_predictions,
)
from clbench.evaluators.drift import frobenius_drift_norms, functional_drift
from clbench.evaluators.profile import optimizer_state_mb, parameter_counts, profile
from clbench.models import build_model, load_tokenizer, model_spec, tokenizer_fingerprint
from clbench.ops import effective_weights
from clbench.protocol import Hooks, LoopSettings, RunContext
from clbench.registry import MethodRegistry
from clbench.results import RESULTS, RecordSink, RunDir, environment, read_records, unit_id
from clbench.training.checkpoint import CheckpointStore, rng_states, set_rng_states
from clbench.training.progress import Progress
from clbench.training.sharing import SharedStart


class UnitFailed(ClbenchError):
    """A unit cannot go on; it is recorded as failed and the other units go on."""


class Diverged(UnitFailed):
    """The loss became NaN or infinite; the unit stops and is recorded as failed."""


class OutOfMemory(UnitFailed):
    """CUDA ran out of memory inside a unit; the message names the batch size and the memory in use."""


@dataclass
class Prepared:
    """A stream resolved and tokenised once, shared by every unit of a run."""

    stream: Stream
    infos: tuple[TaskInfo, ...]
    splits: list[tuple[EncodedSplit, EncodedSplit]]  # (train, test) per task
    head: str


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def default_out(config: RunConfig) -> str:
    stream = Path(config.stream).stem
    model = Path(config.model).name
    return str(Path("runs") / f"{stream}-{model}-{time.strftime('%Y%m%d-%H%M%S')}")


def prepare(config: RunConfig) -> Prepared:
    """Load and tokenise the stream (tokenisation cached on disk per stream contents and tokenizer)."""
    stream = load_stream(config.stream, train_size=config.train_size, test_size=config.test_size,
                         max_length=config.max_length, data_dir=Path(config.data_dir) if config.data_dir else None)
    tokenizer = load_tokenizer(config.model)
    splits = encode_stream(stream, tokenizer, tokenizer_fingerprint(config.model), cache_dir())
    return Prepared(stream, stream.infos(), splits, config.head or stream.head)


def run(config: RunConfig, *, registry: MethodRegistry | None = None, progress: Progress | None = None,
        command: str | None = None, resume: bool = False) -> Path:
    """Validate, then run every unit of `config`; returns the run directory.

    With `resume`, `config.out` must hold an earlier run of the same configuration (differences that change
    results are refused): finished units are skipped and unfinished ones continue from their last checkpoint.
    Units run in this process (`executor: local`, sharing row 0 and the first task between identical units) or
    as one Ray task each (`executor: ray`, see `clbench.training.executors`).

    Raises ClbenchError for bad input before anything is trained or written.
    """
    registry = registry or MethodRegistry.default(config.plugins)
    method_configs = validate(config, registry)
    progress = progress or Progress()
    out = Path(config.out or default_out(config))
    config = replace(config, out=str(out))
    started, finished = check_out_dir(out, config, registry, resume)
    prepared = prepare(config)
    with RunDir(out) as run_dir:
        if resume:
            run_dir.repair_tail()
            progress.message(f"resuming {out}: {len(finished)} unit(s) finished, "
                             f"{len(started - finished)} to continue")
        else:
            run_dir.write_text("config.yaml", dump_yaml(config))
            env = environment(command)
            env["stream"] = {"name": prepared.stream.name, "version": prepared.stream.version,
                             "seed": prepared.stream.seed,
                             "tasks": [{"name": t.name, "classes": list(t.classes), "train": len(s[0]),
                                        "test": len(s[1])} for t, s in zip(prepared.stream.tasks, prepared.splits)]}
            run_dir.write_text("env.json", json.dumps(env, indent=1))
        progress.message(f"run directory: {out}")
        checkpoints = CheckpointStore(out, keep=config.keep_checkpoints)
        units = [(name, seed) for name, seed in config_units(config) if unit_id(name, seed) not in finished]
        for name, seed in config_units(config):
            if unit_id(name, seed) in finished:
                checkpoints.finish(name, seed)  # left over when a run stopped right after a unit finished
        if config.executor == "ray":
            from clbench.training.executors import run_ray

            run_ray(config, prepared, units, run_dir, progress, started)
        else:
            shared = SharedStart()
            for name, seed in units:
                method = registry.get(name)(method_configs[name])
                try:
                    train_unit(config, prepared, method, seed, run_dir, progress, checkpoints=checkpoints,
                               shared=shared, resume=unit_id(name, seed) in started)
                except UnitFailed as exc:
                    run_dir.append([failed_record(name, seed, exc)])
                    checkpoints.finish(name, seed)
                    progress.message(f"{unit_id(name, seed)} failed: {exc}")
    return out


def config_units(config: RunConfig) -> list[tuple[str, int]]:
    """(method, seed) of every unit, seeds outermost (units of one seed run together and share work)."""
    return [(name, seed) for seed in config.seeds for name in config.methods]


def failed_record(name: str, seed: int, exc: Exception) -> dict[str, Any]:
    return _record(name, seed, "unit", 0, None, metric="status", value="failed", error=str(exc))


def check_out_dir(out: Path, config: RunConfig, registry: MethodRegistry, resume: bool) -> tuple[set[str], set[str]]:
    """Check the run directory before anything is written; returns (units with records, finished units).

    A fresh run refuses a directory that already holds a run. A resumed one needs that run's config.yaml, a
    readable results file and no difference that changes results.
    """
    saved_file = out / "config.yaml"
    if not resume:
        if saved_file.exists() or (out / RESULTS).exists():
            raise RunDirError(f"run directory '{out}' already holds a run; pass --resume to continue it or choose "
                              "another --out")
        return set(), set()
    if not saved_file.is_file():
        raise RunDirError(f"nothing to resume in '{out}' (no config.yaml); run without --resume or fix --out")
    try:
        saved = from_saved(load_yaml(saved_file))
    except ClbenchError as exc:
        raise RunDirError(f"cannot resume from '{saved_file}': {exc}") from None
    changed = differences(saved, config, registry)
    if changed:
        shown = ", ".join(f"{k} ({_saved_value(saved, k)!r} -> {_saved_value(config, k)!r})" for k in changed[:6])
        raise RunDirError(f"--resume: '{out}' was run with a different configuration: {shown}; resume with the "
                          "saved settings (drop those flags) or choose another --out")
    records = read_records(out)
    started = {r["unit"] for r in records}
    finished = {r["unit"] for r in records if r["type"] == "unit" and r.get("value") in ("done", "failed")}
    return started, finished


def _saved_value(config: RunConfig, key: str) -> Any:
    if "." in key:
        method, _, name = key.partition(".")
        return config.method_options.get(method, {}).get(name, "default")
    value = getattr(config, key)
    return list(value) if isinstance(value, tuple) else value


def _record(method: str, seed: int, kind: str, row: int, task: str | None, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "unit": unit_id(method, seed), "method": method, "seed": seed, "row": row,
            "task": task, **fields}


def lr_schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over `warmup` steps, then linear decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def train_unit(config: RunConfig, prepared: Prepared, method: Hooks, seed: int, run_dir: RecordSink,
               progress: Progress, *, checkpoints: CheckpointStore | None = None, shared: SharedStart | None = None,
               resume: bool = False) -> None:
    """Train one method with one seed through the whole stream, appending results as they come.

    Args:
        checkpoints: where to save a checkpoint after every finished task (None: no checkpoints).
        shared: a per-run cache that lets the units of one seed share row 0 and, for methods whose first task is
            plain fine-tuning, the training of task 1 (see `clbench.training.sharing`).
        resume: continue from the unit's last checkpoint (or from scratch without one); a `resume` record first
            tells readers to drop this unit's rows after the checkpoint (`clbench.results.read_records`).

    Raises:
        UnitFailed: the loss diverged or CUDA ran out of memory; the caller records the unit as failed.
    """
    device = resolve_device(config.device)
    try:
        _train_unit(config, prepared, method, seed, run_dir, progress, checkpoints, shared, resume)
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


def _train_unit(config: RunConfig, prepared: Prepared, method: Hooks, seed: int, run_dir: RecordSink,
                progress: Progress, checkpoints: CheckpointStore | None, shared: SharedStart | None,
                resume: bool) -> None:
    name = method.name
    device = resolve_device(config.device)
    generator = torch.Generator().manual_seed(seed)
    model = build_model(config.model, prepared.stream.num_labels, seed).to(device)
    built = model
    lr = config.lr if config.lr is not None else model_spec(config.model).default_lr
    ctx = RunContext(tasks=prepared.infos, num_labels=prepared.stream.num_labels, device=device, seed=seed,
                     generator=torch.Generator().manual_seed(seed + 1_000_003), buffer_size=config.buffer_size,
                     batch_size=config.batch_size, head=prepared.head, lr=lr, weight_decay=config.weight_decay)
    model = method.setup(model, ctx)
    weights_start = effective_weights(model)
    checkpoint = checkpoints.load(name, seed, device) if checkpoints is not None and resume else None
    first_row = checkpoint.row if checkpoint is not None else 0
    if resume:
        run_dir.append([_record(name, seed, "resume", first_row if checkpoint else -1, None,
                                metric="resume_from_row", value=first_row if checkpoint else -1)])
    if checkpoint is not None:
        model.load_state_dict(checkpoint.model)
        method.load_state_dict(checkpoint.method)
        set_rng_states(checkpoint.rng, generator, ctx.generator, device)
        logits_prev = checkpoint.logits
        progress.message(f"{unit_id(name, seed)}: resumed after task {first_row}")
    else:
        cached = shared.row0_logits(seed, model) if shared is not None else None
        logits_prev = evaluate_all(config, prepared, model, ctx, name, seed, 0, None, run_dir, cached=cached)
        if shared is not None and cached is None:
            shared.add_row0(seed, model, logits_prev)
    train_splits = [s[0] for s in prepared.splits]
    for info in prepared.infos[first_row:]:
        progress.message(f"{unit_id(name, seed)}: task {info.index + 1}/{len(prepared.infos)} '{info.name}'")
        weights_before = effective_weights(model)
        with profile(device) as rec_method_before:
            method.before_task(info, model)
            data = method.train_data(info, train_splits[info.index], train_splits[:info.index])
        params = list(method.trainable_parameters(model))
        optimizer = method.configure_optimizer(info, params) or ctx.adamw(params)
        plan = BatchPlan(data, config.batch_size, shuffle=True, generator=generator)
        total = config.max_steps or config.epochs * len(plan)
        warmup = int(config.warmup_ratio * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lr_schedule, total=total, warmup=warmup))
        share_key = None if shared is None or info.index else SharedStart.key(
            method, built, model, data, train_splits[0], params, optimizer, generator, config.eval_every)
        reused = shared.reusable(seed, share_key, model) if shared is not None else None
        if shared is not None and reused is None:
            shared.begin(seed, share_key, unit_id(name, seed), model)
        progress.start_task(f"{unit_id(name, seed)} {info.name}", total)
        step = 0
        with profile(device) as rec_train:
            if reused is not None:  # task 1 was trained once for every method whose first task is fine-tuning
                step = SharedStart.apply(reused, model, generator)
            elif method.external_loop:  # reference adapters (avalanche:*) run their library's loop on this task
                step = fit_external(method, info, model, data, LoopSettings(
                    optimizer, scheduler, total, config.epochs, config.batch_size, config.grad_clip,
                    config.precision, device, generator), rec_train, progress)
            while reused is None and step < total and not method.external_loop:
                for batch in plan:
                    if step >= total:
                        break
                    loss = train_step(model, method, ctx, batch.to(device), params, optimizer, config)
                    scheduler.step()
                    step += 1
                    rec_train.add(examples=len(batch), tokens=batch.num_tokens, steps=1)
                    progress.step(step, loss)
                    if not math.isfinite(loss):
                        progress.end_task()
                        raise Diverged(f"loss became {loss} at step {step} of task '{info.name}'; "
                                       "lower --lr or the method's penalty weight")
                    if config.eval_every and step % config.eval_every == 0 and step < total:
                        evaluate_all(config, prepared, model, ctx, name, seed, info.index + 1, info.name, run_dir,
                                     step=step, kind="curve")
        progress.end_task()
        if shared is not None and reused is None and info.index == 0:
            shared.end(seed, unit_id(name, seed), model, generator, step, optimizer_state_mb(optimizer))
        with profile(device) as rec_method_after:
            method.after_task(info, model, data)
        with profile(device) as rec_eval:
            logits_now = evaluate_all(config, prepared, model, ctx, name, seed, info.index + 1, info.name,
                                      run_dir, step=step)
            rec_eval.add(examples=sum(len(s[1]) for s in prepared.splits))
        records = drift_records(name, seed, info, weights_before, weights_start, effective_weights(model))
        records += functional_records(name, seed, info, logits_prev, logits_now, prepared.infos)
        trainable, total_params = parameter_counts(model)
        for phase, rec in (("train", rec_train), ("eval", rec_eval), ("method_before", rec_method_before),
                           ("method_after", rec_method_after)):
            for metric, value in rec.as_dict().items():
                if value is not None and not isinstance(value, (dict, str)):
                    records.append(_record(name, seed, "profile", info.index + 1, info.name, phase=phase,
                                           metric=metric, value=value))
        for metric, value in (("trainable_params", trainable), ("total_params", total_params),
                              ("optimizer_state_mb", reused.optimizer_state_mb if reused is not None
                               else optimizer_state_mb(optimizer)), ("lr", lr)):
            records.append(_record(name, seed, "profile", info.index + 1, info.name, phase="train", metric=metric,
                                   value=value))
        if reused is not None:
            records.append(_record(name, seed, "note", info.index + 1, info.name, metric="shared_first_task",
                                   value=reused.producer))
        run_dir.append(records)
        logits_prev = logits_now
        if checkpoints is not None and (info.index + 1 < len(prepared.infos) or checkpoints.keep):
            checkpoints.save(name, seed, info.index + 1, info.name, model, method.state_dict(),
                             rng_states(generator, ctx.generator, device), logits_now)
    run_dir.append([_record(name, seed, "unit", len(prepared.infos), None, metric="status", value="done")])
    if checkpoints is not None:
        checkpoints.finish(name, seed)


def fit_external(method: Hooks, info: TaskInfo, model: nn.Module, data: EncodedSplit, settings: LoopSettings,
                 rec_train: Any, progress: Progress) -> int:
    """Train one task through the method's own `fit_task` loop; returns the steps taken."""
    result = method.fit_task(info, model, data, settings)
    rec_train.add(examples=result.examples, tokens=result.tokens, steps=result.steps)
    progress.step(result.steps, result.last_loss)
    if not math.isfinite(result.last_loss):
        progress.end_task()
        raise Diverged(f"loss became {result.last_loss} at step {result.steps} of task '{info.name}'; "
                       "lower --lr or the method's penalty weight")
    return result.steps


def train_step(model: nn.Module, method: Hooks, ctx: RunContext, batch: Any, params: Sequence[nn.Parameter],
               optimizer: torch.optim.Optimizer, config: RunConfig) -> float:
    """One optimiser step: forward, the method's loss, backward, hooks, clipping, update."""
    model.train()
    autocast = _autocast(ctx.device, config.precision)
    extra = method.extra_inputs(batch)
    inputs = batch if extra is None else batch.concat(extra)
    with autocast:
        outputs = model(**inputs.model_inputs())
        logits = ctx.logits(outputs.logits[:len(batch)], batch.task_ids)  # [batch, num_labels]
        task_loss = nn.functional.cross_entropy(logits.float(), batch.labels)
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


def _autocast(device: torch.device, precision: str) -> Any:
    if device.type == "cuda" and precision in ("bf16", "fp16"):
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return torch.autocast(device.type, enabled=False)


def predict(model: nn.Module, split: EncodedSplit, ctx: RunContext, batch_size: int,
            precision: str = "fp32") -> Tensor:
    """Raw logits [n, num_labels] for every example of `split`, in the split's order."""
    model.eval()
    logits = torch.empty(len(split), ctx.num_labels)
    with torch.inference_mode(), _autocast(ctx.device, precision):
        plan = BatchPlan(split, batch_size, shuffle=False)
        for index in plan.indices():
            batch = split.batch(index).to(ctx.device)
            logits[index] = model(**batch.model_inputs()).logits.float().cpu()
    return logits


def evaluate_all(config: RunConfig, prepared: Prepared, model: nn.Module, ctx: RunContext, method: str,
                 seed: int, row: int, task: str | None, run_dir: RecordSink, step: int | None = None,
                 kind: str = "accuracy", cached: list[Tensor] | None = None) -> list[Tensor]:
    """Evaluate every task's test split; append class-incremental and task-aware accuracy and macro-F1.

    `cached` (logits, one [n_test, num_labels] tensor per task) skips the forward passes, e.g. for row 0 of a model
    identical to one already evaluated.
    """
    records = []
    all_logits = []
    for info, (_, test) in zip(prepared.infos, prepared.splits):
        logits = (cached[info.index] if cached is not None
                  else predict(model, test, ctx, config.eval_batch_size, config.precision))
        all_logits.append(logits)
        target = test.labels
        cil = class_incremental_predictions(logits)
        til = task_aware_predictions(logits, info.label_offset, info.num_classes)
        labels = list(info.label_range)
        for metric, value in (("acc_cil", accuracy(cil, target)), ("acc_til", accuracy(til, target)),
                              ("f1_cil", macro_f1(cil, target, labels)), ("f1_til", macro_f1(til, target, labels))):
            records.append(_record(method, seed, kind, row, task, eval_task=info.name, eval_index=info.index,
                                   step=step, metric=metric, value=value))
    run_dir.append(records)
    return all_logits


def drift_records(method: str, seed: int, info: TaskInfo, before: dict[str, Tensor], start: dict[str, Tensor],
                  after: dict[str, Tensor]) -> list[dict[str, Any]]:
    """Fractional Frobenius change of the effective weights over this task and since the start."""
    records = []
    for metric, reference in (("frobenius_task", before), ("frobenius_total", start)):
        per_tensor, overall, norms = frobenius_drift_norms(reference, after, strict=False)
        records.append(_record(method, seed, "drift", info.index + 1, info.name, param="__overall__", metric=metric,
                               value=overall))
        records += [_record(method, seed, "drift", info.index + 1, info.name, param=p, metric=metric, value=v,
                            norm_before=norms[p][0], norm_change=norms[p][1])
                    for p, v in per_tensor.items()]
    return records


def functional_records(method: str, seed: int, info: TaskInfo, before: list[Tensor], after: list[Tensor],
                       infos: Sequence[TaskInfo]) -> list[dict[str, Any]]:
    """Distance in function space on previous tasks' test inputs, before vs after training `info`."""
    records = []
    for old in infos[:info.index]:
        drift = functional_drift(before[old.index], after[old.index])
        for metric, value in drift._asdict().items():
            records.append(_record(method, seed, "functional", info.index + 1, info.name, eval_task=old.name,
                                   eval_index=old.index, metric=metric, value=value))
    return records


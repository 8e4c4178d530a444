"""Experiment trackers as record sinks: `--log tensorboard,wandb,mlflow` mirrors a run's records into them.

`results.jsonl` stays the record of truth; a tracker receives every record batch after it is on disk (the run
directory's listeners, `clbench.results.RunDir`) and shows it in the tool people already watch. Each unit
(method × seed) becomes one tracked run, named after the unit, grouped by the run directory, with the run's
resolved configuration, the method's options and the seed as its parameters. The step axis is the accuracy
matrix's row: 0 before any training, i after training task i.

Scalars per row: ``acc_cil/<task>``, ``acc_til/<task>``, ``f1_cil/<task>``, ``f1_til/<task>`` and
``acc_cil/mean_seen`` (mean over the tasks trained so far); ``drift/frobenius_task`` and
``drift/frobenius_total``; ``functional/<distance>/<earlier task>``; on a preference stream with general text,
``general/perplexity`` and ``general/kl_base`` (from the base model); ``profile/<phase>/<metric>`` (time,
throughput, memory). When a unit finishes: ``final/acc_cil``, ``final/bwt_cil``, ``final/fwt_cil``,
``final/forgetting_all_cil`` (over every earlier task: a live tracker cannot yet tell which tasks were learned,
so the report's ``forgetting_cil`` over learned tasks only is in ``summary.csv``) and their task-aware twins
(docs/metrics.md), and its status.

Where they write:

- ``tensorboard`` (`pip install 'clbench[tensorboard]'`): event files under ``DIR/tensorboard/<method>/seed<k>/``;
  view with ``tensorboard --logdir DIR/tensorboard``.
- ``wandb`` (`pip install 'clbench[wandb]'`): offline runs under ``DIR/wandb/`` (no account needed), project
  ``$WANDB_PROJECT`` or ``clbench``; upload later with ``wandb sync DIR/wandb/offline-run-*``, or set
  ``WANDB_MODE=online`` to stream them live.
- ``mlflow`` (`pip install 'clbench[mlflow]'`): a local file store ``DIR/mlruns`` (view with ``mlflow ui
  --backend-store-uri DIR/mlruns``), one experiment per run directory; ``$MLFLOW_TRACKING_URI`` sends it to
  your own server or database instead.

A tracker that fails (a full disk, a server gone) is dropped with one warning line; the run goes on, since its
results are already in ``results.jsonl``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from clbench.errors import suggest

# name -> (module to import, extra to install)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}


def tracker_errors(names: Sequence[str]) -> list[str]:
    """Problems with `--log` names: unknown trackers and trackers whose package is not installed."""
    errors = []
    for name in names:
        if name not in TRACKERS:
            errors.append(f"unknown tracker '{name}' in --log{suggest(name, TRACKERS)}")
        elif importlib.util.find_spec(TRACKERS[name][0]) is None:
            errors.append(f"--log {name} needs the package '{TRACKERS[name][0]}', which is not installed; "
                          f"install the extra: pip install 'clbench[{TRACKERS[name][1]}]'")
    return errors


def metric_key(*parts: Any) -> str:
    """A scalar name every tracker accepts: parts joined by '/', other characters than [A-Za-z0-9_.- ] -> '_'."""
    return "/".join(re.sub(r"[^A-Za-z0-9_.\- ]", "_", str(p)) for p in parts)


class Backend(Protocol):
    """One tracking tool: a tracked run per unit, scalars at a step, the unit's final scores."""

    def start_unit(self, unit: str, method: str, seed: int, params: Mapping[str, Any]) -> None: ...

    def log(self, unit: str, scalars: Mapping[str, float], step: int) -> None: ...

    def finish_unit(self, unit: str, scores: Mapping[str, float], status: str) -> None: ...

    def close(self) -> None: ...


class TensorBoardBackend:
    """Event files per unit, written by torch's SummaryWriter."""

    def __init__(self, out: Path):
        self.root = out / "tensorboard"
        self.writers: dict[str, Any] = {}

    def start_unit(self, unit: str, method: str, seed: int, params: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        writer = self.writers[unit] = SummaryWriter(log_dir=str(self.root / method / f"seed{seed}"))
        writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in params.items()))  # a code block

    def log(self, unit: str, scalars: Mapping[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writers[unit].add_scalar(key, value, step)

    def finish_unit(self, unit: str, scores: Mapping[str, float], status: str) -> None:
        writer = self.writers.pop(unit)
        for key, value in scores.items():
            if key != "tasks":
                writer.add_scalar(f"final/{key}", value, int(scores["tasks"]))
        writer.add_text("status", status)
        writer.close()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


class WandbBackend:
    """One W&B run per unit, offline in the run directory unless WANDB_MODE says otherwise."""

    def __init__(self, out: Path):
        self.out = out
        self.runs: dict[str, Any] = {}

    def start_unit(self, unit: str, method: str, seed: int, params: Mapping[str, Any]) -> None:
        import wandb

        self.runs[unit] = wandb.init(
            mode=os.environ.get("WANDB_MODE", "offline"), dir=str(self.out),  # type: ignore[arg-type]
            project=os.environ.get("WANDB_PROJECT", "clbench"), group=self.out.resolve().name, name=unit,
            job_type=method, config=dict(params), reinit="create_new",
            settings=wandb.Settings(console="off", silent=True))

    def log(self, unit: str, scalars: Mapping[str, float], step: int) -> None:
        self.runs[unit].log(dict(scalars), step=step)

    def finish_unit(self, unit: str, scores: Mapping[str, float], status: str) -> None:
        run = self.runs.pop(unit)
        run.summary.update({**{f"final/{k}": v for k, v in scores.items() if k != "tasks"}, "status": status})
        run.finish(exit_code=0 if status == "done" else 1)

    def close(self) -> None:
        for run in self.runs.values():
            run.finish(exit_code=1)
        self.runs.clear()


class MlflowBackend:
    """One MLflow run per unit in an experiment named after the run directory."""

    def __init__(self, out: Path):
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # MLflow 3 asks file stores to opt in; a local store in the run directory is the point here
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (out / "mlruns").resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or out.resolve().name
        experiment = self.client.get_experiment_by_name(name)
        self.experiment = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.runs: dict[str, str] = {}

    def start_unit(self, unit: str, method: str, seed: int, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment, run_name=unit, tags={"clbench.method": method,
                                                                           "clbench.seed": str(seed)})
        self.runs[unit] = run.info.run_id
        self.client.log_batch(run.info.run_id, params=[Param(metric_key(k)[:250], str(v)[:500])
                                                        for k, v in params.items()])

    def log(self, unit: str, scalars: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.runs[unit], metrics=[Metric(k, float(v), now, step) for k, v in scalars.items()])

    def finish_unit(self, unit: str, scores: Mapping[str, float], status: str) -> None:
        run_id = self.runs.pop(unit)
        if scores:
            self.log_final(run_id, scores)
        self.client.set_terminated(run_id, "FINISHED" if status == "done" else "FAILED")

    def log_final(self, run_id: str, scores: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(scores.get("tasks", 0))
        self.client.log_batch(run_id, metrics=[Metric(f"final/{k}", float(v), now, step)
                                               for k, v in scores.items() if k != "tasks"])

    def close(self) -> None:
        for run_id in self.runs.values():
            self.client.set_terminated(run_id, "KILLED")
        self.runs.clear()


BACKENDS: dict[str, Callable[[Path], Backend]] = {"tensorboard": TensorBoardBackend, "wandb": WandbBackend,
                                                  "mlflow": MlflowBackend}


def unit_scores(accuracy: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """ACC, BWT, FWT and forgetting (class-incremental and task-aware) from one unit's accuracy records, plus
    `tasks`; empty when its matrix is incomplete."""
    from clbench.evaluators.accuracy import (
        accuracy_matrix,
        average_accuracy,
        backward_transfer,
        forgetting,
        forward_transfer,
    )

    by_metric: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in accuracy:
        by_metric[str(r["metric"])].append(r)
    scores: dict[str, float] = {}
    for metric, suffix in (("acc_cil", "cil"), ("acc_til", "til")):
        rows = by_metric.get(metric, [])
        if not rows:
            continue
        tasks = max(int(r["eval_index"]) for r in rows) + 1
        R = accuracy_matrix(rows, num_tasks=tasks, row_key="row", col_key="eval_index")
        if R.shape != (tasks + 1, tasks) or math.isnan(float(R.sum())):
            return {}
        scores.update({f"acc_{suffix}": average_accuracy(R), f"bwt_{suffix}": backward_transfer(R),
                       f"fwt_{suffix}": forward_transfer(R), f"forgetting_all_{suffix}": forgetting(R),
                       "tasks": float(tasks)})
    return {k: float(v) for k, v in scores.items()}


def scalars_of(records: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, float]]:
    """One unit's records -> step (row) -> scalar name -> value (the names in the module docstring)."""
    out: dict[int, dict[str, float]] = defaultdict(dict)
    seen: dict[tuple[int, str], list[float]] = defaultdict(list)
    for r in records:
        kind, row, value = r.get("type"), int(r.get("row", 0)), r.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        if kind == "accuracy":
            out[row][metric_key(r["metric"], r["eval_task"])] = float(value)
            if r["metric"] == "acc_cil" and int(r["eval_index"]) < row:
                seen[(row, "acc_cil")].append(float(value))
        elif kind == "drift" and r.get("param") == "__overall__":
            out[row][metric_key("drift", r["metric"])] = float(value)
        elif kind == "functional":
            out[row][metric_key("functional", r["metric"], r["eval_task"])] = float(value)
        elif kind == "general":
            out[row][metric_key("general", r["metric"])] = float(value)
        elif kind == "profile":
            out[row][metric_key("profile", r.get("phase", ""), r["metric"])] = float(value)
    for (row, metric), values in seen.items():
        out[row][f"{metric}/mean_seen"] = sum(values) / len(values)
    return dict(out)


class Trackers:
    """The run directory's listener that feeds every `--log` backend (`clbench.results.RecordSink`)."""

    def __init__(self, backends: Mapping[str, Backend], params: Mapping[str, Any], warn: Callable[[str], None]):
        self.backends = dict(backends)
        self.params = dict(params)
        self.warn = warn
        self.started: set[str] = set()
        self.accuracy: dict[str, list[Mapping[str, Any]]] = defaultdict(list)

    def _each(self, call: str, *args: Any) -> None:
        """`backend.call(*args)` on every backend still running."""
        for name, backend in list(self.backends.items()):
            try:
                getattr(backend, call)(*args)
            except Exception as exc:  # noqa: BLE001 -- a tracker must never cost the run; results are on disk
                del self.backends[name]
                message = " ".join(str(exc).split())[:200]
                self.warn(f"clbench: warning: --log {name} stopped ({type(exc).__name__}: {message}); the run goes "
                          "on and its results are in results.jsonl")

    def _params(self, method: str, seed: int) -> dict[str, Any]:
        options = (self.params.get("method_options") or {}).get(method, {}) or {}
        flat = {k: v for k, v in self.params.items() if k not in ("method_options", "methods", "seeds")}
        flat.update({f"{method.partition('@')[0]}.{k}": v for k, v in options.items()})
        flat.update(method=method, seed=seed)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items()}

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        by_unit: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for r in records:
            by_unit[str(r["unit"])].append(r)
        for unit, batch in by_unit.items():
            method, seed = str(batch[0]["method"]), int(batch[0]["seed"])
            if unit not in self.started:
                self.started.add(unit)
                params = self._params(method, seed)
                self._each("start_unit", unit, method, seed, params)
            self.accuracy[unit] += [r for r in batch if r.get("type") == "accuracy"]
            for step, scalars in sorted(scalars_of(batch).items()):
                self._each("log", unit, scalars, step)
            for status in (r for r in batch if r.get("type") == "unit" and r.get("metric") == "status"):
                scores = unit_scores(self.accuracy.pop(unit, [])) if status["value"] == "done" else {}
                self.started.discard(unit)
                self._each("finish_unit", unit, scores, str(status["value"]))

    def close(self) -> None:
        self._each("close")


def open_trackers(names: Sequence[str], out: Path, params: Mapping[str, Any],
                  warn: Callable[[str], None]) -> Trackers:
    """The backends named by `--log`, writing into run directory `out`; `params` is the resolved config."""
    backends: dict[str, Backend] = {}
    for name in dict.fromkeys(names):
        try:
            backends[name] = BACKENDS[name](out)
        except Exception as exc:  # noqa: BLE001 -- e.g. an unreachable MLFLOW_TRACKING_URI: warn, train anyway
            warn(f"clbench: warning: --log {name} could not start ({type(exc).__name__}: "
                 f"{' '.join(str(exc).split())[:200]}); the run goes on without it")
    return Trackers(backends, params, warn)

"""A run directory read back for reporting: records, config and environment, and the scores of each unit.

Inputs are ``results.jsonl`` (the record schema is in `clbench.results`), ``config.yaml`` and ``env.json``;
nothing is re-run. Units without a complete accuracy matrix (still running, stopped or failed) get no scores.

Scores per unit (one method × one seed), from its accuracy matrix R (`clbench.evaluators.accuracy` defines R
and the formulas of ACC, BWT, FWT and forgetting), once on class-incremental accuracy (``acc_cil``) and once
on task-aware accuracy (``acc_til``):

- learning accuracy R[t, t] per task (plasticity) and whether the task was *learned*: its accuracy's 95%
  Wilson interval on the evaluated split lies above the task's chance level (the share of its largest class,
  which a constant prediction reaches; 1/classes for runs that did not record it);
- forgetting over the learned earlier tasks only (``forgetting_*``; over all of them: ``forgetting_all_*``),
  so a unit is never credited for not forgetting what it never learned; old-task accuracy after the last
  task (``retained_*``, stability).

Besides them:

- weight drift: since the start (``frobenius_total`` after the last task) and over the last task alone
  (``frobenius_task``), the latter also per part: embeddings, encoder layers, head (pooler, classifier);
- functional drift: mean Bhattacharyya distance over every (task i, earlier learned task j < i) record;
- optimiser steps: Σ over tasks (joint takes more on later tasks: it trains on their union);
- train time: Σ over tasks of the wall time of the ``train``, ``method_before`` and ``method_after`` phases.
  A unit that reused another unit's first-task training (a ``note`` record ``shared_first_task`` naming the
  producer) is charged the producer's task-1 ``train`` time and peak memory, so the cost is what the method
  would take alone;
- peak memory: max ``peak_cuda_mb`` over all phases and tasks, or on a CPU run the max ``peak_rss_mb``;
- trainable parameters: the ``trainable_params`` profile record of the last task;
- on a preference stream, the mean reward margin after the last task per task (``reward_margin_<t>``) and
  over tasks (``reward_margin``), from the ``reward_margin`` records (`clbench.preference`), and, where the
  stream has held-out general text, the perplexity on it and the KL from the base model there after the last
  task (``general_perplexity``, ``general_kl_base``; every row's in `general_ability`). A preference run has
  no task-aware scores (``acc_til`` repeats ``acc_cil`` there) and no functional drift.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clbench.errors import RunDirError
from clbench.evaluators.accuracy import (
    accuracy_matrix,
    average_accuracy,
    backward_transfer,
    forgetting,
    forgetting_per_task,
    forward_transfer,
)
from clbench.evaluators.drift import layer_key
from clbench.evaluators.stats import wilson_interval
from clbench.reporting.scenario import Scenario, scenario
from clbench.results import ARCHIVED, RESULTS, read_records
from clbench.yamlio import read_yaml

TRAIN_PHASES = ("train", "method_before", "method_after")
ROLES_BY_NAME = {"joint": "upper-bound", "single-task": "reference"}  # runs written before env.json said so



@dataclass
class RunData:
    """One run directory read back: its records, resolved config and environment.

    Attributes:
        path: The run directory.
        name: Its folder name, used as the run's label in comparisons.
        records: Every complete record of ``results.jsonl``.
        config: ``config.yaml`` as a dict (empty if missing).
        env: ``env.json`` as a dict (empty if missing).
        methods: Methods in config order, then any others found in the records.
        unit_method: unit -> method.
        status: unit -> "done", "failed" or "incomplete".
        errors: unit -> error message of a failed unit.
    """

    path: Path
    name: str
    records: list[dict[str, Any]]
    config: dict[str, Any]
    env: dict[str, Any]
    methods: list[str] = field(default_factory=list)
    unit_method: dict[str, str] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def role(self, method: str) -> str:
        """"method", "upper-bound" (joint) or "reference" (single-task): env.json's, else from the name."""
        recorded = (self.env.get("methods") or {}).get(method, {}).get("role")
        if recorded:
            return str(recorded)
        return ROLES_BY_NAME.get(method.split("@")[0], "method")

    @property
    def test_sizes(self) -> list[int]:
        """Examples in each task's evaluated split (env.json; 0 when not recorded)."""
        return [int(t.get("val" if self.eval_split == "val" else "test") or 0)
                for t in self.env.get("stream", {}).get("tasks", [])] or [0] * len(self.tasks)

    @property
    def eval_split(self) -> str:
        return str(self.env.get("stream", {}).get("eval_split", "test"))

    def chance(self, task: int) -> tuple[float, bool]:
        """(chance level of task `task`, measured): the share of its evaluated split's largest class, which a
        constant prediction reaches; 1/classes when env.json did not record it (measured = False)."""
        tasks = self.env.get("stream", {}).get("tasks", [])
        info = tasks[task] if task < len(tasks) else {}
        if info.get("majority") is not None:
            return float(info["majority"]), True
        return 1.0 / max(1, len(info.get("classes") or [0, 0])), False

    @property
    def tasks(self) -> list[str]:
        """Task names in stream order (from env.json, else from the accuracy records)."""
        tasks = [t["name"] for t in self.env.get("stream", {}).get("tasks", [])]
        if tasks:
            return tasks
        seen = {r["eval_index"]: r["eval_task"] for r in self.records if r["type"] == "accuracy"}
        return [seen[i] for i in sorted(seen)]

    @property
    def kind(self) -> str:
        """The stream's kind, "classification" or "preference" (runs that did not record it: classification)."""
        return str(self.env.get("stream", {}).get("kind") or "classification")

    @property
    def scenario(self) -> Scenario:
        """What the report calls this run's scores and which sections it has (`clbench.reporting.scenario`)."""
        return scenario(self.kind)

    @property
    def on_cuda(self) -> bool:
        """Whether any profile record measured CUDA memory."""
        return any(r["type"] == "profile" and r["metric"] == "peak_cuda_mb" for r in self.records)

    @property
    def stream(self) -> str:
        """``name vVERSION`` of the stream, as recorded in env.json."""
        stream = self.env.get("stream", {})
        return f"{stream.get('name', self.config.get('stream', '?'))} v{stream.get('version', '?')}"


def load_run(run_dir: Path) -> RunData:
    """Read a run directory.

    Args:
        run_dir: A directory written by `clbench.training.run.run`.

    Returns:
        The run's records, config and environment.

    Raises:
        RunDirError: If the directory has no results file, or a file of it cannot be read.
    """
    run_dir = Path(run_dir)
    if not (run_dir / RESULTS).exists() and not (run_dir / ARCHIVED).is_file():
        raise RunDirError(f"'{run_dir}' holds no {RESULTS}; pass a run directory written by `clbench run`")
    records = read_records(run_dir)
    run = RunData(run_dir, run_dir.resolve().name, records, _read_mapping(run_dir / "config.yaml"),
                  _read_mapping(run_dir / "env.json"))
    for r in records:
        run.unit_method.setdefault(r["unit"], r["method"])
        run.status.setdefault(r["unit"], "incomplete")
        if r["type"] == "unit" and r["metric"] == "status":
            run.status[r["unit"]] = str(r["value"])
            if r.get("error"):
                run.errors[r["unit"]] = str(r["error"])
    ordered = [m for m in run.config.get("methods", []) if m in run.unit_method.values()]
    run.methods = ordered + sorted(set(run.unit_method.values()) - set(ordered))
    return run


def _read_mapping(file: Path) -> dict[str, Any]:
    """config.yaml or env.json of a run as a dict ({} when absent), or RunDirError naming the file."""
    if not file.exists():
        return {}
    fix = "restore it (or delete it: the report then leaves out what it held)"
    if file.suffix == ".json":
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            raise RunDirError(f"'{file}' is not readable JSON ({type(exc).__name__}); {fix}") from None
    else:
        data = read_yaml(file, "config file", RunDirError)
    if data is not None and not isinstance(data, dict):
        raise RunDirError(f"'{file}' must be a mapping, not a {type(data).__name__}; {fix}")
    return data or {}


def accuracy_matrices(records: list[dict[str, Any]], metric: str = "acc_cil",
                      num_tasks: int | None = None) -> dict[str, np.ndarray]:
    """unit -> R (`clbench.evaluators.accuracy_matrix`) of `metric`; missing cells are NaN."""
    by_unit: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["type"] == "accuracy" and r["metric"] == metric:
            by_unit[r["unit"]].append(r)
    return {unit: accuracy_matrix(rows, num_tasks=num_tasks, row_key="row", col_key="eval_index")
            for unit, rows in by_unit.items()}


def complete_matrices(run: RunData, metric: str) -> dict[str, np.ndarray]:
    """unit -> accuracy matrix for units that finished with every cell present."""
    return {unit: R for unit, R in accuracy_matrices(run.records, metric, len(run.tasks)).items()
            if run.status.get(unit) == "done" and R.shape == (len(run.tasks) + 1, len(run.tasks))
            and not np.isnan(R).any()}


def learned(accuracy: float, n: int, chance: float) -> bool:
    """A task counts as learned when its accuracy's 95% Wilson interval on the evaluated split lies above the
    chance level (a constant prediction's accuracy): the collapse to one class is not learning."""
    low, _ = wilson_interval(accuracy, n) if n > 0 else (accuracy, accuracy)
    return bool(low > chance)


def param_part(name: str) -> str:
    """"embeddings", "head" (pooler and classifier) or "encoder" (the transformer layers) for a parameter."""
    group = layer_key(name)
    if "embeddings" in group:
        return "embeddings"
    if ".layer." in group or ".layers." in group or group.split(".")[-1].isdigit():
        return "encoder"
    return "head"


def matrix_scores(run: RunData, R: np.ndarray, suffix: str) -> dict[str, float]:
    """Scores of one accuracy matrix R (T+1 × T): ACC, BWT, FWT, forgetting over every earlier task and over
    the learned ones, learning accuracy R[t, t] per task (plasticity), old-task accuracy after the last task
    (stability), and which tasks were learned."""
    T = R.shape[1]
    sizes = run.test_sizes
    learnt = [learned(R[t + 1, t], sizes[t] if t < len(sizes) else 0, run.chance(t)[0]) for t in range(T)]
    per_task_forgetting = forgetting_per_task(R) if T > 1 else np.array([])
    kept = [f for f, ok in zip(per_task_forgetting, learnt[:-1]) if ok]
    out = {f"acc_{suffix}": average_accuracy(R), f"bwt_{suffix}": backward_transfer(R),
           f"fwt_{suffix}": forward_transfer(R), f"forgetting_all_{suffix}": forgetting(R),
           f"forgetting_{suffix}": float(np.mean(kept)) if kept else math.nan,
           f"learn_{suffix}": float(np.mean([R[t + 1, t] for t in range(T)])),
           f"retained_{suffix}": float(np.mean(R[T, :T - 1])) if T > 1 else math.nan,
           f"new_learn_{suffix}": float(np.mean([R[t + 1, t] for t in range(1, T)])) if T > 1 else math.nan,
           f"learned_{suffix}": float(sum(learnt))}
    for t in range(T):
        out[f"learn_{suffix}_{t}"] = float(R[t + 1, t])
        out[f"learned_{suffix}_{t}"] = float(learnt[t])
        out[f"final_{suffix}_{t}"] = float(R[T, t])
    return out


def unit_scores(run: RunData) -> dict[str, dict[str, float]]:
    """Every reported scalar per complete unit (see the module docstring for definitions).

    Args:
        run: A loaded run.

    Returns:
        unit -> score name -> value; units without a complete accuracy matrix are absent.
    """
    cil = complete_matrices(run, "acc_cil")
    til = complete_matrices(run, "acc_til") if run.scenario.task_aware else {}
    scores: dict[str, dict[str, float]] = {}
    for unit, R in cil.items():
        s = scores[unit] = matrix_scores(run, R, "cil")
        if unit in til:
            s.update(matrix_scores(run, til[unit], "til"))
        if R.shape[1] >= 2:
            s.update(t1_after_t1=R[1, 0], t2_after_t1=R[1, 1], t1_after_t2=R[2, 0], t2_after_t2=R[2, 1],
                     t1_change_cil=R[2, 0] - R[1, 0])
            if unit in til:
                s["t1_change_til"] = til[unit][2, 0] - til[unit][1, 0]
    for unit, M in complete_matrices(run, "reward_margin").items():
        if unit in scores:  # margins after the last task (row T), per task and their mean
            scores[unit]["reward_margin"] = float(np.mean(M[-1]))
            scores[unit].update({f"reward_margin_{t}": float(v) for t, v in enumerate(M[-1])})
    last = len(run.tasks)
    for unit, general in general_ability(run).items():
        for metric in ("perplexity", "kl_base"):
            if unit in scores and f"{metric}_{last}" in general:
                scores[unit][f"general_{metric}"] = general[f"{metric}_{last}"]
    functional: dict[str, list[float]] = defaultdict(list)
    train_time: dict[str, float] = defaultdict(float)
    parts: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))
    memory_metric = "peak_cuda_mb" if run.on_cuda else "peak_rss_mb"
    producer = {r["unit"]: str(r["value"]) for r in run.records
                if r["type"] == "note" and r["metric"] == "shared_first_task"}
    for r in run.records:
        unit = r["unit"]
        charged = [u for u, p in producer.items() if p == unit and u in scores] \
            if r["type"] == "profile" and r["row"] == 1 and r["phase"] == "train" else []
        for borrower in charged:  # the producer's task-1 training, charged to those that reused it
            if r["metric"] == "wall_s":
                train_time[borrower] += r["value"]
            elif r["metric"] == memory_metric and r["value"] is not None:
                scores[borrower]["peak_memory_mb"] = max(scores[borrower].get("peak_memory_mb", 0.0), r["value"])
            elif r["metric"] == "steps":
                scores[borrower]["steps"] = scores[borrower].get("steps", 0.0) + r["value"]
        if unit not in scores:
            continue
        s = scores[unit]
        if r["type"] == "drift" and r["row"] == last:
            if r["param"] == "__overall__":
                s["weight_drift" if r["metric"] == "frobenius_total" else "weight_drift_last"] = r["value"]
            elif r["metric"] == "frobenius_task" and r.get("norm_before") is not None:
                squares = parts[unit][param_part(r["param"])]
                squares[0] += float(r["norm_change"]) ** 2
                squares[1] += float(r["norm_before"]) ** 2
        elif r["type"] == "functional" and r["metric"] == "bhattacharyya" \
                and s.get(f"learned_cil_{r['eval_index']}", 0.0):
            functional[unit].append(r["value"])  # distance on the inputs of a task the unit had learned
        elif r["type"] == "profile":
            if r["metric"] == "wall_s" and r["phase"] in TRAIN_PHASES:
                train_time[unit] += r["value"]
            elif r["metric"] == memory_metric and r["value"] is not None:
                s["peak_memory_mb"] = max(s.get("peak_memory_mb", 0.0), r["value"])
            elif r["metric"] == "trainable_params" and r["row"] == last:
                s["trainable_params"] = r["value"]
            elif r["metric"] == "steps" and r["phase"] == "train":
                s["steps"] = s.get("steps", 0.0) + r["value"]
    for unit, s in scores.items():
        if run.scenario.functional_drift:
            s["functional_drift"] = float(np.mean(functional[unit])) if functional[unit] else math.nan
        for part, (change, before) in parts[unit].items():
            s[f"{part}_drift_last"] = math.sqrt(change / before) if before > 0 else math.nan
        if unit in train_time:
            s["train_time_s"] = train_time[unit]
    return scores


def general_ability(run: RunData) -> dict[str, dict[str, float]]:
    """unit -> ``perplexity_<row>`` and ``kl_base_<row>`` from its ``general`` records: the perplexity of the
    model on the stream's held-out general text and its KL from the base model there (`clbench.preference`), at
    row 0 (before training) and after each task; empty for a run without such records."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for r in run.records:
        if r["type"] == "general" and r["value"] is not None:
            out[r["unit"]][f"{r['metric']}_{r['row']}"] = float(r["value"])
    return dict(out)


def method_units(run: RunData, scores: dict[str, dict[str, float]] | None = None
                 ) -> dict[str, dict[int, dict[str, float]]]:
    """method -> seed -> scores of that unit, in run method order (methods without a complete unit left out)."""
    scores = unit_scores(run) if scores is None else scores
    seeds = {r["unit"]: int(r["seed"]) for r in run.records}
    out: dict[str, dict[int, dict[str, float]]] = {m: {} for m in run.methods}
    for unit, s in scores.items():
        out[run.unit_method[unit]][seeds[unit]] = s
    return {m: dict(sorted(units.items())) for m, units in out.items() if units}


def method_samples(run: RunData) -> dict[str, dict[str, list[float]]]:
    """method -> score name -> values over the method's complete units (seeds), in run method order."""
    by_method: dict[str, dict[str, list[float]]] = {m: defaultdict(list) for m in run.methods}
    for unit, s in unit_scores(run).items():
        for key, value in s.items():
            by_method[run.unit_method[unit]][key].append(float(value))
    return {m: dict(v) for m, v in by_method.items() if v}

"""A run directory read back for reporting: records, config and environment, and the scores of each unit.

Inputs are ``results.jsonl`` (the record schema is in `clbench.results`), ``config.yaml`` and ``env.json``;
nothing is re-run. Units without a complete accuracy matrix (still running, stopped or failed) get no scores.

Scores per unit (one method × one seed), from its accuracy matrix R (`clbench.evaluators.accuracy` defines R
and the formulas of ACC, BWT, FWT and forgetting), once on class-incremental accuracy (``acc_cil``) and once
on task-aware accuracy (``acc_til``). Besides them:

- weight drift: the overall ``frobenius_total`` drift record after the last task;
- functional drift: mean Bhattacharyya distance over every (task i, earlier task j < i) record;
- train time: Σ over tasks of the wall time of the ``train``, ``method_before`` and ``method_after`` phases.
  A unit that reused another unit's first-task training (a ``note`` record ``shared_first_task`` naming the
  producer) is charged the producer's task-1 ``train`` time and peak memory, so the cost is what the method
  would take alone;
- peak memory: max ``peak_cuda_mb`` over all phases and tasks, or on a CPU run the max ``peak_rss_mb``;
- trainable parameters: the ``trainable_params`` profile record of the last task.
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
    forward_transfer,
)
from clbench.results import RESULTS, read_records
from clbench.yamlio import read_yaml

TRAIN_PHASES = ("train", "method_before", "method_after")



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

    @property
    def tasks(self) -> list[str]:
        """Task names in stream order (from env.json, else from the accuracy records)."""
        tasks = [t["name"] for t in self.env.get("stream", {}).get("tasks", [])]
        if tasks:
            return tasks
        seen = {r["eval_index"]: r["eval_task"] for r in self.records if r["type"] == "accuracy"}
        return [seen[i] for i in sorted(seen)]

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
    if not (run_dir / RESULTS).exists():
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


def unit_scores(run: RunData) -> dict[str, dict[str, float]]:
    """Every reported scalar per complete unit (see the module docstring for definitions).

    Args:
        run: A loaded run.

    Returns:
        unit -> score name -> value; units without a complete accuracy matrix are absent.
    """
    cil, til = complete_matrices(run, "acc_cil"), complete_matrices(run, "acc_til")
    scores: dict[str, dict[str, float]] = {}
    for unit, R in cil.items():
        s = scores[unit] = {}
        for suffix, matrix in (("cil", R), ("til", til.get(unit))):
            if matrix is None:
                continue
            s[f"acc_{suffix}"] = average_accuracy(matrix)
            s[f"bwt_{suffix}"] = backward_transfer(matrix)
            s[f"fwt_{suffix}"] = forward_transfer(matrix)
            s[f"forgetting_{suffix}"] = forgetting(matrix)
        if R.shape[1] >= 2:
            s.update(t1_after_t1=R[1, 0], t2_after_t1=R[1, 1], t1_after_t2=R[2, 0], t2_after_t2=R[2, 1],
                     t1_change_cil=R[2, 0] - R[1, 0])
            if unit in til:
                s["t1_change_til"] = til[unit][2, 0] - til[unit][1, 0]
    last = len(run.tasks)
    functional: dict[str, list[float]] = defaultdict(list)
    train_time: dict[str, float] = defaultdict(float)
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
        if unit not in scores:
            continue
        s = scores[unit]
        if r["type"] == "drift" and r["param"] == "__overall__" and r["metric"] == "frobenius_total" \
                and r["row"] == last:
            s["weight_drift"] = r["value"]
        elif r["type"] == "functional" and r["metric"] == "bhattacharyya":
            functional[unit].append(r["value"])
        elif r["type"] == "profile":
            if r["metric"] == "wall_s" and r["phase"] in TRAIN_PHASES:
                train_time[unit] += r["value"]
            elif r["metric"] == memory_metric and r["value"] is not None:
                s["peak_memory_mb"] = max(s.get("peak_memory_mb", 0.0), r["value"])
            elif r["metric"] == "trainable_params" and r["row"] == last:
                s["trainable_params"] = r["value"]
    for unit, s in scores.items():
        s["functional_drift"] = float(np.mean(functional[unit])) if functional[unit] else math.nan
        if unit in train_time:
            s["train_time_s"] = train_time[unit]
    return scores


def method_samples(run: RunData) -> dict[str, dict[str, list[float]]]:
    """method -> score name -> values over the method's complete units (seeds), in run method order."""
    by_method: dict[str, dict[str, list[float]]] = {m: defaultdict(list) for m in run.methods}
    for unit, s in unit_scores(run).items():
        for key, value in s.items():
            by_method[run.unit_method[unit]][key].append(float(value))
    return {m: dict(v) for m, v in by_method.items() if v}

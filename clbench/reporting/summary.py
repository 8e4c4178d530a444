"""The end-of-run summary table printed by `clbench run`: one row per method, mean over seeds."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from clbench.evaluators.accuracy import average_accuracy, backward_transfer, forgetting
from clbench.results import read_records


def accuracy_matrices(records: list[dict[str, Any]], metric: str = "acc_cil") -> dict[str, np.ndarray]:
    """unit -> R with R[i, j] = `metric` on task j after training task i (row 0: before training)."""
    cells: dict[str, dict[tuple[int, int], float]] = defaultdict(dict)
    for r in records:
        if r["type"] == "accuracy" and r["metric"] == metric:
            cells[r["unit"]][(r["row"], r["eval_index"])] = r["value"]
    out = {}
    for unit, values in cells.items():
        tasks = 1 + max(j for _, j in values)
        rows = 1 + max(i for i, _ in values)
        R = np.full((rows, tasks), np.nan)
        for (i, j), v in values.items():
            R[i, j] = v
        out[unit] = R
    return out


def summary_table(run_dir: Path) -> str:
    """Plain-text table: method, seeds, ACC, BWT, forgetting (class-incremental) and final per-task accuracy."""
    records = read_records(Path(run_dir))
    failed = {r["unit"]: r.get("error", "") for r in records
              if r["type"] == "unit" and r["value"] == "failed"}
    by_method: dict[str, list[np.ndarray]] = defaultdict(list)
    method_of = {r["unit"]: r["method"] for r in records}
    for unit, R in accuracy_matrices(records).items():
        if unit not in failed and not np.isnan(R).any():
            by_method[method_of[unit]].append(R)
    width = max([16, *(len(name) + 1 for name in (*by_method, *failed))])
    lines = [f"{'method':<{width}} {'seeds':>5} {'ACC':>7} {'BWT':>7} {'forget':>7}  final accuracy per task (CIL)"]
    for method, mats in by_method.items():
        acc = np.mean([average_accuracy(R) for R in mats])
        bwt = np.mean([backward_transfer(R) for R in mats])
        fgt = np.mean([forgetting(R) for R in mats])
        final = np.mean([R[-1] for R in mats], axis=0)
        lines.append(f"{method:<{width}} {len(mats):>5} {acc:>7.3f} {bwt:>7.3f} {fgt:>7.3f}  "
                     + " ".join(f"{v:.3f}" for v in final))
    for unit, error in failed.items():
        lines.append(f"{unit:<{width}} FAILED: {error}")
    lines.append(f"results: {Path(run_dir) / 'results.jsonl'}")
    return "\n".join(lines)

"""The end-of-run summary table printed by `clbench run`: one row per method, mean over seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clbench.reporting.rundata import complete_matrices, load_run, unit_scores


def summary_table(run_dir: Path) -> str:
    """Plain-text table: method, seeds, ACC, BWT, forgetting (class-incremental, or preference accuracy on a
    preference stream) and final per-task accuracy."""
    run = load_run(Path(run_dir))
    scores = unit_scores(run)
    matrices = complete_matrices(run, "acc_cil")
    units = {m: [u for u in scores if run.unit_method[u] == m] for m in run.methods}
    failed = {u: run.errors.get(u, "") for u, status in run.status.items() if status == "failed"}
    width = max([16, *(len(name) + 1 for name in (*run.methods, *failed))])
    lines = [f"{'method':<{width}} {'seeds':>5} {'ACC':>7} {'BWT':>7} {'forget':>7}  final accuracy per task ({run.scenario.short})"]
    for method, done in units.items():
        if not done:
            continue
        acc, bwt, fgt = (np.mean([scores[u][key] for u in done]) for key in ("acc_cil", "bwt_cil", "forgetting_cil"))
        final = np.mean([matrices[u][-1] for u in done], axis=0)
        lines.append(f"{method:<{width}} {len(done):>5} {acc:>7.3f} {bwt:>7.3f} {fgt:>7.3f}  "
                     + " ".join(f"{v:.3f}" for v in final))
    for unit, error in failed.items():
        lines.append(f"{unit:<{width}} FAILED: {error}")
    lines.append(f"results: {Path(run_dir) / 'results.jsonl'}")
    return "\n".join(lines)

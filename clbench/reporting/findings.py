"""The findings at the top of a report, written from the numbers below them and nothing else.

Each sentence comes from a rule on the scores (`clbench.reporting.rundata.unit_scores`) and the same
statistics as the tables: the ranking by ACC with ties decided by paired tests over seeds (Holm-corrected),
which units did not learn which task, which learners forgot most and least, what the references reached, and
the cost ranking. With one seed no difference is tested and the text says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from clbench.evaluators.stats import holm, paired_t_test
from clbench.reporting.tables import ALPHA, TableRun, Units, order_rows


def mean_of(units: Units, key: str) -> float:
    values = [s[key] for s in units.values() if key in s and not math.isnan(s[key])]
    return float(np.mean(values)) if values else math.nan


def tied_with_best(units: dict[str, Units], ranked: Sequence[str], key: str) -> tuple[list[str], bool]:
    """Methods not significantly below the best by `key` (paired t-test over shared seeds, Holm-corrected),
    best first; and whether any test could be made (two or more shared seeds)."""
    best = ranked[0]
    rivals = list(ranked[1:])
    pvalues = []
    for m in rivals:
        shared = sorted(set(units[m]) & set(units[best]))
        pvalues.append(paired_t_test([units[m][s][key] for s in shared], [units[best][s][key] for s in shared]))
    tested = any(not math.isnan(p) for p in pvalues)
    ties = [m for m, p in zip(rivals, holm(pvalues)) if not math.isnan(p) and p >= ALPHA]
    return [best, *ties], tested


def findings(run: TableRun, units: dict[str, Units], suffix: str = "cil") -> list[str]:
    """Markdown bullet lines: ranking, learning, forgetting, references and cost, from the numbers alone."""
    if not units:
        return ["- No unit has finished yet: nothing to report."]
    ranked, others = order_rows(run, units, f"acc_{suffix}")
    tasks = run.tasks
    lines = []
    if ranked:
        lines.append(ranking_line(units, ranked, suffix, run.scenario.label))
    lines += learning_lines(run, units, [*ranked, *others], tasks, suffix)
    forgetting = forgetting_line(units, ranked, tasks, suffix)
    if forgetting:
        lines.append(forgetting)
    for m in others:
        lines.append(reference_line(run, units, m, tasks, suffix, ranked))
    cost = cost_line(units, ranked)
    if cost:
        lines.append(cost)
    return lines


def ranking_line(units: dict[str, Units], ranked: Sequence[str], suffix: str,
                 label: str = "class-incremental") -> str:
    """The ranking by ACC; `label` names what `acc_cil` measures (`Scenario.label`)."""
    key = f"acc_{suffix}"
    kind = label if suffix == "cil" else "task-aware"
    best, *rest = ranked
    seeds = len(units[best])
    text = f"- **Highest ACC ({kind}): {best}** ({mean_of(units[best], key):.3f}"
    if len(ranked) == 1:
        return text + "; the only method)."
    top, tested = tied_with_best(units, ranked, key)
    if not tested:
        lower = ", ".join(f"{m} {mean_of(units[m], key):.3f}" for m in rest)
        return (text + f"; then {lower}). With {seeds} seed{'s' if seeds != 1 else ''} no difference is tested: "
                "the order is of means only.")
    ties = [m for m in top if m != best]
    below = [m for m in rest if m not in ties]
    parts = [text + ")"]
    if ties:
        parts.append("not significantly different: " + ", ".join(f"{m} ({mean_of(units[m], key):.3f})" for m in ties))
    if below:
        parts.append("significantly lower: " + ", ".join(f"{m} ({mean_of(units[m], key):.3f})" for m in below))
    return "; ".join(parts) + " (paired t-tests over seeds, Holm-corrected, α = 0.05)."


def learning_lines(run: TableRun, units: dict[str, Units], methods: Sequence[str], tasks: Sequence[str],
                   suffix: str) -> list[str]:
    missed = []
    for m in methods:
        for t, task in enumerate(tasks):
            seeds = [s for s, scores in units[m].items() if not scores.get(f"learned_{suffix}_{t}", 0.0)]
            if seeds:
                accuracy = np.mean([units[m][s][f"learn_{suffix}_{t}"] for s in seeds])
                chance = run.chance(t)[0]
                missed.append(f"{m} did not learn {task} in seed{'s' if len(seeds) > 1 else ''} "
                              f"{', '.join(map(str, seeds))} (learning accuracy {accuracy:.3f}, chance {chance:.3f})")
    if not missed:
        return [("- **Every unit learned every task** above chance (learning accuracy's 95% interval above "
                 f"{run.scenario.chance}).")]
    return ["- **Did not learn:** " + "; ".join(missed) + ". Their forgetting and drift are not ranked (†)."]


def forgetting_line(units: dict[str, Units], ranked: Sequence[str], tasks: Sequence[str], suffix: str) -> str:
    learners = [m for m in ranked
                if all(s.get(f"learned_{suffix}", 0.0) >= len(tasks) for s in units[m].values())]
    key = f"forgetting_{suffix}"
    values = {m: mean_of(units[m], key) for m in learners if not math.isnan(mean_of(units[m], key))}
    if len(values) < 2:
        return ""
    most, least = max(values, key=values.__getitem__), min(values, key=values.__getitem__)
    return (f"- **Forgetting**, among methods whose every unit learned every task: most {most} "
            f"({values[most]:.3f}), least {least} ({values[least]:.3f}).")


def reference_line(run: TableRun, units: dict[str, Units], method: str, tasks: Sequence[str], suffix: str,
                   ranked: Sequence[str]) -> str:
    role = run.role(method)
    learnt = ", ".join(f"{task} {mean_of(units[method], f'learn_{suffix}_{t}'):.3f}" for t, task in enumerate(tasks))
    if role == "reference":
        return (f"- **Reference {method}** (each task trained alone from the same start) learns {learnt}: what "
                "the model can learn of each task with this budget.")
    steps = mean_of(units[method], "steps")
    others = [mean_of(units[m], "steps") for m in ranked if not math.isnan(mean_of(units[m], "steps"))]
    extra = f", with {steps / np.mean(others):.2f}× the optimiser steps of the ranked methods" if others else ""
    return (f"- **Upper bound {method}** reaches ACC {mean_of(units[method], f'acc_{suffix}'):.3f}{extra} (it trains "
            "on every earlier task's data again); not ranked.")


def cost_line(units: dict[str, Units], ranked: Sequence[str]) -> str:
    times = {m: mean_of(units[m], "train_time_s") for m in ranked if not math.isnan(mean_of(units[m], "train_time_s"))}
    if len(times) < 2:
        return ""
    order = sorted(times, key=times.__getitem__)
    fastest = times[order[0]]
    listed = ", ".join(f"{m} {times[m]:.0f} s ({times[m] / fastest:.2f}×)" for m in order)
    memory = {m: mean_of(units[m], "peak_memory_mb") for m in ranked
              if not math.isnan(mean_of(units[m], "peak_memory_mb"))}
    text = f"- **Cost** (train time, fastest first): {listed}."
    if len(memory) >= 2:
        low, high = min(memory, key=memory.__getitem__), max(memory, key=memory.__getitem__)
        text += f" Peak memory from {low} ({memory[low]:.0f} MiB) to {high} ({memory[high]:.0f} MiB)."
    return text

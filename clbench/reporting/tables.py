"""Summary tables: one row per method, a cell per score with its 95% interval, ranked where a rank means
something.

- **±** is always the half-width of a 95% interval of the mean over seeds. For an accuracy it also counts the
  evaluated split's own sampling error (`clbench.evaluators.stats.accuracy_half_width`), so even a single seed
  gets an interval; other scores show the seed t-interval, or nothing with one seed.
- **Rows**: methods ranked by the table's first column (ACC), then the upper bound (joint) and references
  (single-task) below a rule, never ranked or bolded.
- **Bold**: the best mean among ranked rows; **≈**: not significantly different from it by a paired t-test over
  the seeds both ran (seed i of every method shares the first task and data order), Holm-corrected over the
  column's comparisons at α = 0.05. With fewer than two shared seeds nothing is marked.
- **†**: a unit of that method did not learn every task (its learning accuracy was not above chance), so its
  forgetting, transfer and drift say nothing about protecting what was learned: shown, never ranked.
- A column whose cells are identical for every row is dropped and named in a note under the table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from clbench.evaluators.stats import accuracy_half_width, ci_half_width, effective_n, holm, paired_t_test
from clbench.reporting.scenario import SCENARIOS, Scenario

NOT_SIGNIFICANT = "≈"
NOT_LEARNED = "†"
ALPHA = 0.05

Units = dict[int, dict[str, float]]  # seed -> scores of one unit


class TableRun(Protocol):
    """What a table needs of its run (`clbench.reporting.rundata.RunData`, or several runs side by side)."""

    @property
    def tasks(self) -> list[str]: ...

    @property
    def test_sizes(self) -> list[int]: ...

    @property
    def scenario(self) -> Scenario: ...

    def role(self, method: str) -> str: ...

    def chance(self, task: int) -> tuple[float, bool]: ...


@dataclass(frozen=True)
class Column:
    """One scalar column of a summary table.

    Attributes:
        key: Score name in `unit_scores`.
        title: Column heading (with units).
        better: "max", "min" or None (descriptive, not ranked).
        fmt: Number format for mean and half-width.
        accuracy: The score is an accuracy (its interval adds the evaluated split's sampling error).
        needs_learning: Ranked only where every unit learned: "cil" or "til" (every task), or a per-task flag
            such as "learned_cil_1" (that task).
    """

    key: str
    title: str
    better: str | None
    fmt: str = ".3f"
    accuracy: bool = False
    needs_learning: str | None = None


def cil_columns(scenario: Scenario = SCENARIOS["classification"]) -> list[Column]:
    """Columns of the main summary table (class-incremental, or preference accuracy): accuracy, plasticity and
    stability, drift, cost; functional drift only where `scenario` records it."""
    columns = [Column("acc_cil", "ACC ↑", "max", accuracy=True),
            Column("learn_cil", "learning acc. ↑", "max", accuracy=True),
            Column("retained_cil", "old tasks after last ↑", "max", accuracy=True, needs_learning="cil"),
            Column("bwt_cil", "BWT ↑", "max", needs_learning="cil"),
            Column("forgetting_cil", "forgetting ↓", "min", needs_learning="cil"),
            Column("fwt_cil", "FWT ↑", "max", needs_learning="cil"),
            Column("weight_drift_last", "Δθ last task", None, ".4f", needs_learning="cil"),
            Column("encoder_drift_last", f"Δθ {scenario.layers}, last task", None, ".4f", needs_learning="cil"),
            Column("weight_drift", "Δθ since start", None, ".4f"),
            Column("functional_drift", "functional drift ↓ (nats)", "min", ".3f", needs_learning="cil"),
            Column("train_time_s", "train time ↓ (s)", "min", ".0f"),
            Column("peak_memory_mb", "peak memory ↓ (MiB)", "min", ".0f"),
            Column("trainable_params", "trainable params ↓", "min", ",.0f"),
            Column("steps", "optimiser steps", None, ".0f")]
    return [c for c in columns if scenario.functional_drift or c.key != "functional_drift"]


def til_columns() -> list[Column]:
    """Columns of the task-aware summary table."""
    return [Column("acc_til", "ACC ↑", "max", accuracy=True),
            Column("learn_til", "learning acc. ↑", "max", accuracy=True),
            Column("retained_til", "old tasks after last ↑", "max", accuracy=True, needs_learning="til"),
            Column("bwt_til", "BWT ↑", "max", needs_learning="til"),
            Column("forgetting_til", "forgetting ↓", "min", needs_learning="til"),
            Column("fwt_til", "FWT ↑", "max", needs_learning="til")]


def task_columns(tasks: Sequence[str], suffix: str) -> list[Column]:
    """Learning accuracy R[t, t] of each task (what each method learnt of it, right after training it)."""
    return [Column(f"learn_{suffix}_{t}", name, "max", accuracy=True, needs_learning=f"learned_{suffix}_{t}")
            for t, name in enumerate(tasks)]


def margin_columns(tasks: Sequence[str]) -> list[Column]:
    """Mean reward margin after the last task over tasks, then per task (descriptive: a margin can keep growing
    as the model moves away from the base model, so larger is not ranked as better)."""
    return [Column("reward_margin", "mean over tasks", None),
            *(Column(f"reward_margin_{t}", name, None) for t, name in enumerate(tasks))]


def general_columns(tasks: Sequence[str]) -> list[Column]:
    """Perplexity on the stream's held-out general text before training and after each task, then the KL from
    the base model there after each task (`clbench.reporting.rundata.general_ability`); descriptive, not
    ranked."""
    return [Column("perplexity_0", "perplexity before training", None, ".2f"),
            *(Column(f"perplexity_{t + 1}", f"perplexity after {name}", None, ".2f") for t, name in enumerate(tasks)),
            *(Column(f"kl_base_{t + 1}", f"KL after {name}", None, ".4f") for t, name in enumerate(tasks))]


def order_rows(run: TableRun, units: dict[str, Units], key: str) -> tuple[list[str], list[str]]:
    """(ranked methods by mean `key`, best first; upper bounds and references in run order)."""
    def mean(method: str) -> float:
        values = [s[key] for s in units[method].values() if key in s and not math.isnan(s[key])]
        return float(np.mean(values)) if values else -math.inf

    ranked = sorted((m for m in units if run.role(m) == "method"), key=lambda m: -mean(m))
    return ranked, [m for m in units if run.role(m) != "method"]


def learned_everything(units: Units, needs: str, num_tasks: int) -> bool:
    """Whether every unit learned what `needs` names: every task ("cil", "til") or one ("learned_cil_1")."""
    if needs.startswith("learned_"):
        return all(s.get(needs, 0.0) >= 1.0 for s in units.values())
    return all(s.get(f"learned_{needs}", 0.0) >= num_tasks for s in units.values())


@dataclass
class Cell:
    values: dict[int, float]  # seed -> value (NaN dropped)
    text: str
    eligible: bool  # may be ranked
    mean: float
    number: str = "–"  # the text without marks


def make_cell(run: TableRun, units: Units, column: Column, ranked: bool) -> Cell:
    values = {seed: s[column.key] for seed, s in units.items()
              if column.key in s and not math.isnan(s[column.key])}
    if not values:
        return Cell({}, "–", False, math.nan)
    sample = list(values.values())
    mean = float(np.mean(sample))
    if column.accuracy:
        half = accuracy_half_width(sample, accuracy_n(run, column.key, units))
    else:
        half = ci_half_width(sample) if len(sample) >= 2 else math.nan
    number = f"{mean:{column.fmt}}" + (f" ± {half:{column.fmt}}" if not math.isnan(half) else "")
    learnt = column.needs_learning is None or learned_everything(units, column.needs_learning, len(run.tasks))
    text = number if learnt else f"{number} {NOT_LEARNED}"
    return Cell(values, text, ranked and learnt and column.better is not None, mean, number)


def accuracy_n(run: TableRun, key: str, units: Units) -> float:
    """Examples behind an accuracy score: a task's evaluated split (`learn_cil_1`), or for an average over tasks
    (`acc_*`, `learn_*`, `retained_*`) the effective n of its binomial variance (`effective_n`)."""
    sizes = run.test_sizes
    _, _, last = key.rpartition("_")
    if last.isdigit():
        return float(sizes[int(last)]) if int(last) < len(sizes) else math.nan
    kind, suffix = key.split("_")[0], key.split("_")[-1]
    tasks = range(len(sizes) - 1) if kind == "retained" else range(len(sizes))
    per_task = "learn" if kind == "learn" else "final"
    accuracies = [float(np.mean([s.get(f"{per_task}_{suffix}_{t}", math.nan) for s in units.values()]))
                  for t in tasks]
    return effective_n(accuracies, [sizes[t] for t in tasks])


def markdown_table(run: TableRun, units: dict[str, Units], columns: Sequence[Column], label: str = "method",
                   rank_by: str | None = None) -> str:
    """Rows ranked by `rank_by` (default the first column), references after a rule; cells `mean ± half-width`."""
    ranked, others = order_rows(run, units, rank_by or columns[0].key)
    rows = ranked + others
    cells = {m: [make_cell(run, units[m], c, m in ranked) for c in columns] for m in rows}
    keep = [i for i, c in enumerate(columns)  # the first column (what ranks the rows) always stays
            if i == 0 or len({cells[m][i].number for m in rows}) > 1 or len(rows) == 1]
    dropped = [f"{columns[i].title} ({cells[rows[0]][i].number})" for i in range(len(columns)) if i not in keep
               and cells[rows[0]][i].number != "–"]
    for i in keep:
        mark_column(cells, ranked, i, columns[i])
    lines = [f"| {label} | seeds | " + " | ".join(columns[i].title for i in keep) + " |",
             "|---|---:|" + "---:|" * len(keep)]
    for m in rows:
        if m == (others[0] if others else None):
            lines.append("| *not ranked:* | | " + " | ".join("" for _ in keep) + " |")
        lines.append(f"| {m} | {len(units[m])} | " + " | ".join(cells[m][i].text for i in keep) + " |")
    if dropped:
        lines += ["", "Left out, the same for every row: " + "; ".join(dropped) + "."]
    return "\n".join(lines)


def mark_column(cells: dict[str, list[Cell]], ranked: list[str], i: int, column: Column) -> None:
    """Bold the best ranked, eligible cell; mark with ≈ those not significantly different from it."""
    eligible = [m for m in ranked if cells[m][i].eligible and not math.isnan(cells[m][i].mean)]
    if not eligible:
        return
    pick = max if column.better == "max" else min
    best = pick(eligible, key=lambda m: cells[m][i].mean)
    rivals = [m for m in eligible if m != best]
    pvalues = []
    for m in rivals:
        shared = sorted(set(cells[m][i].values) & set(cells[best][i].values))
        pvalues.append(paired_t_test([cells[m][i].values[s] for s in shared],
                                     [cells[best][i].values[s] for s in shared]))
    for m, adjusted in zip(rivals, holm(pvalues)):
        if not math.isnan(adjusted) and adjusted >= ALPHA:
            cells[m][i].text += f" {NOT_SIGNIFICANT}"
    cells[best][i].text = f"**{cells[best][i].text}**"


TABLE_LEGEND = ("± is the half-width of a 95% interval of the mean over seeds; for accuracies it adds the "
                "evaluated split's own sampling error (so one seed has an interval too). **Bold**: best mean "
                f"among ranked rows; {NOT_SIGNIFICANT}: not significantly different from it (paired t-test over "
                "shared seeds, Holm-corrected, α = 0.05; no mark with fewer than two seeds). "
                f"{NOT_LEARNED}: some unit did not learn every task (learning accuracy not above chance), so the "
                "value is shown but not ranked. ↑/↓: higher/lower is better; columns without an arrow are "
                "descriptive. Rows below *not ranked* are the upper bound and references.")

"""Summary tables: mean ± interval cells over seeds, the best value of a column in bold."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from clbench.evaluators.stats import significantly_different, summarize
from clbench.reporting.rundata import RunData

NOT_SIGNIFICANT = "≈"



@dataclass(frozen=True)
class Column:
    """One scalar column of a summary table.

    Attributes:
        key: Score name in `unit_scores`.
        title: Column heading (with units).
        better: "max", "min" or None (descriptive, not ranked).
        fmt: Number format for mean and CI half-width.
    """

    key: str
    title: str
    better: str | None
    fmt: str = ".3f"


def cil_columns() -> list[Column]:
    """Columns of the class-incremental summary table (with drift and cost)."""
    return [Column("acc_cil", "ACC ↑", "max"), Column("bwt_cil", "BWT ↑", "max"),
            Column("fwt_cil", "FWT ↑", "max"), Column("forgetting_cil", "forgetting ↓", "min"),
            Column("weight_drift", "weight drift", None, ".3g"),
            Column("functional_drift", "functional drift ↓ (nats)", "min", ".3g"),
            Column("train_time_s", "train time ↓ (s)", "min", ".1f"),
            Column("peak_memory_mb", "peak memory ↓ (MiB)", "min", ".0f"),
            Column("trainable_params", "trainable params ↓", "min", ",.0f")]


def til_columns() -> list[Column]:
    """Columns of the task-aware summary table."""
    return [Column("acc_til", "ACC ↑", "max"), Column("bwt_til", "BWT ↑", "max"),
            Column("fwt_til", "FWT ↑", "max"), Column("forgetting_til", "forgetting ↓", "min")]


def first_two_columns(tasks: Sequence[str]) -> tuple[list[Column], list[Column]]:
    """Columns of the two first-two-tasks tables: accuracy on tasks 1 and 2 after each, and the change."""
    t1, t2 = tasks[0], tasks[1]
    accuracy = [Column("t1_after_t1", f"{t1} after {t1}", None), Column("t2_after_t1", f"{t2} after {t1}", None),
                Column("t1_after_t2", f"{t1} after {t2}", "max"), Column("t2_after_t2", f"{t2} after {t2}", "max")]
    change = [Column("t1_change_cil", f"Δ {t1}, class-incremental ↑", "max"),
              Column("t1_change_til", f"Δ {t1}, task-aware ↑", "max")]
    return accuracy, change


def format_cell(values: Sequence[float], fmt: str) -> str:
    """``mean ± CI95`` of a sample, ``mean (n=1)`` for one value, ``–`` for none or NaN.

    Args:
        values: One score over seeds.
        fmt: Format spec for the numbers, e.g. ".3f".

    Returns:
        The cell text.
    """
    if not values:
        return "–"
    stats = summarize(values)
    if math.isnan(stats.mean):
        return "–"
    if stats.n == 1:
        return f"{stats.mean:{fmt}} (n=1)"
    return f"{stats.mean:{fmt}} ± {stats.ci95:{fmt}}"


def markdown_table(rows: Sequence[tuple[str, int, dict[str, list[float]]]], columns: Sequence[Column],
                   label: str = "method") -> str:
    """A markdown table of mean ± CI cells with the best value bold and non-significant gaps marked.

    Args:
        rows: (row label, number of seeds, score name -> values over seeds) per row.
        columns: The columns to show.
        label: Heading of the first column.

    Returns:
        The table, one line per row.
    """
    lines = [f"| {label} | seeds | " + " | ".join(c.title for c in columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    best: dict[str, tuple[float, list[float]]] = {}
    for column in columns:
        candidates = [(summarize(v).mean, v) for _, _, samples in rows
                      if (v := samples.get(column.key)) and not math.isnan(summarize(v).mean)]
        if column.better and candidates:
            pick = max if column.better == "max" else min
            best[column.key] = pick(candidates, key=lambda c: c[0])
    for name, n, samples in rows:
        cells = []
        for column in columns:
            values = samples.get(column.key, [])
            text = format_cell(values, column.fmt)
            if column.key in best and text != "–":
                best_mean, best_values = best[column.key]
                if summarize(values).mean == best_mean:
                    text = f"**{text}**"
                elif not significantly_different(values, best_values):
                    text = f"{text} {NOT_SIGNIFICANT}"
            cells.append(text)
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def method_rows(run: RunData, samples: dict[str, dict[str, list[float]]], prefix: str = "",
          ) -> list[tuple[str, int, dict[str, list[float]]]]:
    return [(f"{prefix}{method}", len(s.get("acc_cil", [])), s) for method, s in samples.items()]


TABLE_LEGEND = (f"Mean ± half-width of the 95% t-interval over seeds (n=1: a single seed, no interval). **Bold**: "
                f"best mean of the column; {NOT_SIGNIFICANT}: not significantly different from the best "
                "(Welch's t-test, p ≥ 0.05, or fewer than 2 seeds on either side). ↑/↓: higher/lower is better; "
                "columns without an arrow are descriptive and not ranked.")


"""The report's figures, drawn with matplotlib's Agg canvas (no display, no global pyplot state).

Every ``draw`` function takes a loaded run and a target PNG path and returns None when it wrote the file, or
a short reason when the data for it is missing (the report prints the reason instead of the figure). One
palette (`method_palette`) maps each method to the same colour in every figure.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clbench.evaluators.drift import layer_key
from clbench.reporting.rundata import param_part

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from clbench.reporting.rundata import RunData

FONT: dict[str, Any] = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10,
        "ytick.labelsize": 10, "legend.fontsize": 10}
DPI = 130
Colour = tuple[float, float, float]


# Fixed colours (matplotlib's tab20) for the built-in methods, so a method looks the same in every report; other
# names get a tab20 colour from a hash of their name. Variants (METHOD@LABEL) keep their method's colour and
# differ by marker.
BUILTIN_COLOURS = {"naive": 14, "ewc": 0, "si": 1, "gem": 4, "agem": 5, "replay": 2, "lwf": 8, "joint": 15,
                   "single-task": 7, "lora": 6, "fip": 3, "fip-geometric": 18, "fip-lora": 9, "o-lora": 16,
                   "dpo": 10}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*", "p")


def method_palette(methods: Sequence[str]) -> dict[str, Colour]:
    """One colour per method (or run label), the same in every report whatever the other methods.

    Args:
        methods: Labels in display order (a `run: method` label is coloured by its method).

    Returns:
        label -> RGB colour.
    """
    from matplotlib import colormaps

    tab20 = colormaps["tab20"]
    out = {}
    for label in methods:
        base = label.rpartition(": ")[2].split("@")[0]
        index = BUILTIN_COLOURS.get(base, zlib.crc32(base.encode()) % 20)
        out[label] = tuple(float(c) for c in tab20(index)[:3])
    return out  # type: ignore[return-value]


def method_marker(label: str) -> str:
    """A marker per method, stable across reports: a variant differs from its method by marker."""
    method = label.rpartition(": ")[2]
    if "@" not in method:
        return "o"
    return MARKERS[1 + zlib.crc32(method.encode()) % (len(MARKERS) - 1)]


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)


def _style() -> Any:
    import matplotlib as mpl

    return mpl.rc_context(FONT)  # type: ignore[arg-type]


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _short_task(name: str, limit: int = 18) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def accuracy_heatmaps(run: RunData, metric: str, colours: Mapping[str, Colour], path: Path) -> str | None:
    """Mean accuracy matrix per method, one seaborn heatmap each (rows: after task i, columns: task j).

    Args:
        run: The loaded run.
        metric: "acc_cil" or "acc_til".
        colours: The method palette (method names colour the panel titles).
        path: The PNG to write.

    Returns:
        None, or why the plot was skipped.
    """
    import seaborn as sns

    from clbench.reporting.rundata import complete_matrices

    matrices: dict[str, list[np.ndarray]] = defaultdict(list)
    for unit, R in complete_matrices(run, metric).items():
        matrices[run.unit_method[unit]].append(R)
    methods = [m for m in run.methods if m in matrices]
    if not methods:
        return f"no unit has a complete {metric} accuracy matrix"
    tasks = [_short_task(t) for t in run.tasks]
    rows = ["before training"] + [f"after {t}" for t in tasks]
    nrows, ncols = _grid(len(methods))
    cell = 0.55 + 0.06 * max(len(t) for t in tasks)  # inches per column: room for the task name
    width = ncols * (1.9 + cell * len(tasks)) + 1.2
    height = nrows * (1.2 + 0.5 * len(rows)) + 0.4
    kind = run.scenario.label if metric == "acc_cil" else "task-aware"
    measure = run.scenario.accuracy if metric == "acc_cil" else "task-aware accuracy"
    with _style():
        fig = _figure(width, height)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        fig.set_layout_engine("none")  # seaborn draws the figure once per heatmap; lay it out once, at the end
        for ax, method in zip(axes.flat, methods):
            mean = np.mean(matrices[method], axis=0)
            sns.heatmap(mean, ax=ax, vmin=0.0, vmax=1.0, cmap="viridis", annot=True, fmt=".2f",
                        xticklabels=tasks, yticklabels=rows, cbar=False, square=False,
                        annot_kws={"fontsize": 10}, linewidths=0.5, linecolor="white")
            ax.set_title(f"{method} (n={len(matrices[method])})", color=colours.get(method, "black"),
                         fontweight="bold")
            ax.set_xlabel("evaluated task")
            ax.set_ylabel("model")
            ax.tick_params(axis="x", rotation=20)
            ax.tick_params(axis="y", rotation=0)
        for ax in list(axes.flat)[len(methods):]:
            ax.set_visible(False)
        fig.set_layout_engine("constrained")
        mappable = axes.flat[0].collections[0]
        fig.colorbar(mappable, ax=axes, shrink=0.8, label=f"{measure} (fraction)")
        fig.suptitle(f"Accuracy matrices, {kind} (mean over seeds)")
        _save(fig, path)
    return None


def _global_steps(records: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    """unit -> global step at the start of each task (index i-1 for task i) and at the end (last entry)."""
    steps: dict[str, dict[int, int]] = defaultdict(dict)
    for r in records:
        if r["type"] == "accuracy" and r["row"] >= 1 and r.get("step") is not None:
            steps[r["unit"]][r["row"]] = int(r["step"])
    out = {}
    for unit, per_task in steps.items():
        offsets = [0]
        for row in range(1, max(per_task) + 1):
            offsets.append(offsets[-1] + per_task.get(row, 0))
        out[unit] = offsets
    return out


def accuracy_curves(run: RunData, colours: Mapping[str, Colour], path: Path) -> str | None:
    """Class-incremental (or preference) accuracy on each task against the global training step, one panel
    per task.

    Points are row 0 (step 0), every ``curve`` record and every end-of-task ``accuracy`` record, at global step
    = steps of the earlier tasks + step within the task. Lines are means over seeds, bands min to max.

    Args:
        run: The loaded run.
        colours: The method palette.
        path: The PNG to write.

    Returns:
        None, or why the plot was skipped.
    """
    from matplotlib.ticker import MaxNLocator

    if not any(r["type"] == "curve" for r in run.records):
        return "no curve records (run with `--eval-every N` to evaluate every N training steps)"
    offsets = _global_steps(run.records)
    done = set(run.status)
    points: dict[tuple[str, int], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in run.records:
        if r["metric"] != "acc_cil" or r["type"] not in ("curve", "accuracy") or r["unit"] not in done:
            continue
        unit_offsets = offsets.get(r["unit"])
        if r["row"] == 0:
            x = 0
        elif unit_offsets is None or r.get("step") is None or r["row"] > len(unit_offsets) - 1:
            continue
        else:
            x = unit_offsets[r["row"] - 1] + int(r["step"])
        points[(r["method"], r["eval_index"])][x].append(r["value"])
    tasks = run.tasks
    boundaries = next(iter(offsets.values()), [0])[1:-1]
    nrows, ncols = _grid(len(tasks))
    with _style():
        fig = _figure(5.0 * ncols, 3.6 * nrows + 0.6)
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
        for index, (ax, task) in enumerate(zip(axes.flat, tasks)):
            for method in run.methods:
                series = points.get((method, index))
                if not series:
                    continue
                xs = sorted(series)
                ys = np.array([np.mean(series[x]) for x in xs])
                lo = np.array([np.min(series[x]) for x in xs])
                hi = np.array([np.max(series[x]) for x in xs])
                ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.8, color=colours[method], label=method)
                ax.fill_between(xs, lo, hi, color=colours[method], alpha=0.12, linewidth=0)
            for b, name in zip(boundaries, tasks[1:]):
                ax.axvline(b, color="0.4", linestyle=":", linewidth=1)
                ax.text(b, 1.02, f" {_short_task(name, 12)} →", fontsize=9, color="0.3", va="bottom")
            chance, measured = run.chance(index)
            ax.axhline(chance, color="0.35", linestyle="--", linewidth=1)
            ax.text(0, chance, f" chance {chance:.2f}" + ("" if measured else " (1/classes)"), fontsize=8,
                    color="0.35", va="bottom")
            ax.set_title(f"accuracy on {_short_task(task, 30)}", pad=16)
            ax.set_xlabel("global training step (optimiser steps)")
            ax.set_ylabel(run.scenario.accuracy)
            ax.set_ylim(-0.02, 1.02)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(tasks):]:
            ax.set_visible(False)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6), title="method")
        _save(fig, path)
    return None


def layer_groups(run: RunData, metric: str = "frobenius_task") -> dict[str, dict[int, dict[str, float]]] | None:
    """Per-layer fractional Frobenius change, mean over seeds: method -> task row -> layer -> value.

    d(G) = sqrt(Σ_{W∈G} ‖ΔW‖²_F) / sqrt(Σ_{W∈G} ‖W_before‖²_F) over the tensors W of layer G (`layer_key`),
    computed exactly from the per-tensor ``norm_change`` and ``norm_before`` fields of the drift records, as
    `clbench.evaluators.drift.grouped_frobenius_drift` does on tensors.

    Args:
        run: The loaded run.
        metric: "frobenius_task" (change over each task) or "frobenius_total" (since the start).

    Returns:
        The nested mapping in layer order of first appearance, or None if the records lack the norms.
    """
    sums: dict[tuple[str, int, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    order: dict[str, None] = {}
    for r in run.records:
        if r["type"] != "drift" or r["metric"] != metric or r["param"] == "__overall__":
            continue
        if "norm_before" not in r or r["unit"] not in run.unit_method:
            return None
        group = layer_key(r["param"])
        order.setdefault(group, None)
        acc = sums[(r["unit"], r["row"], group)]
        acc[0] += r["norm_change"] ** 2
        acc[1] += r["norm_before"] ** 2
    per_method: dict[str, dict[int, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for (unit, row, group), (change, base) in sums.items():
        value = math.sqrt(change / base) if base > 0 else (0.0 if change == 0 else math.nan)
        per_method[run.unit_method[unit]][row][group].append(value)
    if not per_method:
        return None
    return {method: {row: {g: float(np.mean(per_method[method][row][g])) for g in order
                           if g in per_method[method][row]} for row in sorted(per_method[method])}
            for method in run.methods if method in per_method}


def _layer_label(group: str) -> str:
    match = re.search(r"(?:layer|layers|h|blocks)\.\d+$", group)
    return match.group(0) if match else group.split(".")[-1]


def layer_drift(run: RunData, colours: Mapping[str, Colour], path: Path) -> str | None:
    """Per-layer fractional Frobenius change over each task, one panel per method (the FIP paper's Figure 1), on
    a log scale with rules between embeddings, encoder layers and head.

    Args:
        run: The loaded run.
        colours: The method palette (titles).
        path: The PNG to write.

    Returns:
        None, or why the plot was skipped.
    """
    groups = layer_groups(run)
    if not groups:
        return "no per-tensor drift records with `norm_before`/`norm_change` (runs made before they were added)"
    import seaborn as sns

    methods = list(groups)
    layers = list(dict.fromkeys(g for rows in groups.values() for per in rows.values() for g in per))
    rows = sorted({row for per in groups.values() for row in per})
    task_colours = sns.color_palette("crest", len(rows))
    width = max(7.0, 0.55 * len(layers) * max(1, len(rows)) ** 0.5 + 2.5)
    nrows, ncols = _grid(len(methods), 2 if len(methods) > 3 else 1)
    with _style():
        fig = _figure(width * ncols, 2.9 * nrows + 1.2)
        grid = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
        axes = list(grid.flat)
        for ax in axes[len(methods):]:
            ax.set_visible(False)
        bar = 0.8 / len(rows)
        x = np.arange(len(layers))
        for i, (ax, method) in enumerate(zip(axes, methods)):
            for k, row in enumerate(rows):
                values = [groups[method].get(row, {}).get(g, np.nan) for g in layers]
                name = run.tasks[row - 1] if row - 1 < len(run.tasks) else f"task {row}"
                ax.bar(x + (k - (len(rows) - 1) / 2) * bar, values, bar, color=task_colours[k],
                       label=f"task {row}: {_short_task(name, 20)}")
            ax.set_title(method, color=colours.get(method, "black"), fontweight="bold", loc="left")
            ax.set_yscale("log")  # the head changes by orders of magnitude more than encoder layers
            for k in range(1, len(layers)):  # a rule where embeddings end, and where the head begins
                if param_part(layers[k] + ".w") != param_part(layers[k - 1] + ".w"):
                    ax.axvline(k - 0.5, color="0.3", linewidth=1)
            if i % ncols == 0:
                ax.set_ylabel("‖ΔW‖_F / ‖W‖_F (log)")
            ax.set_xticks(x, [_layer_label(g) for g in layers], rotation=45, ha="right")
            ax.grid(axis="y", alpha=0.3)
        for ax in grid[-1]:
            ax.set_xlabel("layer (parameter group)")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside upper center", ncols=min(len(rows), 4),
                   title="fractional Frobenius change over training")
        _save(fig, path)
    return None


def forgetting_vs_drift(run: RunData, scores: Mapping[str, Mapping[str, float]], colours: Mapping[str, Colour],
                        path: Path) -> str | None:
    """Scatter of class-incremental (or preference accuracy) forgetting against weight drift and, where the run
    records it, against functional drift, per unit.

    Args:
        run: The loaded run.
        scores: `clbench.reporting.rundata.unit_scores` of the run.
        colours: The method palette.
        path: The PNG to write.

    Returns:
        None, or why the plot was skipped.
    """
    points = {unit: s for unit, s in scores.items() if not math.isnan(s.get("forgetting_all_cil", math.nan))}
    if not points:
        return "forgetting needs at least two tasks and one finished unit"
    from matplotlib.ticker import MaxNLocator

    panels = [("weight_drift", "weight drift ‖θ_T − θ_0‖_F / ‖θ_0‖_F"),
              ("functional_drift", "functional drift: mean Bhattacharyya\ndistance on earlier tasks (nats)")]
    panels = panels if run.scenario.functional_drift else panels[:1]
    with _style():
        fig = _figure(10.0 if len(panels) > 1 else 8.0, 4.2)  # one panel: still room for the title
        axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
        for ax, (key, label) in zip(axes, panels):
            for method in run.methods:
                units = [u for u in points if run.unit_method[u] == method
                         and not math.isnan(points[u].get(key, math.nan))]
                for learnt in (True, False):  # hollow: the unit did not learn every task (its drift is trivial)
                    chosen = [u for u in units if (points[u].get("learned_cil", 0.0) >= len(run.tasks)) == learnt]
                    if chosen:
                        ax.scatter([points[u][key] for u in chosen], [points[u]["forgetting_all_cil"] for u in chosen],
                                   s=55, color=colours[method] if learnt else "white", edgecolor=colours[method],
                                   linewidth=1.2, marker=method_marker(method), alpha=0.9,
                                   label=method if learnt or not any(
                                       points[u].get("learned_cil", 0.0) >= len(run.tasks) for u in units) else None)
            ax.set_xlabel(label)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # drift values like 0.0115 overlap at default density
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(f"forgetting, {run.scenario.label}\n(accuracy, fraction)")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right center", title="method")
        fig.suptitle("Does drift explain forgetting? (one point per unit; hollow: did not learn every task)")
        _save(fig, path)
    return None


def cost_bars(run: RunData, samples: Mapping[str, Mapping[str, list[float]]], colours: Mapping[str, Colour],
              path: Path) -> str | None:
    """Bars of train time and peak memory per method: mean, 95% CI error bars, one dot per seed.

    Args:
        run: The loaded run.
        samples: `clbench.reporting.rundata.method_samples` of the run.
        colours: The method palette.
        path: The PNG to write.

    Returns:
        None, or why the plot was skipped.
    """
    from clbench.evaluators.stats import summarize

    methods = [m for m in run.methods if m in samples]
    if not methods or not any(samples[m].get("train_time_s") for m in methods):
        return "no profile records of finished units"
    memory = "peak GPU memory (MiB)" if run.on_cuda else "CPU run: peak RSS of the process (MiB)"
    panels = [("train_time_s", "train time, all tasks (s)"), ("peak_memory_mb", memory)]
    crowded = len(methods) > 4 or max(len(m) for m in methods) > 8  # labels would overlap under their bars
    with _style():
        fig = _figure(max(8.0, 0.8 * len(methods) * 2 + 2), 4.2)
        axes = fig.subplots(1, 2)
        for ax, (key, label) in zip(axes, panels):
            x = np.arange(len(methods))
            stats = [summarize(samples[m].get(key, [])) for m in methods]
            means = [s.mean if s.n else np.nan for s in stats]
            upper = [0.0 if math.isnan(s.ci95) else s.ci95 for s in stats]
            lower = [min(e, m) if not math.isnan(m) else 0.0 for e, m in zip(upper, means)]  # clip at 0
            ax.bar(x, means, yerr=[lower, upper], capsize=4, color=[colours[m] for m in methods], edgecolor="black",
                   linewidth=0.5)
            for i, m in enumerate(methods):
                values = samples[m].get(key, [])
                ax.scatter(np.full(len(values), i) + np.linspace(-0.12, 0.12, len(values)), values, s=14,
                           color="black", zorder=3)
            ax.set_xticks(x, methods, rotation=30 if crowded else 0, ha="right" if crowded else "center")
            ax.set_ylabel(label)
            ax.set_xlabel("method")
            ax.grid(axis="y", alpha=0.3)
        fig.suptitle("Cost per unit (mean over seeds)")
        _save(fig, path)
    return None


def stability_plasticity(run: RunData, units: Mapping[str, Mapping[int, Mapping[str, float]]],
                         colours: Mapping[str, Colour], path: Path, suffix: str = "cil") -> str | None:
    """The summary figure: per method, accuracy on the new tasks right after learning them (plasticity, x)
    against accuracy on the earlier tasks after the last task (stability, y), means over seeds with 95%
    intervals (seed spread and the evaluated splits' sampling error), chance levels as dashed lines, each
    point labelled; hollow markers for methods with a unit that did not learn every task.

    Args:
        run: The loaded run.
        units: `clbench.reporting.rundata.method_units` of the run.
        colours: The method palette.
        path: The PNG to write.
        suffix: "cil" or "til".

    Returns:
        None, or why the plot was skipped.
    """
    from clbench.evaluators.stats import accuracy_half_width, effective_n

    T = len(run.tasks)
    if T < 2 or not units:
        return "stability against plasticity needs at least two tasks and one finished unit"
    sizes = run.test_sizes
    new, old = range(1, T), range(T - 1)
    chance_new = float(np.mean([run.chance(t)[0] for t in new]))
    chance_old = float(np.mean([run.chance(t)[0] for t in old]))
    points: list[tuple[float, float, str, Colour]] = []
    with _style():
        fig = _figure(7.5, 6.0)
        ax = fig.add_subplot(1, 1, 1)
        for method, seeds in units.items():
            xs = [s[f"new_learn_{suffix}"] for s in seeds.values()]
            ys = [s[f"retained_{suffix}"] for s in seeds.values()]
            x_n = effective_n([float(np.mean([s[f"learn_{suffix}_{t}"] for s in seeds.values()])) for t in new],
                              [sizes[t] for t in new])
            y_n = effective_n([float(np.mean([s[f"final_{suffix}_{t}"] for s in seeds.values()])) for t in old],
                              [sizes[t] for t in old])
            learnt = all(s.get(f"learned_{suffix}", 0.0) >= T for s in seeds.values())
            x, y = float(np.mean(xs)), float(np.mean(ys))
            ax.errorbar(x, y, xerr=accuracy_half_width(xs, x_n), yerr=accuracy_half_width(ys, y_n),
                        color=colours[method], marker=method_marker(method), markersize=9,
                        markerfacecolor=colours[method] if learnt else "white", capsize=3, linewidth=1.2,
                        linestyle="none", alpha=0.9 if run.role(method) == "method" else 0.6)
            points.append((x, y, method + ("" if learnt else " †"), colours[method]))
        place_labels(ax, points)
        ax.axvline(chance_new, color="0.5", linestyle="--", linewidth=1)
        ax.axhline(chance_old, color="0.5", linestyle="--", linewidth=1)
        ax.text(chance_new, 1.0, " chance", fontsize=8, color="0.4", va="top")
        ax.text(0.0, chance_old, " chance", fontsize=8, color="0.4", va="bottom")
        kind = run.scenario.label if suffix == "cil" else "task-aware"
        new_tasks = "task 2" if T == 2 else f"tasks 2..{T}"
        old_tasks = "task 1" if T == 2 else f"tasks 1..{T - 1}"
        ax.set_xlabel(f"plasticity: accuracy on {new_tasks} right after learning it ({kind})")
        ax.set_ylabel(f"stability: accuracy on {old_tasks} after the last task ({kind})")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title("Stability against plasticity (mean over seeds, 95% intervals; hollow †: a unit did not "
                     "learn every task)", fontsize=10)
        _save(fig, path)
    return None


def place_labels(ax: Any, points: Sequence[tuple[float, float, str, Colour]], height: float = 0.035) -> None:
    """Label each point right of it, moving labels up past the ones already placed so none overlap (a text's
    width is estimated from its length); a moved label gets a thin line back to its point."""
    placed: list[tuple[float, float, float]] = []  # x, y, width of each label, in data units of a [0, 1] axis
    for x, y, text, colour in sorted(points, key=lambda p: (p[1], p[0])):
        width = 0.0125 * len(text)
        lx, ly = min(x + 0.015, 1.0 - width), y + 0.01
        while any(abs(ly - py) < height and lx < px + pw and px < lx + width for px, py, pw in placed):
            ly += height / 2
        placed.append((lx, ly, width))
        moved = abs(ly - (y + 0.01)) > 1e-9
        ax.annotate(text, (x, y), xytext=(lx, ly), textcoords="data", fontsize=9, color=colour, va="bottom",
                    arrowprops={"arrowstyle": "-", "color": colour, "linewidth": 0.6} if moved else None)

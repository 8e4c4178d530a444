"""The run report: ``DIR/report.md`` and ``DIR/plots/*.png``, rebuilt from the run directory alone.

Inputs are ``results.jsonl`` (the record schema is in `clbench.results`), ``config.yaml`` and ``env.json``;
nothing is re-run, so ``clbench report DIR`` can be repeated at any time, also on a run that is still going
(units without a complete accuracy matrix are listed but left out of the tables).

Scores per unit (one method × one seed), from its accuracy matrix R (see `clbench.evaluators.accuracy`):
ACC, BWT, FWT against row 0 and max-based forgetting, once on class-incremental accuracy (``acc_cil``) and
once on task-aware accuracy (``acc_til``). Besides them:

- weight drift: the overall ``frobenius_total`` drift record after the last task, ‖θ_T − θ_0‖_F / ‖θ_0‖_F;
- functional drift: mean Bhattacharyya distance over every (task i, earlier task j < i) record, i.e. how far
  training task i moved the predictions on task j's test inputs, averaged;
- train time: Σ over tasks of the wall time of the ``train``, ``method_before`` and ``method_after`` phases
  (the method's own bookkeeping such as a Fisher pass counts; evaluation does not). A unit that reused another
  unit's first-task training (a ``note`` record ``shared_first_task`` naming the producer) is charged the
  producer's task-1 ``train`` time and peak memory, so the cost is what the method would take alone;
- peak memory: max ``peak_cuda_mb`` over all phases and tasks, or on a CPU run the max ``peak_rss_mb``;
- trainable parameters: the ``trainable_params`` profile record of the last task (task 1 may be shared plain
  fine-tuning, e.g. before LoRA adapters are trained).

Across seeds every scalar is reported as mean ± half-width of the 95% t-interval (`clbench.evaluators.stats`).
The best mean of a column is bold; a value marked ≈ is not significantly different from the best by
Welch's t-test at α = 0.05 (always so with fewer than 2 seeds, where the test is undefined).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clbench.errors import ClbenchError, RunDirError
from clbench.evaluators.accuracy import average_accuracy, backward_transfer, forgetting, forward_transfer
from clbench.evaluators.stats import significantly_different, summarize
from clbench.reporting.summary import accuracy_matrices
from clbench.results import RESULTS, read_records

REPORT = "report.md"
PLOTS = "plots"
NOT_SIGNIFICANT = "≈"
TRAIN_PHASES = ("train", "method_before", "method_after")


class ReportError(ClbenchError):
    """Runs cannot be reported or compared as asked (e.g. runs of different streams)."""


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
        run_dir: A directory written by `clbench.training.runner.run`.

    Returns:
        The run's records, config and environment.

    Raises:
        RunDirError: If the directory has no results file.
    """
    import yaml

    run_dir = Path(run_dir)
    if not (run_dir / RESULTS).is_file():
        raise RunDirError(f"'{run_dir}' holds no {RESULTS}; pass a run directory written by `clbench run`")
    records = read_records(run_dir)
    config_file, env_file = run_dir / "config.yaml", run_dir / "env.json"
    config = yaml.safe_load(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    env = json.loads(env_file.read_text(encoding="utf-8")) if env_file.is_file() else {}
    run = RunData(run_dir, run_dir.resolve().name, records, config or {}, env)
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


# --------------------------------------------------------------------------------------------- unit scores


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


def complete_matrices(run: RunData, metric: str) -> dict[str, np.ndarray]:
    """unit -> accuracy matrix for units that finished with every cell present."""
    return {unit: R for unit, R in accuracy_matrices(run.records, metric).items()
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


# ------------------------------------------------------------------------------------------------- tables


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


def _rows(run: RunData, samples: dict[str, dict[str, list[float]]], prefix: str = "",
          ) -> list[tuple[str, int, dict[str, list[float]]]]:
    return [(f"{prefix}{method}", len(s.get("acc_cil", [])), s) for method, s in samples.items()]


TABLE_LEGEND = (f"Mean ± half-width of the 95% t-interval over seeds (n=1: a single seed, no interval). **Bold**: "
                f"best mean of the column; {NOT_SIGNIFICANT}: not significantly different from the best "
                "(Welch's t-test, p ≥ 0.05, or fewer than 2 seeds on either side). ↑/↓: higher/lower is better; "
                "columns without an arrow are descriptive and not ranked.")


# ------------------------------------------------------------------------------------------------- report


def _run_date(run: RunData) -> str:
    for key in ("started", "date"):
        if run.env.get(key):
            return str(run.env[key])
    env_file = run.path / "env.json"
    if env_file.is_file():
        stamp = dt.datetime.fromtimestamp(env_file.stat().st_mtime, dt.timezone.utc)
        return stamp.strftime("%Y-%m-%d %H:%M UTC") + " (env.json written)"
    return "unknown"


def header(run: RunData) -> list[str]:
    """Title and the Setup section: command, config link, versions, hardware, stream, date."""
    env, config = run.env, run.config
    packages = env.get("packages", {})
    versions = ", ".join(f"{name} {packages[name]}" for name in
                         ("clbench", "torch", "transformers", "peft", "numpy", "avalanche-lib") if packages.get(name))
    cuda = env.get("cuda")
    gpu = f"{cuda['device']} × {cuda['count']} (CUDA {cuda['cuda']})" if cuda else "no CUDA device (CPU run)"
    stream = env.get("stream", {})
    tasks = ", ".join(f"{t['name']} ({len(t.get('classes', []))} classes, train {t.get('train')}, "
                      f"test {t.get('test')})" for t in stream.get("tasks", []))
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    seeds = ", ".join(str(s) for s in config.get("seeds", []))
    return [
        f"# clbench report: {run.name}", "",
        "## Setup", "",
        "Command (from `env.json`):", "", "```", str(env.get("command") or "(not recorded: run from Python)"),
        "```", "",
        (f"- configuration: [config.yaml](config.yaml) (model `{config.get('model', '?')}`, methods "
        f"{', '.join(run.methods)}, seeds {seeds}, device `{config.get('device', '?')}`)"),
        (f"- stream: **{stream.get('name', config.get('stream', '?'))}** version {stream.get('version', '?')}, "
        f"split seed {stream.get('seed', '?')}; tasks in order: {tasks or '?'}"),
        (f"- versions: Python {env.get('python', '?')}, {versions}; git commit "
         + (f"`{env['git_commit']}`" if env.get("git_commit") else "not recorded (not run from a git checkout)")),
        (f"- hardware: {env.get('platform', '?')}, {env.get('cpu_count', '?')} CPUs "
        f"({env.get('torch_threads', '?')} torch threads), {gpu}"),
        f"- run date: {_run_date(run)}; report generated {now} from `results.jsonl` by `clbench report`",
        "",
    ]


def _units_section(run: RunData) -> list[str]:
    lines = ["## Units", "", "| unit | status | note |", "|---|---|---|"]
    complete = set(complete_matrices(run, "acc_cil"))
    for unit in sorted(run.status, key=lambda u: (run.methods.index(run.unit_method[u]), u)):
        status = run.status[unit]
        note = run.errors.get(unit, "")
        if status == "done" and unit not in complete:
            note = "accuracy matrix incomplete; left out of the tables"
        elif status == "incomplete":
            note = "no final status yet (running or stopped); left out of the tables"
        lines.append(f"| {unit} | {status} | {note.replace('|', '/')} |")
    return [*lines, ""]


def _definitions(run: RunData) -> list[str]:
    memory = ("peak GPU memory allocated by tensors (`torch.cuda.max_memory_allocated`, reset per phase)"
              if run.on_cuda else
              "**CPU run: peak RSS** of the whole process (resident memory, includes the Python runtime and "
              "what earlier units in the same process left allocated; no CUDA records)")
    return [
        "## Definitions", "",
        ("R[i, j] is the accuracy on task j after training task i; row 0 is the pretrained model before any "
        "training. T is the number of tasks."), "",
        ("- ACC = mean_j R[T, j]; BWT = mean_{j<T} (R[T, j] − R[j, j]) (Lopez-Paz & Ranzato, 2017); "
        "FWT = mean_{j≥2} (R[j−1, j] − R[0, j]), against the pretrained model; forgetting = mean_{j<T} "
        "(max_{j≤l<T} R[l, j] − R[T, j]) (Chaudhry et al., 2018). Accuracies are fractions in [0, 1]."),
        ("- class-incremental: argmax over every class of the shared head; task-aware: argmax within the "
        "evaluated task's own classes."),
        ("- weight drift: ‖θ_T − θ_0‖_F / ‖θ_0‖_F over all weights after the last task (LoRA: effective "
        "weights W + (α/r)·B·A)."),
        ("- functional drift: Bhattacharyya distance −log Σ_c √(p_c q_c) between the predictions before and "
        "after training task i, on the test inputs of each earlier task j < i, averaged over inputs and over "
        "all such (i, j)."),
        ("- train time: wall time of training plus the method's before/after-task work, summed over tasks "
         "(evaluation excluded); a unit that reused another unit's first-task fine-tuning is charged that "
         "training's time and memory."),
        "- trainable parameters: while training the last task.",
        f"- peak memory: {memory}.",
        "",
    ]


def write_report(run_dir: Path) -> Path:
    """Regenerate ``run_dir/report.md`` and ``run_dir/plots/*.png`` from the run's files.

    Args:
        run_dir: A run directory (``results.jsonl``, ``config.yaml``, ``env.json``).

    Returns:
        The path of ``report.md``.

    Raises:
        RunDirError: If the directory holds no results.
    """
    from clbench.reporting import plots

    run = load_run(Path(run_dir))
    samples = method_samples(run)
    tasks = run.tasks
    out = run.path / PLOTS
    out.mkdir(exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()  # a plot skipped this time must not leave a stale file behind
    colours = plots.method_palette(run.methods)
    memory_note = "peak GPU memory" if run.on_cuda else "CPU run: peak RSS"
    lines = header(run)

    lines += ["## Summary: class-incremental", ""]
    if samples:
        lines += [markdown_table(_rows(run, samples), cil_columns()), "", TABLE_LEGEND, "",
                  (f"Peak memory column: {memory_note}. Weight drift after the last task; functional drift "
                  "on earlier tasks' test inputs (see Definitions)."), ""]
    else:
        lines += ["No unit has finished yet: nothing to summarise.", ""]
    lines += ["## Summary: task-aware", ""]
    lines += [markdown_table(_rows(run, samples), til_columns()), "", TABLE_LEGEND, ""] if samples else \
        ["No unit has finished yet.", ""]

    lines += ["## First two tasks", ""]
    if len(tasks) >= 2 and samples:
        accuracy, change = first_two_columns(tasks)
        lines += [f"Class-incremental accuracy on **{tasks[0]}** and **{tasks[1]}** after training each:", "",
                  markdown_table(_rows(run, samples), accuracy), "",
                  (f"Change in {tasks[0]} accuracy caused by training {tasks[1]} (R[2, 1] − R[1, 1]; negative = "
                  "forgotten):"), "", markdown_table(_rows(run, samples), change), ""]
    else:
        lines += ["Skipped: the stream has fewer than two tasks or no unit has finished.", ""]

    figures: list[tuple[str, str, str, Callable[[Path], str | None]]] = [
        ("Accuracy matrices", "accuracy_matrices.png",
         "Mean class-incremental accuracy matrix per method over seeds (row: after training that task).",
         lambda p: plots.accuracy_heatmaps(run, "acc_cil", colours, p)),
        ("Accuracy matrices", "accuracy_matrices_task_aware.png", "The same with task-aware accuracy.",
         lambda p: plots.accuracy_heatmaps(run, "acc_til", colours, p)),
        ("Accuracy along training", "accuracy_curves.png",
         ("Class-incremental accuracy on each task along training (mean over seeds, band: min–max); dotted "
         "lines mark where the next task starts."),
         lambda p: plots.accuracy_curves(run, colours, p)),
        ("Per-layer weight change", "layer_drift.png",
         ("Fractional Frobenius change ‖ΔW‖_F / ‖W‖_F of each layer's weights over each task (mean over seeds; "
         "LoRA on effective weights with α/r), as in the FIP paper's Figure 1."),
         lambda p: plots.layer_drift(run, colours, p)),
        ("Forgetting against drift", "forgetting_vs_drift.png",
         "Class-incremental forgetting against weight drift and against functional drift, one point per unit.",
         lambda p: plots.forgetting_vs_drift(run, unit_scores(run), colours, p)),
        ("Cost", "cost.png", (f"Train time and peak memory ({memory_note}) per method; bars: mean, error bars: "
         "95% CI, dots: seeds."),
         lambda p: plots.cost_bars(run, samples, colours, p)),
    ]
    section = None
    for title, file, caption, draw in figures:
        if title != section:
            lines += [f"## {title}", ""]
            section = title
        skipped = draw(out / file)
        if skipped:
            lines += [f"*Plot `{file}` skipped: {skipped}.*", ""]
        else:
            lines += [f"![{caption}]({PLOTS}/{file})", "", caption, ""]
    lines += _units_section(run) + _definitions(run)
    report = run.path / REPORT
    tmp = report.with_name(REPORT + ".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(report)
    return report


def write_report_or_warn(run_dir: Path, warn: Callable[[str], None]) -> Path | None:
    """`write_report`, but a failure only warns in one line: the results are already safe on disk.

    Args:
        run_dir: The run directory.
        warn: Receives the one-line warning.

    Returns:
        The report path, or None if it could not be written.
    """
    try:
        return write_report(run_dir)
    except Exception as exc:  # noqa: BLE001 - any report bug must not cost the user the finished run
        message = " ".join(str(exc).split())
        warn(f"clbench: warning: report not written ({type(exc).__name__}: {message}); "
             f"results are in {Path(run_dir) / RESULTS}; retry with `clbench report {run_dir}`")
        return None


# ------------------------------------------------------------------------------------------------ compare


def _config_differences(runs: Sequence[RunData]) -> list[str]:
    keys = sorted({k for run in runs for k in run.config if k != "out"})
    differing = [k for k in keys if len({json.dumps(run.config.get(k), sort_keys=True) for run in runs}) > 1]
    if not differing:
        return ["The runs' configurations are identical apart from `out`.", ""]
    lines = ["| setting | " + " | ".join(run.name for run in runs) + " |", "|---|" + "---|" * len(runs)]
    for key in differing:
        lines.append(f"| {key} | " + " | ".join(f"`{json.dumps(run.config.get(key))}`" for run in runs) + " |")
    return ["Configuration settings that differ:", "", *lines, ""]


def compare_runs(run_dirs: Iterable[Path], out: Path | None = None) -> str:
    """Put the summary rows of several runs of the same stream side by side.

    Args:
        run_dirs: Two or more run directories.
        out: If given, the markdown is also written to ``out/compare.md``.

    Returns:
        The comparison as markdown.

    Raises:
        ReportError: If fewer than two runs are given or the runs use different streams (name or version).
        RunDirError: If a directory holds no results.
    """
    runs = [load_run(Path(d)) for d in run_dirs]
    if len(runs) < 2:
        raise ReportError("compare needs at least two run directories; pass DIR_A DIR_B ...")
    streams = {run.stream for run in runs}
    if len(streams) > 1:
        listed = ", ".join(f"{run.name}: {run.stream}" for run in runs)
        raise ReportError(f"runs use different streams: {listed}; compare runs of the same stream")
    labels = [run.name for run in runs]
    if len(set(labels)) < len(labels):
        labels = [str(run.path) for run in runs]
    rows = []
    for label, run in zip(labels, runs):
        rows += _rows(run, method_samples(run), prefix=f"{label}: ")
    memory = {"peak GPU memory" if run.on_cuda else "CPU run: peak RSS" for run in runs}
    lines = [f"# clbench comparison: {', '.join(labels)}", "",
             f"Stream **{runs[0].stream}**. Runs:", "",
             "| run | command | model | seeds | hardware |", "|---|---|---|---|---|"]
    for label, run in zip(labels, runs):
        cuda = run.env.get("cuda")
        hardware = cuda["device"] if cuda else f"CPU ({run.env.get('cpu_count', '?')} cores)"
        lines.append(f"| [{label}]({run.path / REPORT}) | `{run.env.get('command')}` | {run.config.get('model')} "
                     f"| {', '.join(str(s) for s in run.config.get('seeds', []))} | {hardware} |")
    lines += ["", *_config_differences(runs),
              "## Summary: class-incremental", "", markdown_table(rows, cil_columns(), "run: method"), "",
              (f"Peak memory: {' / '.join(sorted(memory))}; compare memory and time only between runs on the same "
              "hardware."), "",
              "## Summary: task-aware", "", markdown_table(rows, til_columns(), "run: method"), "",
              TABLE_LEGEND, ""]
    text = "\n".join(lines)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(text, encoding="utf-8")
    return text

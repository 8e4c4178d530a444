"""The run report: ``DIR/report.md`` and ``DIR/plots/*.png``, rebuilt from the run directory alone.

`clbench.reporting.rundata` reads the run back and scores each unit; `clbench.reporting.tables` formats the
summary tables; `clbench.reporting.plots` draws the figures. ``clbench report DIR`` can be repeated at any
time, also on a run that is still going (units without a complete accuracy matrix are listed but left out of
the tables).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

from clbench.errors import RunDirError
from clbench.reporting import plots
from clbench.reporting.rundata import RunData, complete_matrices, load_run, method_samples, unit_scores
from clbench.reporting.tables import (
    TABLE_LEGEND,
    cil_columns,
    first_two_columns,
    markdown_table,
    method_rows,
    til_columns,
)
from clbench.results import RESULTS, torn_tail

REPORT = "report.md"

PLOTS = "plots"



def _run_date(run: RunData) -> str:
    """Start and end as env.json recorded them (runs written before they were recorded say so)."""
    started, finished = run.env.get("started"), run.env.get("finished")
    if not started:
        return "not recorded"
    resumed = run.env.get("resumed") or []
    return (f"started {started}, " + (f"resumed {', '.join(resumed)}, " if resumed else "")
            + (f"finished {finished}" if finished else "not finished"))


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
        f"- run: {_run_date(run)}; report generated {now} from `results.jsonl` by `clbench report`",
        "",
    ]


def provenance_section(run: RunData) -> list[str]:
    """Where the hyper-parameters came from: a tuned config's provenance, or the defaults and the command."""
    provenance = run.config.get("provenance") or {}
    if provenance.get("tuned_by") != "clbench tune":
        return ["## Hyper-parameters", "",
                ("Set by hand or left at their defaults (no `clbench tune` provenance in config.yaml); every value "
                "used is in [config.yaml](config.yaml)."), ""]
    lines = ["## Hyper-parameters", "",
             (f"Chosen by `clbench tune` in `{provenance.get('tuning_dir')}` on {provenance.get('selected_on')} data "
              f"of **{provenance.get('tuned_on')}** ({provenance.get('objective')}; {provenance.get('budget')}, search "
              f"seeds {provenance.get('search_seeds')}). Test data were "
              f"{'not ' if provenance.get('test_data_read') is False else ''}read while choosing them; the tables "
              "below are on test."), "", "| method | values | chosen trial (validation ACC) |", "|---|---|---|"]
    for method, chosen in (provenance.get("chosen") or {}).items():
        if not isinstance(chosen, dict):  # every trial was pruned or failed: the method kept its defaults
            lines.append(f"| {method} | defaults | {chosen} |")
            continue
        values = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in chosen.get("values", {}).items())
        lines.append(f"| {method} | {values} | {chosen['trial']} ({chosen['validation_acc']:.3f}) |")
    return [*lines, ""]


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
        RunDirError: If the directory holds no results, a file cannot be read, or the results end in a partly
            written record (the report would miss that unit's last records, so nothing is rewritten).
    """
    run = load_run(Path(run_dir))
    if torn_tail(run.path):
        raise RunDirError(f"'{run.path / RESULTS}' ends in a partly written record (a run stopped or still writing "
                          f"there); wait for the run, or continue it with `clbench run --out {run_dir} --resume`, "
                          "then report")
    samples = method_samples(run)
    tasks = run.tasks
    out = run.path / PLOTS
    out.mkdir(exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()  # a plot skipped this time must not leave a stale file behind
    colours = plots.method_palette(run.methods)
    memory_note = "peak GPU memory" if run.on_cuda else "CPU run: peak RSS"
    lines = header(run) + provenance_section(run)

    lines += ["## Summary: class-incremental", ""]
    if samples:
        lines += [markdown_table(method_rows(run, samples), cil_columns()), "", TABLE_LEGEND, "",
                  (f"Peak memory column: {memory_note}. Weight drift after the last task; functional drift "
                  "on earlier tasks' test inputs (see Definitions)."), ""]
    else:
        lines += ["No unit has finished yet: nothing to summarise.", ""]
    lines += ["## Summary: task-aware", ""]
    lines += [markdown_table(method_rows(run, samples), til_columns()), "", TABLE_LEGEND, ""] if samples else \
        ["No unit has finished yet.", ""]

    lines += ["## First two tasks", ""]
    if len(tasks) >= 2 and samples:
        accuracy, change = first_two_columns(tasks)
        lines += [f"Class-incremental accuracy on **{tasks[0]}** and **{tasks[1]}** after training each:", "",
                  markdown_table(method_rows(run, samples), accuracy), "",
                  (f"Change in {tasks[0]} accuracy caused by training {tasks[1]} (R[2, 1] − R[1, 1]; negative = "
                  "forgotten):"), "", markdown_table(method_rows(run, samples), change), ""]
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


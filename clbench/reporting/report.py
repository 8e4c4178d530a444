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
from typing import Any

from clbench.errors import RunDirError
from clbench.preference import GENERAL_TOPK
from clbench.reporting import plots
from clbench.reporting.findings import findings
from clbench.reporting.rundata import (
    RunData,
    complete_matrices,
    general_ability,
    load_run,
    method_samples,
    method_units,
    unit_scores,
)
from clbench.reporting.tables import (
    TABLE_LEGEND,
    cil_columns,
    general_columns,
    margin_columns,
    markdown_table,
    task_columns,
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


def _seeds_added(env: dict[str, Any]) -> str:
    """Seeds that a resume added to the run, with when and at which commit (the versions above are the start's)."""
    parts = [f"seeds {', '.join(str(s) for s in entry.get('seeds', []))} added {entry.get('at', '?')} at commit "
             + (f"`{entry['git_commit']}`" if entry.get("git_commit") else "not recorded")
             for entry in env.get("seeds_added") or []]
    return f" ({'; '.join(parts)})" if parts else ""


def _training(run: RunData) -> tuple[str, str, str]:
    """(model, training loss, tasks with their sizes) for the Setup section: a classifier's pooling and the
    classes its loss runs over, or a preference stream's DPO β and pairs."""
    config, stream_tasks = run.config, run.env.get("stream", {}).get("tasks", [])
    model = f"model `{config.get('model', '?')}`"
    if run.kind == "preference":
        beta = config.get("dpo_beta")
        return (model, f"training loss DPO with β = {beta if beta is not None else 'not recorded'} (`dpo_beta`)",
                ", ".join(f"{t['name']} (train {t.get('train')} pairs, test {t.get('test')} pairs)"
                          for t in stream_tasks))
    return (f"{model} with {config.get('pooling') or 'its default'} pooling",
            f"training loss over {config.get('active_classes', 'all')} classes",
            ", ".join(f"{t['name']} ({len(t.get('classes', []))} classes, train {t.get('train')}, "
                      f"test {t.get('test')})" for t in stream_tasks))


def header(run: RunData) -> list[str]:
    """Title and the Setup section: command, config link, versions, hardware, stream, date."""
    env, config = run.env, run.config
    packages = env.get("packages", {})
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    seeds = ", ".join(str(s) for s in config.get("seeds", []))
    versions = ", ".join(f"{name} {packages[name]}" for name in
                         ("clbench", "torch", "transformers", "peft", "numpy", "avalanche-lib") if packages.get(name))
    cuda = env.get("cuda")
    gpu = f"{cuda['device']} × {cuda['count']} (CUDA {cuda['cuda']})" if cuda else "no CUDA device (CPU run)"
    stream = env.get("stream", {})
    model, loss, tasks = _training(run)
    methods = env.get("methods") or {}
    optimisers = "; ".join(f"{m}: {methods[m].get('optimizer', '?')}" for m in run.methods if m in methods)
    return [
        "## Setup", "",
        "Command (from `env.json`):", "", "```", str(env.get("command") or "(not recorded: run from Python)"),
        "```", "",
        (f"- configuration: [config.yaml](config.yaml) ({model}, methods {', '.join(run.methods)}, seeds {seeds}, "
         f"device `{config.get('device', '?')}`, {loss}, evaluated on the {run.eval_split} split)"),
        f"- optimisers: {optimisers or 'not recorded (run before env.json listed them): the runner’s AdamW'}",
        (f"- stream: **{stream.get('name', config.get('stream', '?'))}** version {stream.get('version', '?')}, "
        f"split seed {stream.get('seed', '?')}; tasks in order: {tasks or '?'}"),
        (f"- versions: Python {env.get('python', '?')}, {versions}; git commit "
         + (f"`{env['git_commit']}`" if env.get("git_commit") else "not recorded (not run from a git checkout)")
         + _seeds_added(env)),
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


def _beta(run: RunData) -> str:
    beta = run.config.get("dpo_beta")
    return f"β = {beta}" if beta is not None else "β (not recorded in config.yaml)"


def _scores_defined(run: RunData) -> tuple[str, str, str, list[str], str]:
    """The kind-specific parts of Definitions: (what R holds and row 0, FWT's baseline and note, chance,
    bullets defining the scores, the parts Δθ leaves out besides the transformer layers)."""
    if run.kind == "preference":
        beta = _beta(run)
        return (("R[i, j] is the preference accuracy on task j after training task i; row 0 is the model before "
                 "any training, which scores exactly 0.5 on every task (every reward is 0, so every pair ties)"),
                "model before training (R[0, j] = 0.5).",
                "0.5, the base model's preference accuracy.",
                [("- preference accuracy: the share of a task's held-out (prompt, chosen, rejected) pairs whose "
                  "implicit reward r(x, y) = β (log π(y|x) − log π_0(y|x)), against the model before the stream "
                  "π_0, is higher for the chosen response than for the rejected one, a tie counting half; one model "
                  "scores every pair with no task identity to use, so this is the only accuracy reported."),
                 (f"- reward margin: the mean over those pairs of r(x, chosen) − r(x, rejected), with {beta}; 0 for "
                  "the model before training."),
                 ("- training loss: DPO (Rafailov et al., 2023), −log σ(β [(log π − log π_ref)(chosen) − (log π − "
                  f"log π_ref)(rejected)]) averaged over pairs, with {beta} and π_ref the model at the start of the "
                  "task being trained.")],
                "embeddings, final norm and output head")
    return (("R[i, j] is the accuracy on task j after training task i; row 0 is the pretrained model before any "
             "training"),
            ("pretrained model. Class-incremental FWT is the same for every method whose head rows for task j stay "
             "untrained until task j (its accuracy there is 0 before and after), so the tables drop it when it "
             "carries no information."),
            "the share of the split's largest class, which predicting one class for everything reaches.",
            [("- class-incremental: argmax over every class of the shared head; task-aware: argmax within the "
              "evaluated task's own classes.")],
            "embeddings and head")


def _definitions(run: RunData) -> list[str]:
    memory = ("peak GPU memory allocated by tensors (`torch.cuda.max_memory_allocated`, reset per phase)"
              if run.on_cuda else
              "**CPU run: peak RSS** of the whole process (resident memory, includes the Python runtime and "
              "what earlier units in the same process left allocated; no CUDA records)")
    matrix, fwt, chance, scores, apart = _scores_defined(run)
    functional = [("- functional drift: Bhattacharyya distance −log Σ_c √(p_c q_c) between the predictions before "
                   "and after training task i, on the evaluated inputs of each earlier learned task j < i, averaged "
                   "over inputs and over all such (i, j).")] if run.scenario.functional_drift else []
    return [
        "## Definitions", "",
        (f"{matrix}. T is the number of tasks. Accuracies are fractions in [0, 1], measured on each task's "
         f"{run.eval_split} split."), "",
        ("- ACC = mean_j R[T, j]; BWT = mean_{j<T} (R[T, j] − R[j, j]) (Lopez-Paz & Ranzato, 2017); "
         f"FWT = mean_{{j≥2}} (R[j−1, j] − R[0, j]), against the {fwt}"),
        ("- learning accuracy: R[t, t], accuracy on task t right after training it (plasticity); "
         "old tasks after last: mean_{j<T} R[T, j] (stability). A task is *learned* when the 95% Wilson "
         f"interval of R[t, t] on its split lies above chance: {chance}"),
        ("- forgetting = mean over learned tasks j < T of (max_{j≤l<T} R[l, j] − R[T, j]) (Chaudhry et al., "
         "2018): a unit is never credited for not forgetting what it never learned."),
        *scores,
        ("- Δθ: fractional Frobenius change ‖θ_after − θ_before‖_F / ‖θ_before‖_F of the weights over the last "
         f"task, of the {run.scenario.layers} layers alone ({apart} apart) over the last task, and since the start "
         "(LoRA: effective weights W + (α/r)·B·A)."),
        *functional,
        ("- train time: wall time of training plus the method's before/after-task work, summed over tasks "
         "(evaluation excluded); a unit that reused another unit's first-task fine-tuning is charged that "
         "training's time and memory. Optimiser steps: summed over tasks (joint trains on the union of the "
         "tasks so far, so it takes more steps on later tasks)."),
        "- trainable parameters: while training the last task.",
        f"- peak memory: {memory}.",
        ("- ±: half-width of a 95% interval of the mean over seeds: Student's t over seeds, combined for "
         "accuracies with the split's binomial sampling error (a fixed test set's error does not average out "
         "over seeds)."),
        "",
    ]


def _margin_section(run: RunData, units: dict[str, dict[int, dict[str, float]]]) -> list[str]:
    """The mean reward margin after the last task, per method and task (preference streams)."""
    return ["## Reward margin after the last task", "",
            (f"Mean reward margin r(chosen) − r(rejected) on each task's {run.eval_split} pairs after the last task: "
             f"{_beta(run)} times how much more the log-probability of the chosen response rose, against the model "
             "before training, than that of the rejected one (0 before training; mean over seeds, ± the 95% "
             "t-interval over seeds, none with one seed)."), "",
            markdown_table(run, units, margin_columns(run.tasks), rank_by="acc_cil"), ""]


def _general_section(run: RunData, scores: dict[str, dict[str, float]]) -> list[str]:
    """Perplexity and KL from the base model on the stream's held-out general text, before training and after
    each task, per method; nothing for a run without ``general`` records."""
    general = general_ability(run)
    units = method_units(run, {unit: {**s, **general[unit]} for unit, s in scores.items() if unit in general})
    if not units:
        return []
    return ["## General ability", "",
            ("Perplexity and KL from the base model (the model before training) on held-out general text (the "
             "stream's `general` corpus), which no task trains on, before training and after each task (mean over "
             "seeds, ± the 95% t-interval over seeds, none with one seed). Perplexity is exp of the mean per-token "
             "negative log-likelihood of that text. KL (in nats) is the mean over its token positions of "
             f"KL(p_base ‖ p_model), both distributions reduced to the base model's {GENERAL_TOPK} most likely "
             "tokens at that position plus one bucket for all others: a lower bound of the full KL, 0 before "
             "training."), "",
            markdown_table(run, units, general_columns(run.tasks), rank_by="acc_cil"), ""]


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
    scores = unit_scores(run)
    units = method_units(run, scores)
    tasks = run.tasks
    out = run.path / PLOTS
    out.mkdir(exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()  # a plot skipped this time must not leave a stale file behind
    colours = plots.method_palette(run.methods)
    memory_note = "peak GPU memory" if run.on_cuda else "CPU run: peak RSS"
    scenario = run.scenario
    lines = [f"# clbench report: {run.name}", "", "## Findings", "", *findings(run, units), ""]
    summary = plots.stability_plasticity(run, units, colours, out / "stability_plasticity.png")
    if summary is None:
        lines += ["![Stability against plasticity per method](plots/stability_plasticity.png)", "",
                  ("Per method: accuracy on each new task right after learning it (x) against accuracy on the "
                   f"earlier tasks after the last task (y), {scenario.label}, mean over seeds with 95% intervals; "
                   "dashed lines: chance. Up and to the right is better; hollow points († in the tables) mark a "
                   "method with a unit that did not learn every task."), ""]
    lines += header(run) + provenance_section(run)

    lines += [f"## Summary: {scenario.label}", ""]
    if units:
        functional = "; functional drift on the evaluated inputs of earlier learned tasks" \
            if scenario.functional_drift else ""
        lines += [markdown_table(run, units, cil_columns(scenario)), "", TABLE_LEGEND, "",
                  (f"Peak memory: {memory_note}. Δθ: fractional Frobenius change of the weights over the last "
                   f"task, of the {scenario.layers} layers alone over the last task, and since the start{functional} "
                   "(see Definitions)."), ""]
    else:
        lines += ["No unit has finished yet: nothing to summarise.", ""]
    if units:
        chance = " | ".join(f"{run.chance(t)[0]:.3f}" for t in range(len(tasks)))
        measured = all(run.chance(t)[1] for t in range(len(tasks)))
        lines += ["## Learning each task", "",
                  (f"{scenario.accuracy.capitalize()} on each task right after training it (R[t, t], plasticity); "
                   "† marks a method with a unit that did not learn the task (its 95% interval not above chance)."),
                  "", markdown_table(run, units, task_columns(tasks, "cil"), rank_by="acc_cil"),
                  f"| chance ({scenario.chance_row if measured else '1/classes'}) | | {chance} |", ""]
    if units and scenario.reward_margin:
        lines += _margin_section(run, units)
    lines += _general_section(run, scores)
    if scenario.task_aware:
        lines += ["## Summary: task-aware", ""]
        lines += [markdown_table(run, units, til_columns()), "", TABLE_LEGEND, ""] if units else \
            ["No unit has finished yet.", ""]

    task_aware: list[tuple[str, str, str, Callable[[Path], str | None]]] = [
        ("Accuracy matrices", "accuracy_matrices_task_aware.png", "The same with task-aware accuracy.",
         lambda p: plots.accuracy_heatmaps(run, "acc_til", colours, p))] if scenario.task_aware else []
    against = "weight drift and against functional drift" if scenario.functional_drift else "weight drift"
    figures: list[tuple[str, str, str, Callable[[Path], str | None]]] = [
        ("Accuracy matrices", "accuracy_matrices.png",
         f"Mean {scenario.accuracy} matrix per method over seeds (row: after training that task).",
         lambda p: plots.accuracy_heatmaps(run, "acc_cil", colours, p)),
        *task_aware,
        ("Accuracy along training", "accuracy_curves.png",
         (f"{scenario.accuracy.capitalize()} on each task along training (mean over seeds, band: min–max); dotted "
         "lines mark where the next task starts."),
         lambda p: plots.accuracy_curves(run, colours, p)),
        ("Per-layer weight change", "layer_drift.png",
         ("Fractional Frobenius change ‖ΔW‖_F / ‖W‖_F of each layer's weights over each task (mean over seeds; "
         "LoRA on effective weights with α/r), as in the FIP paper's Figure 1."),
         lambda p: plots.layer_drift(run, colours, p)),
        ("Forgetting against drift", "forgetting_vs_drift.png",
         f"{scenario.label.capitalize()} forgetting against {against}, one point per unit.",
         lambda p: plots.forgetting_vs_drift(run, scores, colours, p)),
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


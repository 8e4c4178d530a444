"""What a search leaves behind: `tuned.yaml` (a config `clbench run --config` replays on test) and
`tuning.md` with `plots/tuning.png` (per method: the chosen values, the objective, trials run and pruned)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from clbench.config import RunConfig, config_file_yaml
from clbench.tuning.settings import TUNED, TuneSettings

SUMMARY = "tuning.md"


def studies(config: RunConfig, storage: Any) -> dict[str, Any]:
    import optuna

    return {name: optuna.load_study(study_name=name, storage=storage) for name in config.methods}


def best_trial(study: Any) -> Any | None:
    """The finished trial with the highest objective, or None when every trial was pruned or failed."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def write_tuned(out: Path, config: RunConfig, settings: TuneSettings, storage: Any, command: str | None) -> Path:
    """tuned.yaml: the run configuration with each method's best values, the evaluation seeds, provenance."""
    sections: dict[str, dict[str, Any]] = {}
    chosen: dict[str, Any] = {}
    for name, study in studies(config, storage).items():
        best = best_trial(study)
        sections[name] = {**config.method_options.get(name, {}), **(best.params if best else {})}
        chosen[name] = {"trial": best.number, "validation_acc": best.value, "values": best.params} if best else \
            "no finished trial: the method keeps its defaults"
    provenance = {"tuned_by": "clbench tune", "tuning_dir": str(out), "command": command,
                  "tuned_on": settings.tune_stream or config.stream, "selected_on": "validation",
                  "test_data_read": False, "objective": f"validation {settings.objective} ACC after the last task",
                  "budget": f"{settings.trials} trials per method", "search_seeds": list(config.seeds),
                  "chosen": chosen}
    tuned = replace(config, seeds=settings.eval_seeds, out=None, method_options=sections, provenance=provenance)
    header = (f"# {command or 'clbench tune'}\n# Hyper-parameters chosen on validation data of "
              f"'{settings.tune_stream or config.stream}' (test data were not read); run with:\n"
              f"#   clbench run --config {out / TUNED} --out DIR\n")
    path = out / TUNED
    path.write_text(header + config_file_yaml(tuned), encoding="utf-8")
    return path


def write_summary(out: Path, config: RunConfig, settings: TuneSettings, storage: Any,
                  budgets: list[int] | None = None) -> Path:
    """tuning.md and plots/tuning.png; `budgets`: the trials per method the search has had, oldest first
    (more than one when `--resume` extended it)."""
    import optuna

    states = optuna.trial.TrialState
    extended = f", extended with --resume from {' then '.join(map(str, budgets[:-1]))}" if budgets and \
        len(budgets) > 1 else ""
    lines = [f"# clbench tuning: {out.name}", "",
             (f"Objective: validation {settings.objective} ACC after the last task of "
              f"**{settings.tune_stream or config.stream}**, mean over search seeds {list(config.seeds)}; "
              f"{settings.trials} trials per method{extended} (Optuna TPE, seed {settings.sampler_seed}; pruner "
              f"{settings.pruner}). Test data were not read. `tuned.yaml` replays the chosen values on test with "
              f"seeds {list(settings.eval_seeds)}."), "",
             ("| method | trials finished / pruned / failed | best validation ACC | sd over search seeds | chosen values "
             "| search time (s) |"), "|---|---|---:|---:|---|---:|"]
    all_studies = studies(config, storage)
    for name, study in all_studies.items():
        trials = study.get_trials(deepcopy=False)
        distinct = [t for t in trials if "repeat_of" not in t.user_attrs]
        count = {s: sum(t.state == s for t in distinct) for s in (states.COMPLETE, states.PRUNED, states.FAIL)}
        seconds = sum(float(t.user_attrs.get("seconds", 0.0)) for t in trials)
        repeats = len(trials) - len(distinct)
        counts = f"{count[states.COMPLETE]} / {count[states.PRUNED]} / {count[states.FAIL]}" + (
            f" (+{repeats} draws of earlier values, not re-run or counted)" if repeats else "")
        best = best_trial(study)
        scores = best.user_attrs.get("seed_scores", []) if best else []
        spread = f"{np.std(scores, ddof=0):.3f}" if len(scores) > 1 else "– (one seed)"
        values = ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()) if best else "–"
        lines.append(f"| {name} | {counts} | {best.value:.3f} | {spread} | {values} | {seconds:.0f} |" if best else
                     f"| {name} | {counts} | – | – | – | {seconds:.0f} |")
    lines += ["", ("![Validation ACC of every trial, in order; pruned trials at their last reported value]"
              "(plots/tuning.png)"), "", ("Every trial with its values, state and objective: `trials.csv`; its run "
              "(records, config, environment): `trials/<method>/<number>/`."), ""]
    plot_trials(all_studies, out / "plots" / "tuning.png")
    write_trials_csv(all_studies, out / "trials.csv")
    path = out / SUMMARY
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def write_trials_csv(all_studies: dict[str, Any], path: Path) -> None:
    """One row per trial: method, number, state, objective (or last reported value), seconds, values."""
    import csv

    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "trial", "state", "validation_acc", "last_reported", "seed_scores", "seconds",
                         "values", "repeat_of"])
        for name, study in all_studies.items():
            for t in study.get_trials(deepcopy=False):
                last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else ""
                writer.writerow([name, t.number, t.state.name.lower(), "" if t.value is None else t.value, last,
                                 t.user_attrs.get("seed_scores", ""), round(float(t.user_attrs.get("seconds", 0)), 1),
                                 "; ".join(f"{k}={v}" for k, v in t.params.items()), t.user_attrs.get("repeat_of", "")])


def plot_trials(all_studies: dict[str, Any], path: Path) -> None:
    """Validation ACC per trial for each method: dots finished, crosses pruned (their last reported value)."""
    import optuna

    from clbench.reporting.plots import _figure, _save, method_palette

    colours = method_palette(list(all_studies))
    fig = _figure(7.5, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for name, study in all_studies.items():
        for trial in study.get_trials(deepcopy=False):
            if trial.state == optuna.trial.TrialState.COMPLETE:
                ax.scatter(trial.number, trial.value, color=colours[name], marker="o", s=28)
            elif trial.state == optuna.trial.TrialState.PRUNED and trial.intermediate_values:
                last = trial.intermediate_values[max(trial.intermediate_values)]
                ax.scatter(trial.number, last, color=colours[name], marker="x", s=28)
        ax.plot([], [], color=colours[name], marker="o", linestyle="", label=name)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are numbered, not measured
    ax.set_xlabel("trial")
    ax.set_ylabel("validation ACC (fraction)")
    ax.legend(loc="best", fontsize=8)
    _save(fig, path)


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)

"""The search: one Optuna study per method, the same trial budget for each, chosen on validation data.

A trial is an ordinary run of one method (every search seed) into `DIR/trials/<method>/<number>/` with the
trial's values in the method's section, `eval_split: val` (the stream is built without its test data, so no
test example is read) and the tuning stream. Its objective is the validation ACC after the whole stream
(`clbench.evaluators.average_accuracy` of the class-incremental matrix by default), averaged over seeds; a
unit that fails (e.g. diverges) scores 0. After each task, and every `--prune-every` steps within a task, the
mean validation accuracy over the tasks seen so far is reported to the study's pruner, which may stop a hopeless
trial early. As neither reads a task not yet trained, a trial evaluates only the tasks it has trained so far
(after row 0): its matrix is empty above the diagonal.

What the trials share: the tokenised stream (prepared once), row 0, and the trained first task of every
(seed, learning rate, budget) already seen (`clbench.training.sharing.SharedStart`, with its evaluations along
training), so a trial of a method whose first task is plain fine-tuning trains it only when no earlier trial did
with the same settings.

The study lives in `DIR/study.journal` (Optuna's journal storage): `--resume` continues a killed search
without repeating finished or pruned trials; a trial that was running when the search died is marked failed
and does not count towards the budget. No trial is ever continued, so trials save no checkpoints. Samplers
are seeded (TPE, seed = `sampler_seed` + the method's position), so a search that is not interrupted is
reproducible. `--resume` with a larger `--trials` extends every method's search to that budget; while the number
of random startup trials stays the same (`sampler`), it draws what a search given that budget at once draws, as
TPE's own generator is not used before the startup trials are done.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from clbench.config import RunConfig, dump_yaml, from_saved, load_yaml, validate
from clbench.data.prepare import prepare
from clbench.data.streams import load_stream_spec
from clbench.errors import ClbenchError, ConfigError, RunDirError
from clbench.evaluators.accuracy import average_accuracy
from clbench.registry import MethodRegistry
from clbench.reporting.rundata import accuracy_matrices
from clbench.results import RunDir, read_records
from clbench.search import Choice, IntRange
from clbench.training.progress import Progress
from clbench.training.run import run
from clbench.training.sharing import SharedStart
from clbench.tuning.settings import OBJECTIVES, PRUNERS, SETTING_DEFAULTS, SETTINGS, STUDY, TuneSettings
from clbench.tuning.space import Param, method_space


class Pruned(Exception):
    """Raised from inside a trial's run when the pruner stops it (not an error: the search goes on)."""


@dataclass
class PruningObserver:
    """Reports a trial's mean validation accuracy over the tasks seen so far to the study's pruner, at every
    evaluation along training (`eval_every`, set by `--prune-every`) and after each task; raises `Pruned` when
    the pruner says the trial cannot catch up.

    The step of a report is the number of training steps the trial has taken so far, over its tasks and seeds
    in order, so trials of one method are compared at the same amount of training, and a halving pruner's
    rungs are fractions of the whole trial.
    """

    trial: Any
    objective: str
    seeds: Sequence[int]
    finished_steps: int = 0  # training steps of the tasks finished so far (every seed)

    def __call__(self, records: list[dict[str, Any]]) -> None:
        points: dict[tuple[int, int, int, str], list[float]] = {}  # (seed position, row, step, type): values
        for r in records:
            if r["type"] in ("accuracy", "curve") and r["metric"] == self.objective and r["row"] >= 1 \
                    and r["eval_index"] < r["row"]:
                key = (self.seeds.index(int(r["seed"])), int(r["row"]), int(r.get("step") or 0), r["type"])
                points.setdefault(key, []).append(float(r["value"]))
        for (_, _, step, kind), values in sorted(points.items()):
            self.trial.report(float(np.mean(values)), self.finished_steps + step)
            if kind == "accuracy":  # the task is finished: its steps count from now on
                self.finished_steps += step
            if self.trial.should_prune():
                raise Pruned


def check_settings(config: RunConfig, settings: TuneSettings) -> list[str]:
    """Every problem of the search settings, as one-line messages."""
    errors = []
    if importlib.util.find_spec("optuna") is None:
        errors.append("clbench tune needs Optuna, which is not installed; install the extra: "
                      "pip install 'clbench[tune]'")
    if settings.trials < 1:
        errors.append(f"--trials {settings.trials} must be at least 1")
    if settings.objective not in OBJECTIVES:
        errors.append(f"--objective '{settings.objective}' must be one of {', '.join(OBJECTIVES)}")
    if settings.pruner not in PRUNERS:
        errors.append(f"--pruner '{settings.pruner}' must be one of {', '.join(PRUNERS)}")
    if settings.prune_every < 0:
        errors.append(f"--prune-every {settings.prune_every} must be 0 (prune after tasks only) or a positive "
                      "number of steps")
    if not settings.eval_seeds or len(set(settings.eval_seeds)) != len(settings.eval_seeds):
        errors.append(f"--eval-seeds {list(settings.eval_seeds)} must list distinct seeds, e.g. 0,1,2")
    if config.out is None:
        errors.append("clbench tune needs --out DIR for the study, the trials and tuned.yaml")
    if settings.tune_stream is not None:
        try:
            tasks = (len(load_stream_spec(config.stream).tasks), len(load_stream_spec(settings.tune_stream).tasks))
        except ClbenchError as exc:
            errors.append(str(exc))
        else:
            if tasks[0] != tasks[1]:
                errors.append(f"--tune-stream '{settings.tune_stream}' has {tasks[1]} tasks but --stream "
                              f"'{config.stream}' has {tasks[0]}; tune on a stream of the same length")
    return errors


def tune(config: RunConfig, settings: TuneSettings, *, registry: MethodRegistry | None = None,
         progress: Progress | None = None, command: str | None = None, resume: bool = False) -> Path:
    """Search every method of `config` with the same budget and write `DIR/tuned.yaml` and `DIR/tuning.md`.

    Args:
        config: what to train (methods, stream, model, search seeds, sizes); `out` is the tuning directory.
        settings: how to search.
        resume: continue the search in `config.out` (same configuration and settings).

    Returns:
        The path of tuned.yaml.

    Raises:
        ClbenchError: bad input, found before any trial runs.
    """
    registry = registry or MethodRegistry.default(config.plugins)
    search_config = replace(config, stream=settings.tune_stream or config.stream, eval_split="val", out=None)
    errors = check_settings(config, settings)
    try:
        validate(search_config, registry)
    except ClbenchError as exc:
        errors.append(str(exc))
    spaces: dict[str, list[Param]] = {}
    for name in config.methods if not errors else ():
        try:
            spaces[name] = method_space(name, registry.get(name), settings.params, config.max_steps is not None)
        except ClbenchError as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError("; ".join(errors))
    import optuna  # the 'tune' extra, checked with the settings

    out = Path(str(config.out))
    progress = progress or Progress()
    budgets = check_tuning_dir(out, config, settings, resume)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with RunDir(out) as tuning_dir:
        if not resume:
            tuning_dir.write_text(SETTINGS, dump_yaml(replace(config, provenance={"tune": settings.to_dict(),
                                                                                   "command": command})))
        elif budgets[-1] != settings.trials:  # extended: a later resume checks against the larger budget
            saved = from_saved(load_yaml(out / SETTINGS))
            budgets = [*budgets, settings.trials]
            provenance = {**(saved.provenance or {}), "tune": settings.to_dict(), "budgets": budgets}
            tuning_dir.write_text(SETTINGS, dump_yaml(replace(saved, provenance=provenance)))
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(JournalFileBackend(str(out / STUDY)))
        prepared = prepare(search_config)
        shared = SharedStart(max_seeds=len(config.seeds))
        for position, name in enumerate(config.methods):
            study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                        load_if_exists=True, sampler=sampler(settings, position),
                                        pruner=pruner(settings))
            run_trials(study, name, spaces[name], search_config, settings, out, prepared, shared, registry,
                       progress)
        from clbench.tuning.summary import write_summary, write_tuned

        tuned = write_tuned(out, config, settings, storage, command)
        write_summary(out, config, settings, storage, budgets)
    return tuned


def sampler(settings: TuneSettings, position: int) -> Any:
    """TPE, seeded per method; random for the first third of the budget (at least 3 trials)."""
    import optuna

    startup = min(settings.trials, max(3, settings.trials // 3))
    return optuna.samplers.TPESampler(seed=settings.sampler_seed + position, n_startup_trials=startup)


def pruner(settings: TuneSettings) -> Any:
    """Stop a trial whose running validation accuracy is below the 25th percentile (or median) of earlier
    trials at the same point of training, once 3 trials have finished; or, with `halving`, successive halving
    (Jamieson & Talwalkar 2016; Li et al. 2020, ASHA): at rungs of 1, 3, 9, ... times a minimum amount of
    training, only the best third of the trials that reached a rung go on."""
    import optuna

    if settings.pruner == "none":
        return optuna.pruners.NopPruner()
    if settings.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource="auto", reduction_factor=3)
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3)
    return optuna.pruners.PercentilePruner(25.0, n_startup_trials=3)


def run_trials(study: Any, name: str, params: list[Param], search_config: RunConfig, settings: TuneSettings,
               out: Path, prepared: Any, shared: SharedStart, registry: MethodRegistry, progress: Progress) -> None:
    """Run trials of one method until its budget is spent: `settings.trials` distinct sets of values evaluated
    (finished or pruned), or every set a finite space holds when it holds fewer.

    A draw of values already evaluated runs nothing and does not count: it is told the earlier result (so the
    sampler learns from it) and marked `repeat_of`; in a finite space (every parameter a `Choice` or an
    `IntRange`) the next trial is then an unevaluated set, drawn with a generator seeded by the search's seed
    and the trial's number. Without that, a method whose space is a five-value grid (the learning rate) would
    get fewer distinct evaluations than a method searching a continuous range for the same budget.
    """
    import optuna

    for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(stale.number, state=optuna.trial.TrialState.FAIL)  # the search was killed during it
    grid = value_grid(params)
    budget = settings.trials if grid is None else min(settings.trials, len(grid))
    repeats_in_a_row = 0
    while len(evaluated(study)) < budget:
        trial = study.ask()
        values = {p.name: p.sample(trial) for p in params}
        earlier = same_values(study, values)
        if earlier is not None:  # a seeded run repeats exactly: tell the earlier result, run nothing, count nothing
            trial.set_user_attr("seconds", 0.0)
            trial.set_user_attr("repeat_of", earlier.number)
            if "seed_scores" in earlier.user_attrs:
                trial.set_user_attr("seed_scores", earlier.user_attrs["seed_scores"])
            study.tell(trial, earlier.value, state=earlier.state)
            progress.message(f"tune {name}: trial {trial.number} drew trial {earlier.number}'s values {values} "
                             "again; nothing re-run, not counted")
            repeats_in_a_row += 1
            if grid is not None:
                done = [t.params for t in evaluated(study)]
                untried = [g for g in grid if g not in done]
                rng = np.random.default_rng([settings.sampler_seed, trial.number])
                study.enqueue_trial(untried[int(rng.integers(len(untried)))])
            elif repeats_in_a_row >= MAX_REPEATS:
                progress.message(f"tune {name}: {MAX_REPEATS} draws in a row repeated earlier values; stopping "
                                 f"with {len(evaluated(study))} of {budget} trials")
                return
            continue
        repeats_in_a_row = 0
        config = trial_config(search_config, name, values, out / "trials" / name / f"{trial.number:03d}",
                              settings.prune_every)
        Path(str(config.out)).parent.mkdir(parents=True, exist_ok=True)
        observer = PruningObserver(trial, settings.objective, config.seeds)
        started = time.perf_counter()
        try:
            run(config, registry=registry, progress=Progress("quiet"), prepared=prepared, shared=shared,
                observer=observer, checkpoint=False, evaluate_unseen=False)
        except Pruned:
            trial.set_user_attr("seconds", time.perf_counter() - started)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            progress.message(f"tune {name}: trial {trial.number} pruned {values}")
            continue
        scores = seed_scores(Path(str(config.out)), settings.objective, config.seeds, len(prepared.infos))
        trial.set_user_attr("seconds", time.perf_counter() - started)
        trial.set_user_attr("seed_scores", scores)
        study.tell(trial, float(np.mean(scores)))
        progress.message(f"tune {name}: trial {trial.number} validation ACC {np.mean(scores):.3f} {values}")


MAX_REPEATS = 20  # draws in a row of already evaluated values, in a continuous space, before a method stops


def value_grid(params: list[Param]) -> list[dict[str, Any]] | None:
    """Every set of values a finite space holds (each parameter a `Choice` or an `IntRange`), or None."""
    import itertools

    spaces = [p.space for p in params]
    if not params or not all(isinstance(s, (Choice, IntRange)) for s in spaces):
        return None
    grids = [s.grid() for s in spaces if isinstance(s, (Choice, IntRange))]
    return [dict(zip((p.name for p in params), combo)) for combo in itertools.product(*grids)]


def evaluated(study: Any) -> list[Any]:
    """The trials that count towards a method's budget: finished or pruned, and not a repeat of earlier values."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [t for t in study.get_trials(deepcopy=False, states=states) if "repeat_of" not in t.user_attrs]


def same_values(study: Any, values: dict[str, Any]) -> Any | None:
    """The earliest finished or pruned trial of `study` with exactly these values, or None."""
    return next((t for t in evaluated(study) if t.params == values), None)


def trial_config(search_config: RunConfig, name: str, values: dict[str, Any], out: Path, prune_every: int = 0
                 ) -> RunConfig:
    """The run of one trial: one method, the trial's values in its section, into `out`; with `prune_every`, it
    also evaluates every that many steps (unless the configuration sets its own `eval_every`)."""
    section = {**search_config.method_options.get(name, {}), **values}
    every = search_config.eval_every or prune_every
    return replace(search_config, methods=(name,), out=str(out), method_options={name: section}, eval_every=every)


def seed_scores(run_dir: Path, objective: str, seeds: Sequence[int], num_tasks: int) -> list[float]:
    """Validation ACC after the whole stream per seed (0 for a unit that did not finish, e.g. diverged)."""
    matrices = accuracy_matrices(read_records(run_dir), objective, num_tasks)
    scores = []
    for seed in seeds:
        R = next((m for unit, m in matrices.items() if unit.endswith(f"/seed{seed}")), None)
        scores.append(0.0 if R is None or np.isnan(R[-1]).any() else average_accuracy(R))
    return scores


def check_tuning_dir(out: Path, config: RunConfig, settings: TuneSettings, resume: bool) -> list[int]:
    """A new search needs an empty place; a resumed one the same configuration and settings, with a budget
    (`--trials`) at least the saved one: a larger budget extends every method's search to it.

    Returns:
        The budgets the search has had so far, oldest first (the current one for a new search).
    """
    saved = out / SETTINGS
    if not resume:
        if saved.exists() or (out / STUDY).exists():
            raise RunDirError(f"'{out}' already holds a search; pass --resume to continue it or choose another --out")
        return [settings.trials]
    if not saved.is_file():
        raise RunDirError(f"nothing to resume in '{out}' (no {SETTINGS}); run without --resume or fix --out")
    saved_config = from_saved(load_yaml(saved))
    before = {k: v for k, v in saved_config.to_dict().items() if k not in ("provenance", "out")}
    now = {k: v for k, v in config.to_dict().items() if k not in ("provenance", "out")}
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    provenance = saved_config.provenance or {}
    saved_settings = {**SETTING_DEFAULTS, **(provenance.get("tune") or {})}
    if {**saved_settings, "trials": None} != {**settings.to_dict(), "trials": None}:
        changed.append("search settings")
    if changed:
        raise RunDirError(f"--resume: '{out}' was searched with a different configuration ({', '.join(changed[:6])});"
                          " resume with the same flags or choose another --out")
    trials = int(saved_settings["trials"])
    if settings.trials < trials:
        raise RunDirError(f"--resume: --trials {settings.trials} is below the {trials} trials per method that "
                          f"'{out}' was searched with; pass --trials {trials} to finish it, or more to extend it")
    return [int(b) for b in provenance.get("budgets", [trials])]

"""`clbench tune`: equal budgets, validation only (the test set is never read), resumable, replayable."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
from click.testing import CliRunner

from clbench.cli import main
from clbench.config import build_config, from_saved, load_yaml, validate
from clbench.registry import MethodRegistry
from clbench.training.progress import Progress
from clbench.tuning import search
from clbench.tuning.search import Pruned, PruningObserver, tune
from clbench.tuning.settings import TuneSettings
from clbench.tuning.space import method_space

SMALL = {"stream": "synthetic", "model": "tiny", "train_size": 60, "test_size": 24, "max_steps": 3,
         "batch_size": 8, "eval_batch_size": 32, "buffer_size": 8, "seeds": [0]}


def small_config(tmp_path: Path, methods: tuple[str, ...], **overrides: Any) -> Any:
    return build_config({**SMALL, "methods": list(methods), "out": str(tmp_path / "tune"), **overrides})


def trial_values(out: Path) -> dict[tuple[str, int], tuple[float | None, dict[str, Any]]]:
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(out / "study.journal")))
    return {(s.study_name, t.number): (t.value, t.params)
            for s in optuna.get_all_study_summaries(storage)
            for t in optuna.load_study(study_name=s.study_name, storage=storage).get_trials()}


def test_every_builtin_search_space_samples_values_the_config_accepts() -> None:
    registry = MethodRegistry.default([])
    builtins = [n for n in registry.names() if not n.startswith("avalanche:")]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    searched = 0
    for name in builtins:
        params = method_space(name, registry.get(name))
        assert {p.name for p in params} >= {"lr", "epochs"}  # the run's shared fields, for every method
        for _ in range(5):
            trial = study.ask()
            section = {p.name: p.sample(trial) for p in params}
            config = build_config({**SMALL, "methods": [name]}, {f"{name}.{k}": v for k, v in section.items()})
            validate(config, registry)  # raises on any sampled value the method or the run refuses
            searched += len(section)
    assert searched > 5 * 2 * len(builtins)  # methods declare spaces of their own beyond lr and epochs


def test_max_steps_drops_epochs_and_params_restrict_the_search() -> None:
    ewc = MethodRegistry.default([]).get("ewc")
    assert [p.name for p in method_space("ewc", ewc, fixed_steps=True)] == ["lr", "penalty_weight"]
    assert [p.name for p in method_space("ewc", ewc, ("ewc.penalty_weight",))] == ["penalty_weight"]
    with pytest.raises(Exception, match="no search space for ewc"):
        method_space("ewc", ewc, ("ewc.gamma",))


class Trial:
    """Records what a trial reports; asks to prune once it has `prune_after` reports."""

    def __init__(self, prune_after: int = 99) -> None:
        self.reports: list[tuple[float, int]] = []
        self.prune_after = prune_after

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return len(self.reports) >= self.prune_after


def evaluation(kind: str, seed: int, row: int, step: int, values: tuple[float, ...]) -> list[dict[str, Any]]:
    return [{"type": kind, "metric": "acc_cil", "seed": seed, "row": row, "step": step, "eval_index": j, "value": v}
            for j, v in enumerate(values)]


def test_the_pruner_sees_running_validation_accuracy_over_the_tasks_seen() -> None:
    trial = Trial(prune_after=2)
    observer = PruningObserver(trial, "acc_cil", seeds=[3, 5])
    row = evaluation("accuracy", 5, 2, 10, (0.9, 0.5, 0.0))  # task 3 not trained yet: left out
    observer(row + [{"type": "accuracy", "metric": "acc_til", "seed": 5, "row": 2, "step": 10, "eval_index": 0,
                     "value": 1.0}])
    assert trial.reports == [(0.7, 10)]
    with pytest.raises(Pruned):
        observer(evaluation("accuracy", 5, 3, 10, (0.9, 0.5, 0.3)))


def test_the_pruner_step_counts_training_steps_over_tasks_and_seeds_with_the_curve_between() -> None:
    """Two seeds of two tasks of 6 steps, evaluated every 3 steps: reports at 3, 6 (task 1 ends), 9, 12, then the
    second seed goes on from 12, so every trial of a method is compared at the same amount of training."""
    trial = Trial()
    observer = PruningObserver(trial, "acc_cil", seeds=[0, 1])
    for seed in (0, 1):
        observer(evaluation("curve", seed, 1, 3, (0.25, 0.0)))
        observer(evaluation("accuracy", seed, 1, 6, (0.5, 0.0)))
        observer(evaluation("curve", seed, 2, 3, (0.25, 0.75)))
        observer(evaluation("accuracy", seed, 2, 6, (0.25, 1.0)))
    assert trial.reports == [(0.25, 3), (0.5, 6), (0.5, 9), (0.625, 12),
                             (0.25, 15), (0.5, 18), (0.5, 21), (0.625, 24)]


def test_a_search_gives_every_method_the_same_budget_and_run_replays_it_on_test(tmp_path: Path) -> None:
    config = small_config(tmp_path, ("naive", "ewc"))
    tuned = tune(config, TuneSettings(trials=2, eval_seeds=(0, 1), pruner="none"), progress=Progress("quiet"))
    values = trial_values(tmp_path / "tune")
    assert sorted(values) == [("ewc", 0), ("ewc", 1), ("naive", 0), ("naive", 1)]
    assert all(v is not None for v, _ in values.values())
    text = tuned.read_text()
    assert text.startswith("# ") and "test data were not read" in text and "ewc:" in text
    assert (tmp_path / "tune" / "tuning.md").is_file() and (tmp_path / "tune" / "plots" / "tuning.png").is_file()
    for method in ("naive", "ewc"):  # each trial is an ordinary run on validation data only
        env = (tmp_path / "tune" / "trials" / method / "000" / "env.json").read_text()
        assert '"eval_split": "val"' in env and '"test": 0' in env
    out = tmp_path / "replay"
    result = CliRunner().invoke(main, ["run", "--config", str(tuned), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "Chosen by `clbench tune`" in report and "Test data were not read" in report
    assert '"eval_split": "test"' in (out / "env.json").read_text()


def test_values_drawn_again_are_not_run_again_nor_counted_and_a_small_grid_is_searched_whole(tmp_path: Path
                                                                                             ) -> None:
    """The learning rate has five choices: a budget of 7 evaluates each once (the space is smaller), and the
    draws that repeat an evaluated value run nothing and score the earlier result."""
    config = small_config(tmp_path, ("naive",))
    tune(config, TuneSettings(trials=7, params=("lr",), pruner="none"), progress=Progress("quiet"))
    out = tmp_path / "tune"
    values = trial_values(out)
    first: dict[float, tuple[int, float | None]] = {}
    for (_, number), (value, params) in sorted(values.items()):
        first.setdefault(params["lr"], (number, value))
        assert value == first[params["lr"]][1]  # a repeat scores what the first trial with its values scored
    assert sorted(first) == [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]  # every choice evaluated, none left out
    repeats = len(values) - len(first)
    assert repeats > 0  # this seeded search draws some values twice (checked: it would otherwise prove nothing)
    firsts = {number for number, _ in first.values()}
    after_repeats = [n + 1 for n in range(len(values)) if n not in firsts and n + 1 < len(values)]
    assert all(n in firsts for n in after_repeats)  # a repeat is followed by an unevaluated value, not left to luck
    ran = sorted(int(d.name) for d in (out / "trials" / "naive").iterdir())
    assert ran == sorted(number for number, _ in first.values())  # only the first of each value set ran
    summary = (out / "tuning.md").read_text()
    assert f"| naive | 5 / 0 / 0 (+{repeats} draws of earlier values, not re-run or counted) |" in summary
    assert "– (one seed)" in summary  # no spread from one search seed


def test_a_budget_counts_distinct_values_so_a_grid_gets_as_many_evaluations_as_a_range(tmp_path: Path) -> None:
    config = small_config(tmp_path, ("naive", "ewc"))
    tune(config, TuneSettings(trials=4, params=("naive.lr", "ewc.penalty_weight"), pruner="none"),
         progress=Progress("quiet"))
    evaluated = {}
    for (method, number), (_, params) in trial_values(tmp_path / "tune").items():
        evaluated.setdefault(method, set()).add(tuple(params.values()))
    assert {m: len(v) for m, v in evaluated.items()} == {"naive": 4, "ewc": 4}


def test_a_continuous_space_that_keeps_repeating_stops_instead_of_looping(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    class Stuck:  # a space whose every draw is the same value
        def sample(self, trial: Any, name: str) -> float:
            return trial.suggest_float(name, 1e-4, 1e-4)

    monkeypatch.setattr(search, "method_space", lambda *args, **kwargs: [search.Param("lr", Stuck())])
    monkeypatch.setattr(search, "MAX_REPEATS", 2)
    config = small_config(tmp_path, ("naive",))
    tune(config, TuneSettings(trials=3, pruner="none"), progress=Progress("quiet"))
    values = trial_values(tmp_path / "tune")
    assert len(values) == 3 and len(list((tmp_path / "tune" / "trials" / "naive").iterdir())) == 1


def test_the_test_set_is_never_read_while_tuning(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rows = "\n".join(f"{'red' if i % 2 else 'blue'} thing {i},{'ab'[i % 2]}" for i in range(80))
    (data / "train.csv").write_text("text,label\n" + rows + "\n")
    (data / "test.csv").write_text("text,label\n" + rows.replace("thing", "held") + "\n")
    stream = tmp_path / "user.yaml"
    stream.write_text("name: user\nversion: 1\nseed: 0\ntasks:\n"
                      "  - {name: t1, source: files, classes: [a, b], train: data/train.csv, test: data/test.csv,"
                      " train_size: 60, test_size: 20, max_length: 16}\n"
                      "  - {name: t2, source: files, classes: [c, d], train: data/train.csv, test: data/test.csv,"
                      " train_size: 60, test_size: 20, max_length: 16, label_map: {a: c, b: d}}\n")
    settings = TuneSettings(trials=2, pruner="none")
    tune(small_config(tmp_path / "clean", ("naive",), stream=str(stream)), settings, progress=Progress("quiet"))
    (data / "test.csv").write_bytes(b"\x00\xff poisoned")
    tune(small_config(tmp_path / "poisoned", ("naive",), stream=str(stream)), settings, progress=Progress("quiet"))
    assert trial_values(tmp_path / "clean" / "tune") == trial_values(tmp_path / "poisoned" / "tune")


def test_a_killed_search_resumes_without_repeating_finished_trials(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    config = small_config(tmp_path, ("naive",))
    settings = TuneSettings(trials=3, pruner="none")
    real_run = search.run
    calls: list[str] = []

    def killed_on_the_second_trial(config: Any, **kwargs: Any) -> Path:
        calls.append(config.out)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run(config, **kwargs)

    monkeypatch.setattr(search, "run", killed_on_the_second_trial)
    with pytest.raises(KeyboardInterrupt):
        tune(config, settings, progress=Progress("quiet"))
    first = tmp_path / "tune" / "trials" / "naive" / "000" / "results.jsonl"
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    calls.clear()
    monkeypatch.setattr(search, "run", lambda config, **kwargs: (calls.append(config.out), real_run(config, **kwargs))[1])
    with pytest.raises(Exception, match="already holds a search"):
        tune(config, settings, progress=Progress("quiet"))  # a fresh search refuses the directory
    tune(config, settings, progress=Progress("quiet"), resume=True)
    # trial 0 kept, trial 1 (killed) marked failed, and two more runs spend the rest of the budget of 3; a draw
    # of trial 0's values again runs nothing
    assert len(calls) == 2 and all(int(Path(c).name) >= 2 for c in calls)
    assert hashlib.sha256(first.read_bytes()).hexdigest() == digest
    values = trial_values(tmp_path / "tune")
    states = {n: v is not None for (_, n), (v, _) in values.items()}
    assert states[0] and not states[1] and all(states[n] for n in states if n >= 2)
    assert len({params["lr"] for (_, n), (v, params) in values.items() if v is not None}) == 3
    with pytest.raises(Exception, match="different configuration"):
        tune(small_config(tmp_path, ("naive",), max_steps=4), settings, progress=Progress("quiet"), resume=True)


def test_a_larger_budget_on_resume_extends_every_method_as_a_search_with_that_budget_would(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """3 trials, then --resume with --trials 5: only the new trials run, and every method ends with the values
    and objectives of a 5-trial search run in one go (both have 3 random startup trials before TPE)."""
    methods, quiet = ("naive", "ewc"), Progress("quiet")
    extended, whole = tmp_path / "extended", tmp_path / "whole"
    tune(small_config(tmp_path, methods, out=str(extended)), TuneSettings(trials=3, pruner="none"), progress=quiet)
    saved = (extended / "tune.yaml").read_bytes()
    with pytest.raises(Exception, match="--trials 2 is below the 3 trials"):
        tune(small_config(tmp_path, methods, out=str(extended)), TuneSettings(trials=2, pruner="none"),
             progress=quiet, resume=True)
    assert (extended / "tune.yaml").read_bytes() == saved
    real_run = search.run
    calls: list[str] = []
    monkeypatch.setattr(search, "run", lambda config, **kwargs: (calls.append(config.out), real_run(config, **kwargs))[1])
    tune(small_config(tmp_path, methods, out=str(extended)), TuneSettings(trials=5, pruner="none"), progress=quiet,
         resume=True)
    ran = [(Path(c).parent.name, int(Path(c).name)) for c in calls]  # naive's later trials include repeated draws
    assert sorted(m for m, _ in ran) == ["ewc", "ewc", "naive", "naive"] and all(n >= 3 for _, n in ran)
    tune(small_config(tmp_path, methods, out=str(whole)), TuneSettings(trials=5, pruner="none"), progress=quiet)
    assert trial_values(extended) == trial_values(whole)
    for method in methods:  # each spent the whole budget: 5 distinct sets of values
        assert len({str(params) for (m, _), (_, params) in trial_values(whole).items() if m == method}) == 5
    assert "5 trials per method, extended with --resume from 3 (Optuna" in (extended / "tuning.md").read_text()
    assert "extended" not in (whole / "tuning.md").read_text()
    assert load_yaml(extended / "tuned.yaml")["provenance"]["budget"] == "5 trials per method"
    calls.clear()
    tune(small_config(tmp_path, methods, out=str(extended)), TuneSettings(trials=5, pruner="none"), progress=quiet,
         resume=True)  # the extended budget is now the saved one: nothing left to run
    assert calls == []
    with pytest.raises(Exception, match="--trials 3 is below the 5 trials"):
        tune(small_config(tmp_path, methods, out=str(extended)), TuneSettings(trials=3, pruner="none"),
             progress=quiet, resume=True)


def test_prune_every_stops_trials_within_a_task(tmp_path: Path) -> None:
    """Successive halving with a report every 2 steps: a trial whose running validation accuracy falls behind
    stops before its task ends (its last report is not a task's end)."""
    config = small_config(tmp_path, ("naive",), max_steps=6, seeds=[0, 1])
    tune(config, TuneSettings(trials=5, params=("lr",), pruner="halving", prune_every=2), progress=Progress("quiet"))
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "tune" / "study.journal")))
    trials = optuna.load_study(study_name="naive", storage=storage).get_trials()
    first = trials[0]  # 2 seeds x 3 tasks x 6 steps, a report every 2 steps
    assert first.state == optuna.trial.TrialState.COMPLETE and sorted(first.intermediate_values) == \
        list(range(2, 37, 2))
    task_ends = {6, 12, 18, 24, 30, 36}
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and all(max(t.intermediate_values) not in task_ends for t in pruned)
    assert len(list((tmp_path / "tune" / "trials" / "naive").iterdir())) == len(evaluated_trials(trials))


def test_trials_save_no_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial is never continued (a search killed during one marks it failed), so it writes no checkpoint: not
    after its non-final tasks, and none left behind by a trial pruned after its first task."""
    from clbench.training.checkpoint import CheckpointStore

    saved: list[tuple[str, int]] = []
    original = CheckpointStore.save

    def save(self: CheckpointStore, name: str, seed: int, *args: Any, **kwargs: Any) -> None:
        saved.append((name, seed))
        original(self, name, seed, *args, **kwargs)

    monkeypatch.setattr(CheckpointStore, "save", save)
    config = small_config(tmp_path, ("naive",), max_steps=4, seeds=[0, 1])
    tune(config, TuneSettings(trials=4, params=("lr",), pruner="halving", prune_every=2), progress=Progress("quiet"))
    assert saved == []
    assert not list((tmp_path / "tune").rglob("checkpoints"))
    run_config = build_config({**SMALL, "methods": ["naive"], "out": str(tmp_path / "run")})
    from clbench.training.run import run

    run(run_config, progress=Progress("quiet"))  # an ordinary run still saves one after each non-final task
    assert saved == [("naive", 0), ("naive", 0)]


def evaluated_trials(trials: list[Any]) -> list[Any]:
    return [t for t in trials if "repeat_of" not in t.user_attrs]


def test_trials_evaluated_along_training_still_share_the_first_task(tmp_path: Path) -> None:
    config = small_config(tmp_path, ("ewc",), max_steps=4)
    tune(config, TuneSettings(trials=2, params=("ewc.penalty_weight",), pruner="none", prune_every=2),
         progress=Progress("quiet"))
    from clbench.results import read_records

    records = read_records(tmp_path / "tune" / "trials" / "ewc" / "001")
    assert [r["value"] for r in records if r["type"] == "note"] == ["ewc/seed0"]  # task 1 from trial 0
    assert {r["step"] for r in records if r["type"] == "curve" and r["row"] == 1} == {2}  # its curve, replayed


def test_trials_evaluate_only_the_tasks_trained_so_far_with_the_scores_of_a_full_run(tmp_path: Path) -> None:
    """After row 0 a trial skips the tasks it has not trained yet (its objective and pruner read only the seen
    ones), along training too; what it does evaluate equals an ordinary run of the same configuration."""
    from clbench.results import read_records
    from clbench.training.run import run

    config = small_config(tmp_path, ("ewc",), max_steps=4)
    tune(config, TuneSettings(trials=2, params=("ewc.penalty_weight",), pruner="none", prune_every=2),
         progress=Progress("quiet"))
    trial_dir = tmp_path / "tune" / "trials" / "ewc" / "001"  # task 1 and its curve replayed from trial 0
    trial = read_records(trial_dir)
    full = read_records(run(replace(from_saved(load_yaml(trial_dir / "config.yaml")), out=str(tmp_path / "full")),
                            progress=Progress("quiet")))

    def scores(records: list[dict[str, Any]]) -> dict[tuple[Any, ...], float]:
        return {(r["type"], r["row"], r.get("step"), r["eval_index"], r["metric"]): r["value"]
                for r in records if r["type"] in ("accuracy", "curve")}

    mine, everything = scores(trial), scores(full)
    tasks = 3
    assert {k[3] for k in mine if k[1] == 0} == set(range(tasks))  # row 0: every task
    assert mine and all(k[3] < k[1] for k in mine if k[1] >= 1)
    assert {(k[0], k[1]) for k in mine if k[1] >= 1} == {(t, row) for t in ("accuracy", "curve")
                                                          for row in range(1, tasks + 1)}
    assert mine == {k: v for k, v in everything.items() if k[1] == 0 or k[3] < k[1]}
    assert any(k[1] >= 1 and k[3] >= k[1] for k in everything)  # an ordinary run still evaluates unseen tasks
    profiled = [r["value"] for r in trial if r["type"] == "profile" and r.get("phase") == "eval"
                and r["metric"] == "examples"]
    assert profiled == sorted(profiled) and len(set(profiled)) == tasks  # what it evaluated grows task by task


def test_a_search_saved_before_prune_every_existed_resumes(tmp_path: Path) -> None:
    config = small_config(tmp_path, ("naive",))
    settings = TuneSettings(trials=1, pruner="none")
    tune(config, settings, progress=Progress("quiet"))
    saved = tmp_path / "tune" / "tune.yaml"
    saved.write_text("".join(line for line in saved.read_text().splitlines(keepends=True)
                             if line.strip() != "prune_every: 0"))
    assert "prune_every" not in saved.read_text()
    tune(config, settings, progress=Progress("quiet"), resume=True)  # the missing setting had its default
    with pytest.raises(Exception, match="different configuration"):
        tune(config, TuneSettings(trials=1, pruner="none", prune_every=2), progress=Progress("quiet"), resume=True)


@pytest.mark.slow
def test_ray_runs_trials_with_the_local_results(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    settings = TuneSettings(trials=2, pruner="none")
    tune(small_config(tmp_path / "local", ("naive", "ewc"), seeds=[0, 1]), settings, progress=Progress("quiet"))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        tune(small_config(tmp_path / "ray", ("naive", "ewc"), seeds=[0, 1], executor="ray"), settings,
             progress=Progress("quiet"))
    finally:
        ray.shutdown()
    assert trial_values(tmp_path / "ray" / "tune") == trial_values(tmp_path / "local" / "tune")


def test_bad_search_settings_are_one_line_exit_2_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "tune"
    result = CliRunner().invoke(main, ["tune", "--methods", "naive", "--stream", "synthetic", "--model", "tiny",
                                       "--trials", "2", "--pruner", "hyperband", "--prune-every", "-1",
                                       "--out", str(out)])
    assert result.exit_code == 2 and not out.exists()
    line = result.output.strip()
    assert "\n" not in line and "--pruner 'hyperband'" in line and "halving" in line
    assert "--prune-every -1" in line and "positive number of steps" in line

"""One run: validate the configuration, check the run directory, prepare the stream, dispatch the units.

`run(config)` is what `clbench run` calls. Everything a run can know is checked before anything is written;
then the run directory is locked and checked again under the lock (two runs racing for one directory: the
second is refused), `config.yaml` and `env.json` are written (or, with `resume`, the earlier run's are kept,
and its data and checkpoints are checked against them), and the units go to an executor
(`clbench.training.executors`): local by default, Ray on request.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from clbench.config import (
    RunConfig,
    differences,
    dump_yaml,
    from_saved,
    load_yaml,
    resolve_defaults,
    validate,
)
from clbench.data.pairs import PairSplit
from clbench.data.prepare import Prepared, prepare, task_digest
from clbench.errors import ClbenchError, RunDirError
from clbench.registry import MethodRegistry
from clbench.results import RESULTS, RunDir, environment, git_commit, read_records, unit_id
from clbench.trackers import open_trackers
from clbench.training.checkpoint import CheckpointStore
from clbench.training.executors import ObservedSink, Observer, executor_errors, run_local, run_ray
from clbench.training.progress import Progress
from clbench.training.sharing import SharedStart


def default_out(config: RunConfig) -> str:
    stream = Path(config.stream).stem
    model = Path(config.model).name
    return str(Path("runs") / f"{stream}-{model}-{time.strftime('%Y%m%d-%H%M%S')}")


def run(config: RunConfig, *, registry: MethodRegistry | None = None, progress: Progress | None = None,
        command: str | None = None, resume: bool = False, earlier: Sequence[str] = (),
        prepared: Prepared | None = None, shared: SharedStart | None = None, observer: Observer | None = None,
        checkpoint: bool = True, evaluate_unseen: bool = True) -> Path:
    """Validate, then run every unit of `config`; returns the run directory.

    With `resume`, `config.out` must hold an earlier run of the same configuration (differences that change
    results are refused): finished units are skipped and unfinished ones continue from their last checkpoint.
    A caller that runs many configurations of one stream (`clbench tune`) passes the `prepared` stream and a
    `shared` cache to reuse across them, and an `observer` that sees every batch of records once written (it
    may raise to stop the run, e.g. to prune a trial). Without `checkpoint` no unit saves a checkpoint (a tuning
    trial, which is never continued, has no use for one); without `evaluate_unseen`, each evaluation after row 0
    covers only the tasks trained so far (a trial reads nothing else; the run has no forward transfer).

    Order: validate everything (`earlier` are problems found while assembling the config), check the run
    directory, prepare the data, then take the directory's lock and check it again under the lock (another run
    may have used it meanwhile) before writing anything.

    Raises:
        ClbenchError: bad input, before anything is trained or written.
    """
    registry = registry or MethodRegistry.default(config.plugins)
    out = Path(config.out or default_out(config))
    if resume:  # first: the saved config's method sections belong to its methods, so a changed list comes first
        check_same_run(out, config, registry, keys=UNIT_KEYS)
    method_configs = validate(config, registry, [*earlier, *executor_errors(config)])
    config = resolve_defaults(config, method_configs)  # config.yaml shows the values the run uses
    progress = progress or Progress()
    config = replace(config, out=str(out))
    check_out_dir(out, config, registry, resume)  # fail fast, before the data is prepared
    prepared = prepared or prepare(config)
    with RunDir(out) as run_dir:
        started, finished = check_out_dir(out, config, registry, resume, prepared)
        if resume:
            run_dir.repair_tail()
            saved = from_saved(load_yaml(out / "config.yaml"))
            added = [seed for seed in config.seeds if seed not in saved.seeds]
            if added:  # the run grows by these seeds: config.yaml lists every seed
                run_dir.write_text("config.yaml", dump_yaml(replace(saved, seeds=config.seeds)))
            stamp_environment(run_dir, "resumed", added)
            progress.message(f"resuming {out}: {len(finished)} unit(s) finished, "
                             f"{len(started - finished)} to continue")
        else:
            run_dir.write_text("config.yaml", dump_yaml(config))
            env = run_environment(prepared, command, method_facts(config, registry, method_configs))
            run_dir.write_text("env.json", json.dumps(env, indent=1))
        progress.message(f"run directory: {out}")
        checkpoints = CheckpointStore(out, keep=config.keep_checkpoints) if checkpoint else None
        units = [(name, seed) for name, seed in config_units(config) if unit_id(name, seed) not in finished]
        run_dir.listeners.append(progress)  # accuracy lines as each task's evaluation is written
        progress.start_run(len(units), len(prepared.infos))
        for name, seed in config_units(config):
            if checkpoints is not None and unit_id(name, seed) in finished:
                checkpoints.finish(name, seed)  # left over when a run stopped right after a unit finished
        trackers = open_trackers(config.log, out, config.to_dict(), progress.message) if config.log else None
        if trackers is not None:
            run_dir.listeners.append(trackers)
        sink = ObservedSink(run_dir, observer) if observer is not None else run_dir
        try:
            if config.executor == "ray":
                run_ray(config, prepared, units, sink, progress, started, evaluate_unseen)
            else:
                run_local(config, prepared, units, sink, progress,
                          lambda name: registry.get(name)(method_configs[name]), checkpoints, started,
                          shared or SharedStart(units=units), evaluate_unseen)
        finally:
            if trackers is not None:
                trackers.close()
        stamp_environment(run_dir, "finished")
    return out


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def stamp_environment(run_dir: RunDir, event: str, seeds_added: Sequence[int] = ()) -> None:
    """Record when the run finished (or was resumed) in env.json, beside the start time written first; a resume
    that added seeds also records which, when and at which commit (the run's own commit stays its start's)."""
    path = run_dir.path / "env.json"
    try:
        env = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # a run directory without a readable env.json keeps it as it is
    if seeds_added:
        env.setdefault("seeds_added", []).append({"seeds": list(seeds_added), "at": utc_now(),
                                                  "git_commit": git_commit()})
    if event == "resumed":
        env.setdefault("resumed", []).append(utc_now())
    else:
        env[event] = utc_now()
    run_dir.write_text("env.json", json.dumps(env, indent=1))


def run_environment(prepared: Prepared, command: str | None, methods: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """env.json: versions, hardware and commit; the stream's name, version, seed, task sizes and each task's
    chance level on the evaluated split (its largest class's share, 0.5 for preference pairs); each method's role and optimiser."""
    env = environment(command)
    env["model"] = prepared.model_info
    env["started"] = utc_now()
    env["stream"] = {"name": prepared.stream.name, "version": prepared.stream.version, "seed": prepared.stream.seed,
                     "eval_split": prepared.eval_split, "kind": prepared.stream.kind,
                     "tasks": [{"name": t.name, "classes": list(t.classes), "train": len(s.train), "val": len(s.val),
                                "test": len(s.test), "majority": majority(evaluated), "sha256": task_digest(t)}
                               for t, s, evaluated in zip(prepared.stream.tasks, prepared.splits, prepared.evaluated)]}
    if methods is not None:
        env["methods"] = methods
    return env


def majority(split: Any) -> float | None:
    """The share of the split's most frequent label: what predicting one class for every example scores. For
    preference pairs 0.5: the accuracy of a model whose rewards prefer neither response (the base model's)."""
    if not len(split):
        return None
    if isinstance(split, PairSplit):
        return 0.5
    return float(split.labels.bincount().max()) / len(split)


def method_facts(config: RunConfig, registry: MethodRegistry, method_configs: dict[str, Any]) -> dict[str, Any]:
    """Per method: its role (method, upper-bound, reference), optimiser and citation, for the report."""
    facts = {}
    for name in config.methods:
        cls = registry.get(name)
        method = cls(method_configs[name])
        facts[name] = {"role": cls.role, "optimizer": method.optimizer_name(), "citation": cls.citation}
    return facts


def config_units(config: RunConfig) -> list[tuple[str, int]]:
    """(method, seed) of every unit, seeds outermost (units of one seed run together and share work)."""
    return [(name, seed) for seed in config.seeds for name in config.methods]


def check_out_dir(out: Path, config: RunConfig, registry: MethodRegistry, resume: bool,
                  prepared: Prepared | None = None) -> tuple[set[str], set[str]]:
    """Check the run directory before anything is written; returns (units with records, finished units).

    A fresh run refuses a directory where a unit has records (one stopped before any record may be rerun). A
    resumed one needs that run's config.yaml, a readable results file and no difference that changes results;
    with `prepared`, also the same data as when the run started and checkpoints that match the results.
    """
    if not resume:
        results = out / RESULTS
        if results.exists() and (not results.is_file() or results.stat().st_size > 0):
            raise RunDirError(f"run directory '{out}' already holds a run; pass --resume to continue it or choose "
                              "another --out")
        return set(), set()
    check_same_run(out, config, registry)
    records = read_records(out)
    started = {r["unit"] for r in records}
    finished = {r["unit"] for r in records if r["type"] == "unit" and r.get("value") in ("done", "failed")}
    if prepared is not None:
        check_same_data(out, config, prepared)
        check_checkpoints(out, config, prepared, records, started - finished)
    return started, finished


UNIT_KEYS = ("methods", "seeds")  # what makes the units of a run


def check_same_run(out: Path, config: RunConfig, registry: MethodRegistry,
                   keys: tuple[str, ...] | None = None) -> None:
    """Refuse to resume `out` with `config` when its config.yaml is missing or unreadable, or differs from
    `config` in a setting that changes results (naming the keys).

    Args:
        keys: compare only these run fields, as written (before `config` is validated and its defaults
            resolved); None compares every setting of the resolved `config` with the resolved saved one.
    """
    saved_file = out / "config.yaml"
    if not saved_file.is_file():
        raise RunDirError(f"nothing to resume in '{out}' (no config.yaml); run without --resume or fix --out")
    try:
        saved = from_saved(load_yaml(saved_file))
        if keys is None:
            saved = resolve_defaults(saved, validate(saved, registry))
    except ClbenchError as exc:
        raise RunDirError(f"cannot resume from '{saved_file}': {exc}") from None
    changed = differences(saved, config, registry) if keys is None else \
        [k for k in keys if getattr(saved, k) != getattr(config, k)]
    if set(saved.seeds) <= set(config.seeds):
        changed = [k for k in changed if k != "seeds"]  # more seeds: the run's units plus new ones
    if changed:
        shown = ", ".join(f"{k} ({_saved_value(saved, k)!r} -> {_saved_value(config, k)!r})" for k in changed[:6])
        raise RunDirError(f"--resume: '{out}' was run with a different configuration: {shown}; resume with the "
                          "saved settings (drop those flags; --seeds may add seeds to the saved ones) or choose "
                          "another --out")


def check_same_data(out: Path, config: RunConfig, prepared: Prepared) -> None:
    """Refuse to resume when a task's data differs from what env.json recorded when the run started (a run
    started before digests were recorded is not checked)."""
    env_file = out / "env.json"
    if not env_file.is_file():
        return
    try:
        env = json.loads(env_file.read_text(encoding="utf-8"))
        saved = {t["name"]: t.get("sha256") for t in env.get("stream", {}).get("tasks", [])}
    except (ValueError, AttributeError, TypeError, KeyError):
        raise RunDirError(f"'{env_file}' is corrupted, so the data cannot be checked against the run's; restore "
                          "it or start a new --out") from None
    if not saved or all(digest is None for digest in saved.values()):
        return
    changed = [t.name for t in prepared.stream.tasks if saved.get(t.name) != task_digest(t)]
    changed += [name for name in saved if name not in {t.name for t in prepared.stream.tasks}]
    if changed:
        names = ", ".join(f"'{name}'" for name in dict.fromkeys(changed))
        raise RunDirError(f"--resume: the data of task {names} of stream '{config.stream}' changed since '{out}' "
                          "started; restore the data (or stream file) or start a new --out")


def check_checkpoints(out: Path, config: RunConfig, prepared: Prepared, records: list[dict[str, Any]],
                      unfinished: set[str]) -> None:
    """Every unfinished unit's checkpoint must match the stream and the results (see `CheckpointStore.check`)."""
    store = CheckpointStore(out, keep=config.keep_checkpoints)
    tasks = [t.name for t in prepared.stream.tasks]
    for name, seed in config_units(config):
        unit = unit_id(name, seed)
        if unit in unfinished:
            rows = [r["row"] for r in records if r["unit"] == unit and r["type"] == "accuracy"]
            store.check(name, seed, tasks, max(rows, default=-1))


def _saved_value(config: RunConfig, key: str) -> Any:
    if "." in key:
        method, _, name = key.partition(".")
        return config.method_options.get(method, {}).get(name, "default")
    value = getattr(config, key)
    return list(value) if isinstance(value, tuple) else value

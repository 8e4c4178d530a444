"""One run: validate the configuration, check the run directory, prepare the stream, dispatch the units.

`run(config)` is what `clbench run` calls. Everything a run can know is checked before anything is written;
then the run directory is locked, `config.yaml` and `env.json` are written (or, with `resume`, the earlier run's
are kept), and the units go to an executor (`clbench.training.executors`): local by default, Ray on request.
"""

from __future__ import annotations

import json
import time
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
from clbench.data.prepare import Prepared, prepare
from clbench.errors import ClbenchError, RunDirError
from clbench.registry import MethodRegistry
from clbench.results import RESULTS, RunDir, environment, read_records, unit_id
from clbench.trackers import open_trackers
from clbench.training.checkpoint import CheckpointStore
from clbench.training.executors import run_local, run_ray
from clbench.training.progress import Progress


def default_out(config: RunConfig) -> str:
    stream = Path(config.stream).stem
    model = Path(config.model).name
    return str(Path("runs") / f"{stream}-{model}-{time.strftime('%Y%m%d-%H%M%S')}")


def run(config: RunConfig, *, registry: MethodRegistry | None = None, progress: Progress | None = None,
        command: str | None = None, resume: bool = False) -> Path:
    """Validate, then run every unit of `config`; returns the run directory.

    With `resume`, `config.out` must hold an earlier run of the same configuration (differences that change
    results are refused): finished units are skipped and unfinished ones continue from their last checkpoint.

    Raises ClbenchError for bad input before anything is trained or written.
    """
    registry = registry or MethodRegistry.default(config.plugins)
    method_configs = validate(config, registry)
    config = resolve_defaults(config, method_configs)  # config.yaml shows the values the run uses
    progress = progress or Progress()
    out = Path(config.out or default_out(config))
    config = replace(config, out=str(out))
    started, finished = check_out_dir(out, config, registry, resume)
    prepared = prepare(config)
    with RunDir(out) as run_dir:
        if resume:
            run_dir.repair_tail()
            progress.message(f"resuming {out}: {len(finished)} unit(s) finished, "
                             f"{len(started - finished)} to continue")
        else:
            run_dir.write_text("config.yaml", dump_yaml(config))
            run_dir.write_text("env.json", json.dumps(run_environment(prepared, command), indent=1))
        progress.message(f"run directory: {out}")
        checkpoints = CheckpointStore(out, keep=config.keep_checkpoints)
        units = [(name, seed) for name, seed in config_units(config) if unit_id(name, seed) not in finished]
        run_dir.listeners.append(progress)  # accuracy lines as each task's evaluation is written
        progress.start_run(len(units), len(prepared.infos))
        for name, seed in config_units(config):
            if unit_id(name, seed) in finished:
                checkpoints.finish(name, seed)  # left over when a run stopped right after a unit finished
        trackers = open_trackers(config.log, out, config.to_dict(), progress.message) if config.log else None
        if trackers is not None:
            run_dir.listeners.append(trackers)
        try:
            if config.executor == "ray":
                run_ray(config, prepared, units, run_dir, progress, started)
            else:
                run_local(config, prepared, units, run_dir, progress,
                          lambda name: registry.get(name)(method_configs[name]), checkpoints, started)
        finally:
            if trackers is not None:
                trackers.close()
    return out


def run_environment(prepared: Prepared, command: str | None) -> dict[str, Any]:
    """env.json: versions, hardware and commit, plus the stream's name, version, seed and task sizes."""
    env = environment(command)
    env["model"] = prepared.model_info
    env["stream"] = {"name": prepared.stream.name, "version": prepared.stream.version, "seed": prepared.stream.seed,
                     "eval_split": prepared.eval_split,
                     "tasks": [{"name": t.name, "classes": list(t.classes), "train": len(s.train), "val": len(s.val),
                                "test": len(s.test)} for t, s in zip(prepared.stream.tasks, prepared.splits)]}
    return env


def config_units(config: RunConfig) -> list[tuple[str, int]]:
    """(method, seed) of every unit, seeds outermost (units of one seed run together and share work)."""
    return [(name, seed) for seed in config.seeds for name in config.methods]


def check_out_dir(out: Path, config: RunConfig, registry: MethodRegistry, resume: bool) -> tuple[set[str], set[str]]:
    """Check the run directory before anything is written; returns (units with records, finished units).

    A fresh run refuses a directory that already holds a run. A resumed one needs that run's config.yaml, a
    readable results file and no difference that changes results.
    """
    saved_file = out / "config.yaml"
    if not resume:
        if saved_file.exists() or (out / RESULTS).exists():
            raise RunDirError(f"run directory '{out}' already holds a run; pass --resume to continue it or choose "
                              "another --out")
        return set(), set()
    if not saved_file.is_file():
        raise RunDirError(f"nothing to resume in '{out}' (no config.yaml); run without --resume or fix --out")
    try:
        saved = from_saved(load_yaml(saved_file))
        saved = resolve_defaults(saved, validate(saved, registry))
    except ClbenchError as exc:
        raise RunDirError(f"cannot resume from '{saved_file}': {exc}") from None
    changed = differences(saved, config, registry)
    if changed:
        shown = ", ".join(f"{k} ({_saved_value(saved, k)!r} -> {_saved_value(config, k)!r})" for k in changed[:6])
        raise RunDirError(f"--resume: '{out}' was run with a different configuration: {shown}; resume with the "
                          "saved settings (drop those flags) or choose another --out")
    records = read_records(out)
    started = {r["unit"] for r in records}
    finished = {r["unit"] for r in records if r["type"] == "unit" and r.get("value") in ("done", "failed")}
    return started, finished


def _saved_value(config: RunConfig, key: str) -> Any:
    if "." in key:
        method, _, name = key.partition(".")
        return config.method_options.get(method, {}).get(name, "default")
    value = getattr(config, key)
    return list(value) if isinstance(value, tuple) else value

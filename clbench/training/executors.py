"""Executors: how the units of a run are dispatched — in this process, or one Ray task per unit.

`run_local` trains the units one after another in this process, sharing row 0 and the first task between
identical units of a seed (`clbench.training.sharing`) and saving checkpoints for `--resume`.

`run_ray` (`clbench run --executor ray [--ray-address ADDR]`) connects to a running cluster (or starts a local
one when no address is given) and submits every unit as a task asking for 1 CPU, plus 1 GPU when the run's
device is CUDA. The tokenised stream is put into the object store once. A worker trains its unit with the
same `clbench.training.runner.train_unit`, keeps its records in memory and returns them; the driver appends
each unit's records to `results.jsonl` as soon as that unit finishes, so the run directory looks the same as
after a local run and the results are identical. Differences: workers write no checkpoints (the driver's run
directory need not be on a shared file system), so `--resume` restarts an interrupted unit from its first
task; and units do not share row 0 or the first task, because each runs in its own worker.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from clbench.config import RunConfig, method_config, method_own_options
from clbench.data.prepare import Prepared
from clbench.errors import ClbenchError, ConfigError, UnitFailed
from clbench.protocol import Hooks
from clbench.registry import MethodRegistry
from clbench.results import MemoryRecords, RecordSink, unit_id
from clbench.training.checkpoint import CheckpointStore
from clbench.training.progress import Progress
from clbench.training.records import UnitRecorder
from clbench.training.runner import resolve_device, train_unit
from clbench.training.sharing import SharedStart

FORWARDED_ENV = ("CLBENCH_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME")
RAY_CONNECT_TIMEOUT_S = 3.0  # ray.init retries an unreachable address for minutes; a socket answers at once


def executor_errors(config: RunConfig) -> list[str]:
    """What the chosen executor needs and the run lacks: a `--ray-address` that answers (checked with one short
    TCP connection, so a dead address is refused at once instead of hanging in ray.init)."""
    address = config.ray_address
    if config.executor != "ray" or not address or address in ("auto", "local"):
        return []
    host, _, port = address.removeprefix("ray://").rpartition(":")
    fix = "start the cluster first (`ray start --head`) or drop --ray-address to start a local one"
    if not host or not port.isdigit():
        return [f"--ray-address '{address}' is not HOST:PORT (or ray://HOST:PORT, auto); {fix}"]
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        return [f"cannot reach Ray at --ray-address '{address}' ({exc.strerror or exc}); {fix}"]
    return []


def hook_failure(exc: Exception, method: Hooks) -> UnitFailed | None:
    """A one-line unit failure naming the method and the hook that raised `exc`, or None when `exc` did not come
    from the method's code (a clbench bug keeps its traceback).

    The hook is the outermost frame of the traceback that runs on the method object: the runner's call into it.
    """
    if isinstance(exc, UnitFailed):
        return exc
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_locals.get("self") is not method:
        tb = tb.tb_next
    if tb is None:
        return None
    text = " ".join(str(exc).split())[:300]
    return UnitFailed(f"method '{method.name}' failed in {tb.tb_frame.f_code.co_name}() with "
                      f"{type(exc).__name__}: {text}")


def train_or_fail(config: RunConfig, prepared: Prepared, method: Hooks, seed: int, sink: RecordSink,
                  progress: Progress, **kwargs: Any) -> None:
    """`train_unit`, with an exception raised by one of the method's hooks turned into `UnitFailed`."""
    try:
        train_unit(config, prepared, method, seed, sink, progress, **kwargs)
    except UnitFailed:
        raise
    except Exception as exc:  # a method's bug fails its unit, not the run
        failure = hook_failure(exc, method)
        if failure is None:
            raise
        progress.end_task()
        raise failure from None


def failed_record(name: str, seed: int, error: str) -> dict[str, Any]:
    """The status record of a unit that failed with `error` (one line)."""
    return UnitRecorder(name, seed, MemoryRecords([])).status("failed", 0, error)


Observer = Callable[[list[dict[str, Any]]], None]


@dataclass
class ObservedSink:
    """A record sink that hands every batch to `observer` once the run directory holds it."""

    sink: RecordSink
    observer: Observer

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        batch = [dict(r) for r in records]
        self.sink.append(batch)
        self.observer(batch)


def run_local(config: RunConfig, prepared: Prepared, units: Sequence[tuple[str, int]], run_dir: RecordSink,
              progress: Progress, make_method: Callable[[str], Hooks], checkpoints: CheckpointStore | None,
              started: set[str], shared: SharedStart, evaluate_unseen: bool = True) -> None:
    """Train `units` one after another in this process; a failed unit is recorded and the others go on
    (`evaluate_unseen`: see `clbench.training.runner.train_unit`)."""
    for index, (name, seed) in enumerate(units):
        progress.start_unit(index)
        try:
            train_or_fail(config, prepared, make_method(name), seed, run_dir, progress, checkpoints=checkpoints,
                          shared=shared, resume=unit_id(name, seed) in started, evaluate_unseen=evaluate_unseen)
        except UnitFailed as exc:
            run_dir.append([failed_record(name, seed, str(exc))])
            if checkpoints is not None:
                checkpoints.finish(name, seed)
            progress.message(f"{unit_id(name, seed)} failed: {exc}")


def unit_records(config: RunConfig, prepared: Prepared, name: str, seed: int, threads: int,
                 evaluate_unseen: bool = True) -> list[dict[str, Any]]:
    """Train one unit in this process and return its records (the body of one Ray task)."""
    import torch

    torch.set_num_threads(threads)
    registry = MethodRegistry.default(config.plugins)
    cls = registry.get(name)
    method = cls(method_config(cls.config_cls, name, method_own_options(config, name)))
    sink = MemoryRecords([])
    try:
        train_or_fail(config, prepared, method, seed, sink, Progress("quiet"), evaluate_unseen=evaluate_unseen)
    except UnitFailed as exc:
        sink.append([failed_record(name, seed, str(exc))])
    return sink.records


def run_ray(config: RunConfig, prepared: Prepared, units: Sequence[tuple[str, int]], run_dir: RecordSink,
            progress: Progress, started: set[str], evaluate_unseen: bool = True) -> None:
    """Run `units` as Ray tasks and append their records to `run_dir` as they finish (each asks for 1 CPU and,
    on CUDA, `gpus_per_unit` of a GPU, so several units can share one card).

    Args:
        started: units that already have records (an interrupted earlier run): a `resume` record with row -1
            goes before their new records, so readers drop the old partial ones.
    """
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray; install the extra: pip install 'clbench[ray]'") from None

    # plugin files are imported again on the workers, whose working directory differs from ours
    config = replace(config, plugins=tuple(str(Path(p).resolve()) for p in config.plugins))
    gpus = config.gpus_per_unit if resolve_device(config.device).type == "cuda" else 0
    owner = not ray.is_initialized()
    if owner:
        try:
            ray.init(address=config.ray_address, include_dashboard=False, logging_level=logging.ERROR,
                     log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"cannot connect to Ray at --ray-address '{config.ray_address}' ({first}); start "
                              "the cluster first or drop --ray-address to start a local one") from None
    try:
        options: dict[str, Any] = {"num_cpus": 1, "num_gpus": gpus, "max_retries": 0}
        if config.ray_address:
            env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
            options["runtime_env"] = {"env_vars": env}
        task = ray.remote(unit_records).options(**options)
        data = ray.put(prepared)
        pending = {task.remote(config, data, name, seed, 1, evaluate_unseen): (name, seed) for name, seed in units}
        progress.message(f"submitted {len(pending)} unit(s) to Ray ({gpus} GPU each)")
        waiting = list(pending)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            for ref in done:
                name, seed = pending[ref]
                try:
                    records = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, ClbenchError):
                        raise cause from None
                    records = [failed_record(name, seed, _first_line(cause or exc))]
                except ray.exceptions.RayError as exc:  # worker died (e.g. killed for memory)
                    records = [failed_record(name, seed, _first_line(exc))]
                if unit_id(name, seed) in started:
                    run_dir.append([UnitRecorder(name, seed, run_dir).resume(-1)])
                run_dir.append(records)
                progress.message(f"{unit_id(name, seed)} finished on Ray")
    finally:
        if owner:
            ray.shutdown()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"

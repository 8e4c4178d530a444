"""The Python API: run an experiment, or load a finished one, and read its results as pandas DataFrames.

    import clbench

    run = clbench.run(methods=["naive", "ewc"], stream="synthetic", model="tiny", out="runs/api",
                      ewc={"penalty_weight": 100})
    run.summary()                     # one row per method × seed: ACC, BWT, FWT, forgetting, drift, cost
    run.records                       # every record of results.jsonl, one row each
    run.accuracy_matrix("ewc")        # R: rows "before" and each task trained, columns the tasks
    run.report()                      # report.md, plots/ and summary.csv/json
    clbench.load("runs/api")          # the same Run from the directory, in a later session

`clbench.run` takes the keys a `--config` YAML file holds (run fields, and one mapping per method for its
options) as keyword arguments, validates everything before training, like `clbench run`, and raises a
`clbench.errors.ClbenchError` (one line) for bad input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clbench.errors import ClbenchError, RunDirError

if TYPE_CHECKING:
    import pandas as pd

    from clbench.config import RunConfig

# Columns every record has, first in `Run.records`; other fields (eval_task, phase, param, ...) follow.
RECORD_COLUMNS = ("type", "unit", "method", "seed", "row", "task", "eval_task", "eval_index", "split", "step",
                  "phase", "param", "metric", "value")


class Run:
    """A run directory read back: its configuration, environment, records and scores.

    Attributes:
        path: The run directory.
        config: ``config.yaml`` as a dict (the resolved configuration).
        env: ``env.json`` as a dict (versions, hardware, stream, model revision).
    """

    def __init__(self, path: str | Path):
        from clbench.reporting.rundata import load_run

        self.path = Path(path)
        data = load_run(self.path)
        self.config: dict[str, Any] = data.config
        self.env: dict[str, Any] = data.env

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def records(self) -> pd.DataFrame:
        """Every record of ``results.jsonl`` (resumed runs' dropped rows excluded), one row each.

        Numeric values are in ``value`` (float); the few text values (a unit's status, the unit whose first task
        was reused) are in ``text`` with ``value`` NaN. Fields a record type lacks are NaN/None.
        """
        import pandas as pd

        from clbench.results import read_records

        rows = []
        for record in read_records(self.path):
            row = dict(record)
            value = row.get("value")
            if isinstance(value, (bool, str)) or value is None:
                row["text"], row["value"] = value, float("nan")
            else:
                row["value"] = float(value)
            rows.append(row)
        frame = pd.DataFrame.from_records(rows)
        columns = [c for c in RECORD_COLUMNS if c in frame.columns]
        return frame[columns + sorted(c for c in frame.columns if c not in columns)]

    def summary(self) -> pd.DataFrame:
        """One row per method × seed with the report's scores (the rows of ``summary.csv``).

        Columns: method, seed, unit, status, error, then acc_cil, bwt_cil, fwt_cil, forgetting_cil, their
        task-aware twins (``_til``), the first two tasks' accuracies, weight_drift, functional_drift,
        train_time_s, peak_memory_mb and trainable_params (docs/metrics.md defines them). Units that did not
        finish keep a row with NaN scores. ``summary().groupby("method").mean(numeric_only=True)`` gives the
        per-method means of the report's tables.
        """
        import pandas as pd

        from clbench.reporting.export import unit_rows
        from clbench.reporting.rundata import load_run

        return pd.DataFrame.from_records(unit_rows(load_run(self.path)))

    def accuracy_matrix(self, method: str, seed: int | None = None, metric: str = "acc_cil") -> pd.DataFrame:
        """The accuracy matrix R of one unit: row "before" and one row per task trained, one column per task.

        Args:
            method: A method of the run.
            seed: Its seed (default: the run's first).
            metric: acc_cil, acc_til, f1_cil or f1_til.

        Raises:
            RunDirError: If the run has no such unit or no records of `metric`.
        """
        import pandas as pd

        from clbench.reporting.rundata import accuracy_matrices, load_run
        from clbench.results import unit_id

        data = load_run(self.path)
        seeds = list(self.config.get("seeds") or [0])
        unit = unit_id(method, seeds[0] if seed is None else seed)
        matrices = accuracy_matrices(data.records, metric, len(data.tasks))
        if unit not in matrices:
            raise RunDirError(f"run '{self.path}' has no {metric} records of unit '{unit}'; units: "
                              f"{', '.join(sorted(data.status)) or 'none'}")
        return pd.DataFrame(matrices[unit], index=["before", *data.tasks], columns=data.tasks)

    def report(self) -> Path:
        """Write ``report.md``, ``plots/`` and ``summary.csv``/``summary.json``; returns the report's path."""
        from clbench.reporting.export import write_summary
        from clbench.reporting.report import write_report

        report = write_report(self.path)  # refuses a torn results file before anything is rewritten
        write_summary(self.path)
        return report


def load(path: str | Path) -> Run:
    """A finished (or running) run directory as a `Run`.

    Raises:
        RunDirError: If the directory holds no results.
    """
    return Run(path)


def run(config: RunConfig | Mapping[str, Any] | str | Path | None = None, /, *, plugins: Sequence[str] = (),
        quiet: bool = False, verbose: bool = False, report: bool = True, **settings: Any) -> Run:
    """Train every method of a configuration through its stream, as `clbench run` does; returns the `Run`.

    Args:
        config: A `clbench.config.RunConfig`, a mapping shaped like a `--config` YAML file, or the path of
            such a file; keyword `settings` override it.
        plugins: Python files registering more methods (`--plugin`).
        quiet: Print no progress (stderr otherwise).
        verbose: Let the libraries' own warnings and logs through (hidden during the run by default).
        report: Also write report.md and plots/ (summary.csv/json are always written).
        **settings: Run fields (methods, stream, model, seeds, out, epochs, ...) and method sections, e.g.
            ``ewc={"penalty_weight": 1000}``; lists may be given for methods and seeds.

    Returns:
        The run directory, read back.

    Raises:
        ClbenchError: For any invalid input, before anything is trained.
    """
    import warnings
    from dataclasses import asdict

    from clbench.config import RunConfig, build_config, load_yaml, saved_layer
    from clbench.registry import MethodRegistry
    from clbench.reporting.export import write_summary
    from clbench.training.progress import Progress, quiet_libraries
    from clbench.training.run import run as run_experiment

    if isinstance(config, (str, Path)):
        base: dict[str, Any] = load_yaml(config)
    elif isinstance(config, RunConfig):
        base = saved_layer({k: v for k, v in asdict(config).items() if v is not None})
    else:
        base = dict(config or {})
    plugins = list(plugins) or list(settings.get("plugins") or base.get("plugins") or [])
    if plugins:
        settings["plugins"] = plugins
    registry = MethodRegistry.default(plugins)
    resolved = build_config(base, settings, method_names=registry.names())
    call = ", ".join([*([repr(config)] if isinstance(config, (str, Path)) else []),
                      *(f"{k}={v!r}" for k, v in settings.items())])
    with quiet_libraries(verbose):
        out = run_experiment(resolved, registry=registry, progress=Progress("quiet" if quiet else None),
                             command=f"clbench.run({call})")
    write_summary(out)
    if report:
        from clbench.reporting.report import write_report_or_warn

        def warn(message: str) -> None:
            warnings.warn(message, RuntimeWarning, stacklevel=3)

        write_report_or_warn(out, warn)
    return Run(out)


__all__ = ["ClbenchError", "Run", "load", "run"]

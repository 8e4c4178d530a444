"""`clbench compare`: the summary rows of several runs of one stream side by side."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from clbench.errors import ClbenchError
from clbench.reporting.report import REPORT
from clbench.reporting.rundata import RunData, load_run, method_units
from clbench.reporting.scenario import Scenario
from clbench.reporting.tables import TABLE_LEGEND, cil_columns, markdown_table, til_columns


class ReportError(ClbenchError):
    """Runs cannot be reported or compared as asked (e.g. runs of different streams)."""


@dataclass
class SideBySide:
    """Several runs of one stream as one table: rows are labelled `run: method`."""

    runs: dict[str, RunData]  # label -> run

    @property
    def tasks(self) -> list[str]:
        return next(iter(self.runs.values())).tasks

    @property
    def test_sizes(self) -> list[int]:
        return next(iter(self.runs.values())).test_sizes

    @property
    def scenario(self) -> Scenario:
        return next(iter(self.runs.values())).scenario  # one stream, so one kind

    def role(self, name: str) -> str:
        label, _, method = name.partition(": ")
        return self.runs[label].role(method)

    def chance(self, task: int) -> tuple[float, bool]:
        return next(iter(self.runs.values())).chance(task)


def _config_differences(runs: Sequence[RunData]) -> list[str]:
    keys = sorted({k for run in runs for k in run.config if k != "out"})
    differing = [k for k in keys if len({json.dumps(run.config.get(k), sort_keys=True) for run in runs}) > 1]
    if not differing:
        return ["The runs' configurations are identical apart from `out`.", ""]
    lines = ["| setting | " + " | ".join(run.name for run in runs) + " |", "|---|" + "---|" * len(runs)]
    for key in differing:
        lines.append(f"| {key} | " + " | ".join(f"`{json.dumps(run.config.get(key))}`" for run in runs) + " |")
    return ["Configuration settings that differ:", "", *lines, ""]


def load_comparable(run_dirs: Iterable[Path]) -> tuple[list[RunData], list[str]]:
    """Read runs to compare and label them (folder names, or full paths when two folders share a name).

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
    return runs, labels


def compare_runs(run_dirs: Iterable[Path], out: Path | None = None) -> str:
    """Put the summary rows of several runs of the same stream side by side.

    Args:
        run_dirs: Two or more run directories.
        out: If given, the markdown is also written to ``out/compare.md``, and its links to each run's report
            are relative to ``out`` so that they resolve from the file (without it, relative to the working
            directory, as the run directories were given).

    Returns:
        The comparison as markdown.

    Raises:
        ReportError: If fewer than two runs are given or the runs use different streams (name or version).
        RunDirError: If a directory holds no results.
    """
    runs, labels = load_comparable(run_dirs)
    merged = SideBySide(dict(zip(labels, runs)))
    rows = {f"{label}: {method}": units for label, run in zip(labels, runs)
            for method, units in method_units(run).items()}
    memory = {"peak GPU memory" if run.on_cuda else "CPU run: peak RSS" for run in runs}
    lines = [f"# clbench comparison: {', '.join(labels)}", "",
             f"Stream **{runs[0].stream}**. Runs:", "",
             "| run | command | model | seeds | hardware |", "|---|---|---|---|---|"]
    for label, run in zip(labels, runs):
        cuda = run.env.get("cuda")
        hardware = cuda["device"] if cuda else f"CPU ({run.env.get('cpu_count', '?')} cores)"
        link = Path(os.path.relpath(run.path / REPORT, out)).as_posix() if out is not None else run.path / REPORT
        lines.append(f"| [{label}]({link}) | `{run.env.get('command')}` | {run.config.get('model')} "
                     f"| {', '.join(str(s) for s in run.config.get('seeds', []))} | {hardware} |")
    scenario = merged.scenario
    lines += ["", *_config_differences(runs),
              f"## Summary: {scenario.label}", "", markdown_table(merged, rows, cil_columns(scenario), "run: method"),
              "", (f"Peak memory: {' / '.join(sorted(memory))}; compare memory and time only between runs on the "
                   "same hardware."), ""]
    if scenario.task_aware:
        lines += ["## Summary: task-aware", "", markdown_table(merged, rows, til_columns(), "run: method"), ""]
    lines += [TABLE_LEGEND, ""]
    text = "\n".join(lines)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(text, encoding="utf-8")
    return text

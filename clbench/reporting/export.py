"""Machine-readable results: ``summary.csv`` and ``summary.json`` in a run directory, and the rows that
``clbench compare --format csv|json`` prints.

One row per unit (method × seed) with the report's scores (`clbench.reporting.rundata.unit_scores`: ACC, BWT,
FWT and forgetting, class-incremental and task-aware; the first two tasks' accuracies; weight and functional
drift; train time, peak memory, trainable parameters). A preference run has preference accuracy in the
``*_cil`` columns, no task-aware or functional-drift columns, and the reward margin and, where its stream has
general text, the perplexity and KL from the base model there after the last task (``general_perplexity``,
``general_kl_base``). A unit that has not finished, or failed, keeps its row with its status and empty scores,
so a table never hides a unit. ``summary.json`` adds, per method, the mean, the half-width of the 95%
t-interval and the number of seeds of each score, as the report's tables show them.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from clbench.errors import RunDirError
from clbench.evaluators.stats import summarize
from clbench.reporting.rundata import RunData, load_run, unit_scores
from clbench.results import RESULTS, torn_tail

SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
SCHEMA_VERSION = 1
KEYS = ("method", "seed", "unit", "status")
# Score columns in the report's order; any other score a later version adds follows, sorted.
SCORES = ("acc_cil", "bwt_cil", "fwt_cil", "forgetting_cil", "acc_til", "bwt_til", "fwt_til", "forgetting_til",
          "t1_after_t1", "t2_after_t1", "t1_after_t2", "t2_after_t2", "t1_change_cil", "t1_change_til",
          "weight_drift", "functional_drift", "general_perplexity", "general_kl_base", "train_time_s",
          "peak_memory_mb", "trainable_params")


def _seed(run: RunData, unit: str) -> int:
    return next((int(r["seed"]) for r in run.records if r["unit"] == unit), -1)


def unit_rows(run: RunData) -> list[dict[str, Any]]:
    """One row per unit of `run`, in run method order then seed: keys, status, error and every score.

    Args:
        run: A loaded run (`clbench.reporting.rundata.load_run`).

    Returns:
        Rows with the columns of `columns`; scores a unit lacks are NaN.
    """
    scores = unit_scores(run)
    names = score_columns(scores.values())
    order = {m: i for i, m in enumerate(run.methods)}
    units = sorted(run.status, key=lambda u: (order.get(run.unit_method[u], len(order)), _seed(run, u)))
    rows = []
    for unit in units:
        row: dict[str, Any] = {"method": run.unit_method[unit], "seed": _seed(run, unit), "unit": unit,
                               "status": run.status[unit], "error": run.errors.get(unit, "")}
        row.update({name: float(scores.get(unit, {}).get(name, math.nan)) for name in names})
        rows.append(row)
    return rows


def score_columns(scores: Iterable[Mapping[str, float]]) -> list[str]:
    """The score columns present in `scores`, the report's order first."""
    present = {k for s in scores for k in s}
    return [k for k in SCORES if k in present] + sorted(present - set(SCORES))


def method_summaries(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per method, over its finished units: {score: {mean, ci95, n}} (NaN scores of a seed are kept, as in the
    report, so a diverged seed makes the mean NaN)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        done = [r for r in rows if r["method"] == method and r["status"] == "done"]
        entry: dict[str, Any] = {"method": method, "seeds": [r["seed"] for r in done]}
        for name in [k for k in (rows[0] if rows else {}) if k not in (*KEYS, "error")]:
            values = [r[name] for r in done if not math.isnan(r[name])]
            stats = summarize(values) if values else None
            entry[name] = {"mean": stats.mean if stats else math.nan, "ci95": stats.ci95 if stats else math.nan,
                           "n": stats.n if stats else 0}
        out.append(entry)
    return out


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as CSV with a header; NaN is written as an empty cell."""
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})
    return buffer.getvalue()


def jsonable(value: Any) -> Any:
    """NaN and infinities -> None (JSON has no NaN), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def summary_document(run: RunData) -> dict[str, Any]:
    """What ``summary.json`` holds: the run's identity, its unit rows and the per-method summaries."""
    rows = unit_rows(run)
    stream = run.env.get("stream", {})
    document: dict[str, Any] = jsonable({"schema_version": SCHEMA_VERSION, "run": run.name,
                     "stream": {"name": stream.get("name", run.config.get("stream")),
                                "version": stream.get("version"),
                                "tasks": [t.get("name") for t in stream.get("tasks", [])]},
                     "model": run.config.get("model"), "seeds": run.config.get("seeds", []),
                     "units": rows, "methods": method_summaries(rows)})
    return document


def write_summary(run_dir: Path) -> tuple[Path, Path]:
    """Write ``run_dir/summary.csv`` and ``run_dir/summary.json`` (atomically) from the run's records.

    Args:
        run_dir: A run directory.

    Returns:
        The paths of the CSV and the JSON file.

    Raises:
        RunDirError: If the directory holds no results, or they end in a partly written record (a run stopped or
            still writing there: nothing is rewritten, as for the report).
    """
    run = load_run(Path(run_dir))
    if torn_tail(run.path):
        raise RunDirError(f"'{run.path / RESULTS}' ends in a partly written record; wait for the run or resume "
                          "it, then write the summary")
    document = summary_document(run)
    written = []
    for name, text in ((SUMMARY_CSV, to_csv(document["units"])),
                       (SUMMARY_JSON, json.dumps(document, indent=1, allow_nan=False) + "\n")):
        target = run.path / name
        tmp = target.with_name(name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
        written.append(target)
    return written[0], written[1]


def compare_rows(runs: Sequence[RunData], labels: Sequence[str]) -> list[dict[str, Any]]:
    """The unit rows of several runs, each prefixed with its run's label; columns are the union, in order."""
    per_run = [unit_rows(run) for run in runs]
    names = score_columns(r for rows in per_run for r in rows)
    out = []
    for label, rows in zip(labels, per_run):
        for row in rows:
            out.append({"run": label, **{k: row[k] for k in (*KEYS, "error")},
                        **{n: row.get(n, math.nan) for n in names}})
    return out


def compare_document(runs: Sequence[RunData], labels: Sequence[str]) -> dict[str, Any]:
    """What ``clbench compare --format json`` prints: each run's identity and every unit row."""
    document: dict[str, Any] = jsonable({"schema_version": SCHEMA_VERSION,
                     "runs": [{"run": label, "path": str(run.path), "stream": run.stream,
                               "model": run.config.get("model"), "command": run.env.get("command")}
                              for label, run in zip(labels, runs)],
                     "units": compare_rows(runs, labels)})
    return document


FORMATS = ("md", "csv", "json")


def export_comparison(run_dirs: Iterable[Path], fmt: str, out: Path | None = None) -> str:
    """`clbench compare` in any format: markdown (`compare_runs`), or the unit rows as CSV or JSON.

    Args:
        run_dirs: Two or more run directories of one stream.
        fmt: "md", "csv" or "json".
        out: If given, the text is also written to ``out/compare.<fmt>``.

    Returns:
        The comparison text.

    Raises:
        ReportError: Fewer than two runs, runs of different streams, or an unknown format.
    """
    from clbench.reporting.compare import ReportError, compare_runs, load_comparable

    if fmt not in FORMATS:
        raise ReportError(f"unknown compare format '{fmt}'; use one of {', '.join(FORMATS)}")
    dirs = [Path(d) for d in run_dirs]
    if fmt == "md":  # written by compare_runs, whose links to the reports then resolve from `out`
        return compare_runs(dirs, out)
    runs, labels = load_comparable(dirs)
    text = to_csv(compare_rows(runs, labels)) if fmt == "csv" else \
        json.dumps(compare_document(runs, labels), indent=1, allow_nan=False) + "\n"
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"compare.{fmt}").write_text(text, encoding="utf-8")
    return text

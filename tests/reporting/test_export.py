"""summary.csv / summary.json written by `clbench run` and `clbench report`; `clbench compare --format csv|json`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from clbench.cli import main

SMALL = ["--stream", "synthetic", "--model", "tiny", "--train-size", "16", "--test-size", "8", "--max-steps", "2",
         "--quiet"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    base = tmp_path_factory.mktemp("export")
    runs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLBENCH_CACHE", str(base / "cache"))
        for name, lr in (("a", "1e-3"), ("b", "3e-3")):
            result = CliRunner().invoke(main, ["run", "--methods", "naive,ewc", *SMALL, "--lr", lr, "--out",
                                               str(base / name)], catch_exceptions=False)
            assert result.exit_code == 0, result.output
            runs.append(base / name)
    return runs


def test_run_writes_summary_files(two_runs: list[Path]) -> None:
    rows = list(csv.DictReader((two_runs[0] / "summary.csv").open()))
    assert [(r["method"], r["seed"], r["status"]) for r in rows] == [("naive", "0", "done"), ("ewc", "0", "done")]
    assert 0 <= float(rows[0]["acc_cil"]) <= 1 and rows[0]["train_time_s"]
    document = json.loads((two_runs[0] / "summary.json").read_text())
    assert document["model"] == "tiny" and [m["method"] for m in document["methods"]] == ["naive", "ewc"]


def test_report_rewrites_summary_files_with_failed_units(two_runs: list[Path], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(two_runs[0], copy)
    (copy / "summary.csv").unlink()
    with (copy / "results.jsonl").open("a") as fh:
        fh.write(json.dumps({"type": "unit", "unit": "lwf/seed0", "method": "lwf", "seed": 0, "row": 0,
                             "task": None, "metric": "status", "value": "failed", "error": "loss became nan"}) + "\n")
    result = CliRunner().invoke(main, ["report", str(copy)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((copy / "summary.csv").open()))
    failed = rows[-1]
    assert failed["unit"] == "lwf/seed0" and failed["status"] == "failed" and failed["acc_cil"] == ""
    assert failed["error"] == "loss became nan"
    units = json.loads((copy / "summary.json").read_text())["units"]
    assert units[-1]["acc_cil"] is None  # NaN is not JSON: null


@pytest.mark.parametrize("fmt", ["csv", "json", "md"])
def test_compare_formats(two_runs: list[Path], tmp_path: Path, fmt: str) -> None:
    result = CliRunner().invoke(main, ["compare", *map(str, two_runs), "--format", fmt, "--out", str(tmp_path)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (tmp_path / f"compare.{fmt}").read_text() + ("\n" if fmt == "md" else "") == result.output
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(result.output)))
        assert [(r["run"], r["method"]) for r in rows] == [("a", "naive"), ("a", "ewc"), ("b", "naive"), ("b", "ewc")]
        assert rows[0]["acc_cil"] == next(csv.DictReader((two_runs[0] / "summary.csv").open()))["acc_cil"]
    elif fmt == "json":
        document = json.loads(result.output)
        assert [r["run"] for r in document["runs"]] == ["a", "b"] and len(document["units"]) == 4
    else:
        assert result.output.startswith("# clbench comparison: a, b")


def test_compare_refuses_one_run_in_any_format(two_runs: list[Path]) -> None:
    result = CliRunner().invoke(main, ["compare", str(two_runs[0]), "--format", "json"])
    assert result.exit_code == 2 and "compare needs at least two run directories" in result.stderr

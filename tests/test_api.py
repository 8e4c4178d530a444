"""The Python API: clbench.run(...) and clbench.load(dir) -> Run with tidy DataFrames, summary files and the
report; `import clbench` stays cheap."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import clbench
from clbench.api import Run
from clbench.errors import ClbenchError, ConfigError, RunDirError

SMALL = {"stream": "synthetic", "model": "tiny", "train_size": 32, "test_size": 16, "epochs": 1, "batch_size": 8}


@pytest.fixture(scope="module")
def api_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    base = tmp_path_factory.mktemp("api")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLBENCH_CACHE", str(base / "cache"))
        return clbench.run(methods=["naive", "ewc"], seeds=[0, 1], out=str(base / "run"), quiet=True, report=False,
                           ewc={"penalty_weight": 10.0}, **SMALL)


def test_import_is_cheap() -> None:
    code = "import sys, clbench; print(sorted(m for m in ('torch', 'pandas', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_run_returns_summary_one_row_per_method_and_seed(api_run: Run) -> None:
    from clbench.reporting.rundata import load_run, unit_scores

    summary = api_run.summary()
    assert isinstance(summary, pd.DataFrame)
    assert list(summary[["method", "seed"]].itertuples(index=False, name=None)) == [
        ("naive", 0), ("naive", 1), ("ewc", 0), ("ewc", 1)]
    assert (summary["status"] == "done").all()
    scores = unit_scores(load_run(api_run.path))
    for row in summary.itertuples():
        for key in ("acc_cil", "bwt_cil", "forgetting_cil", "acc_til", "weight_drift", "train_time_s"):
            assert getattr(row, key) == pytest.approx(scores[row.unit][key]), key
    assert api_run.config["ewc"]["penalty_weight"] == 10.0  # config.yaml: one section per method
    assert api_run.env["command"].startswith("clbench.run(") and "penalty_weight" in api_run.env["command"]


def test_records_are_a_tidy_frame(api_run: Run) -> None:
    records = api_run.records
    assert list(records.columns[:4]) == ["type", "unit", "method", "seed"]
    assert records["value"].dtype == float
    accuracy = records[(records["type"] == "accuracy") & (records["metric"] == "acc_cil")]
    assert len(accuracy) == 4 * 4 * 3  # units x rows (0..3) x evaluated tasks
    status = records[records["type"] == "unit"]
    assert set(status["text"]) == {"done"} and status["value"].isna().all()
    matrix = api_run.accuracy_matrix("naive", seed=1)
    assert list(matrix.index) == ["before", "colours", "shapes", "animals"]
    last = accuracy[(accuracy["unit"] == "naive/seed1") & (accuracy["row"] == 3)].sort_values("eval_index")
    assert matrix.loc["animals"].tolist() == pytest.approx(last["value"].tolist())
    with pytest.raises(RunDirError, match="no acc_cil records of unit 'lora/seed0'"):
        api_run.accuracy_matrix("lora")


def test_summary_files_match_the_frame(api_run: Run) -> None:
    with (api_run.path / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    summary = api_run.summary()
    assert [r["unit"] for r in rows] == summary["unit"].tolist()
    assert [float(r["acc_cil"]) for r in rows] == pytest.approx(summary["acc_cil"].tolist())
    document = json.loads((api_run.path / "summary.json").read_text())
    assert document["stream"] == {"name": "synthetic", "version": 2, "tasks": ["colours", "shapes", "animals"]}
    assert [u["unit"] for u in document["units"]] == summary["unit"].tolist()
    ewc = next(m for m in document["methods"] if m["method"] == "ewc")
    assert ewc["seeds"] == [0, 1] and ewc["acc_cil"]["n"] == 2
    expected = summary[summary["method"] == "ewc"]["acc_cil"].mean()
    assert ewc["acc_cil"]["mean"] == pytest.approx(expected)
    assert not math.isnan(ewc["acc_cil"]["ci95"])


def test_load_and_report(api_run: Run, tmp_path: Path) -> None:
    loaded = clbench.load(api_run.path)
    pd.testing.assert_frame_equal(loaded.summary(), api_run.summary())
    report = loaded.report()
    assert report == api_run.path / "report.md" and "## Summary: class-incremental" in report.read_text()
    with pytest.raises(RunDirError, match="holds no results.jsonl"):
        clbench.load(tmp_path)


def test_bad_input_raises_one_line_before_training(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown config key 'epoch' \\(did you mean 'epochs'") as info:
        clbench.run(methods=["naive"], epoch=2, out=str(tmp_path / "x"), **SMALL)
    assert "\n" not in str(info.value) and isinstance(info.value, ClbenchError)
    assert not (tmp_path / "x").exists()


def test_run_accepts_a_config_file_and_a_run_config(tmp_path: Path) -> None:
    from clbench.config import build_config

    file = tmp_path / "exp.yaml"
    file.write_text("methods: [naive]\nstream: synthetic\nmodel: tiny\ntrain_size: 16\ntest_size: 8\nmax_steps: 2\n")
    first = clbench.run(file, out=str(tmp_path / "a"), quiet=True, report=False)
    assert first.config["max_steps"] == 2 and first.config["out"] == str(tmp_path / "a")
    config = build_config({"methods": ["naive"], "stream": "synthetic", "model": "tiny", "train_size": 16,
                           "test_size": 8, "max_steps": 2, "out": str(tmp_path / "b")})
    second = clbench.run(config, quiet=True, report=False)
    assert second.summary()["acc_cil"].tolist() == pytest.approx(first.summary()["acc_cil"].tolist())

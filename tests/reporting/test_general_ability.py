"""General ability on a preference stream's held-out text (`general` records: perplexity and KL from the base
model): the report's table, the summary files' columns and the trackers' scalars; a run without such records
reports as before."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
from scipy import stats
from test_findings import TASKS, hand_run
from test_preference_report import preference_run
from test_report import _cells

from clbench.reporting.export import write_summary
from clbench.reporting.report import write_report
from clbench.trackers import scalars_of

# method -> seed -> (perplexity at rows 0, 1, 2; KL at rows 1, 2); row 0 is the base model (KL 0), which the
# seeds do not share (tiny-lm's initialisation depends on the seed)
GENERAL = {
    "naive": [((40.0, 52.0, 61.0), (0.10, 0.31)), ((44.0, 55.0, 66.0), (0.12, 0.35)),
              ((42.0, 50.0, 63.0), (0.09, 0.30))],
    "lora": [((40.0, 43.0, 45.0), (0.02, 0.05)), ((44.0, 46.5, 47.0), (0.03, 0.04)),
             ((42.0, 44.0, 46.5), (0.025, 0.06))],
}


def with_general(path: Path) -> Path:
    """`preference_run` plus the `general` records its evaluation writes at row 0 and after each task."""
    preference_run(path)
    records = []
    for method, per_seed in GENERAL.items():
        for seed, (perplexity, kl) in enumerate(per_seed):
            for row in range(3):
                for metric, value in (("perplexity", perplexity[row]), ("kl_base", (0.0, *kl)[row])):
                    records.append({"type": "general", "unit": f"{method}/seed{seed}", "method": method,
                                    "seed": seed, "row": row, "task": None if row == 0 else TASKS[row - 1],
                                    "split": "general", "metric": metric, "value": value})
    with (path / "results.jsonl").open("a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    return path


def t_cell(values: list[float], fmt: str) -> str:
    """`mean ± half-width` of the 95% t-interval over seeds, computed here by hand."""
    half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))
    return f"{np.mean(values):{fmt}} ± {half:{fmt}}"


SECTION = "## General ability"


def test_the_table_is_the_mean_over_seeds_before_training_and_after_each_task(tmp_path: Path) -> None:
    text = write_report(with_general(tmp_path / "pref")).read_text()
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings[headings.index("## Reward margin after the last task") + 1] == SECTION
    for method, per_seed in GENERAL.items():
        cells = _cells(text, SECTION, method)
        assert cells["seeds"] == "3"
        assert cells["perplexity before training"] == t_cell([p[0] for p, _ in per_seed], ".2f")
        for t, task in enumerate(TASKS):
            assert cells[f"perplexity after {task}"] == t_cell([p[t + 1] for p, _ in per_seed], ".2f")
            assert cells[f"KL after {task}"] == t_cell([k[t] for _, k in per_seed], ".4f")
    section = text.split(SECTION)[1].split("\n## ")[0]
    assert "**" not in section and "↑" not in section and "↓" not in section  # descriptive: nothing ranked
    assert "held-out general text (the stream's `general` corpus), which no task trains on" in section
    assert "Perplexity is exp of the mean per-token negative log-likelihood of that text." in section
    assert "KL(p_base ‖ p_model)" in section and "64 most likely tokens" in section
    assert "a lower bound of the full KL, 0 before training" in section


def test_no_general_records_no_section(tmp_path: Path) -> None:
    assert SECTION not in write_report(preference_run(tmp_path / "pref")).read_text()
    assert SECTION not in write_report(hand_run(tmp_path)).read_text()


def test_the_summary_files_hold_the_final_perplexity_and_kl_and_no_task_aware_columns(tmp_path: Path) -> None:
    run = with_general(tmp_path / "pref")
    csv_file, json_file = write_summary(run)
    rows = list(csv.DictReader(csv_file.open()))
    for row in rows:
        perplexity, kl = GENERAL[row["method"]][int(row["seed"])]
        assert float(row["general_perplexity"]) == perplexity[-1] and float(row["general_kl_base"]) == kl[-1]
    columns = list(rows[0])
    assert columns.index("general_perplexity") + 1 == columns.index("general_kl_base")
    assert not [c for c in columns if c.endswith("_til") or "_til_" in c or c == "functional_drift"]
    assert "acc_cil" in columns and "reward_margin" in columns
    methods = {m["method"]: m for m in json.loads(json_file.read_text())["methods"]}
    assert methods["lora"]["general_kl_base"]["mean"] == np.mean([k[-1] for _, k in GENERAL["lora"]])
    assert methods["lora"]["general_perplexity"]["n"] == 3


def test_a_classification_summary_keeps_its_task_aware_and_functional_columns(tmp_path: Path) -> None:
    csv_file, _ = write_summary(hand_run(tmp_path))
    columns = next(csv.reader(csv_file.open()))
    assert {"acc_til", "bwt_til", "functional_drift"} <= set(columns)
    assert not [c for c in columns if c.startswith("general_")]


def test_general_records_reach_the_trackers_as_general_metrics() -> None:
    records = [{"type": "general", "unit": "naive/seed0", "method": "naive", "seed": 0, "row": row,
                "task": None if row == 0 else TASKS[row - 1], "split": "general", "metric": metric, "value": value}
               for row, values in enumerate(((40.0, 0.0), (52.0, 0.1))) for metric, value in
               zip(("perplexity", "kl_base"), values)]
    assert scalars_of(records) == {0: {"general/perplexity": 40.0, "general/kl_base": 0.0},
                                   1: {"general/perplexity": 52.0, "general/kl_base": 0.1}}

"""The report of a preference stream (continual DPO): preference accuracy instead of class-incremental
accuracy, no task-aware or functional-drift sections, the reward margin table and DPO's β in the setup; a
classification run keeps its task-aware section."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from test_findings import TASKS, hand_run, write_run
from test_report import _cells

from clbench.errors import RunDirError
from clbench.reporting.compare import compare_runs
from clbench.reporting.report import write_report
from clbench.reporting.rundata import load_run
from clbench.reporting.summary import summary_table

NOISE = (0.0, 0.02, -0.015)


def preference(learn1: float, learn2: float, kept1: float) -> list[list[float]]:
    """R of preference accuracy for two tasks: row 0, the model before the stream, is exactly 0.5."""
    return [[0.5, 0.5], [learn1, 0.6], [kept1, learn2]]


MARGINS = {  # method -> seed -> reward margin after the last task, per task
    "naive": [[0.8, 2.1], [0.9, 2.3], [0.7, 2.2]],
    "lora": [[1.5, 1.0], [1.6, 1.1], [1.4, 0.9]],
}


def preference_run(path: Path) -> Path:
    """A hand-made run of a preference stream: what `write_run` writes, plus the stream's kind, DPO's β and the
    reward margin records (0 at row 0, as every reward is 0 before training)."""
    write_run(path, {"naive": [preference(0.95 + e, 0.95 + e, 0.7 + e) for e in NOISE],
                     "lora": [preference(0.9 + e, 0.85 + e, 0.88 + e) for e in NOISE]})
    with (path / "config.yaml").open("a") as fh:
        fh.write("model: tiny-lm\npooling: cls\nactive_classes: all\ndpo_beta: 0.1\n")
    env = json.loads((path / "env.json").read_text())
    env["stream"]["kind"] = "preference"
    for task in env["stream"]["tasks"]:
        task.update(classes=["chosen", "rejected"], train=800)
    (path / "env.json").write_text(json.dumps(env))
    records = []
    for method, per_seed in MARGINS.items():
        for seed, last in enumerate(per_seed):
            rows = [[0.0, 0.0], [0.5 * last[0], 0.1], last]
            records += [{"type": "accuracy", "unit": f"{method}/seed{seed}", "method": method, "seed": seed,
                         "row": row, "task": None if row == 0 else TASKS[row - 1], "eval_task": TASKS[j],
                         "eval_index": j, "step": None, "metric": "reward_margin", "value": value}
                        for row, values in enumerate(rows) for j, value in enumerate(values)]
    with (path / "results.jsonl").open("a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    return path


def t_cell(values: list[float]) -> str:
    """`mean ± half-width` of the 95% t-interval over seeds, as the tables print a descriptive score."""
    half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))
    return f"{np.mean(values):.3f} ± {half:.3f}"


def test_a_preference_report_names_preference_accuracy_and_drops_task_aware_and_functional(tmp_path: Path) -> None:
    run = preference_run(tmp_path / "pref")
    text = write_report(run).read_text()
    assert "## Summary: preference accuracy" in text and "- **Highest ACC (preference accuracy): lora** (0.867)" in text
    assert "Preference accuracy on each task right after training it" in text
    assert "Mean preference accuracy matrix per method" in text
    for absent in ("class-incremental", "task-aware", "functional drift", "F1", "pooling", "classes"):
        assert absent.lower() not in text.lower(), absent
    assert not re.search(r"\bnan\b", text)
    assert not (run / "plots" / "accuracy_matrices_task_aware.png").exists()
    assert (run / "plots" / "accuracy_matrices.png").is_file()
    summary = _cells(text, "## Summary: preference accuracy", "lora")
    assert "functional drift ↓ (nats)" not in summary and summary["ACC ↑"].startswith("**")
    # setup: DPO's β from config.yaml, tasks as pairs
    assert "training loss DPO with β = 0.1 (`dpo_beta`)" in text and "stars (train 800 pairs, test 400 pairs)" in text
    # chance is the base model's 0.5, in the learning table and the definitions
    assert "| chance (base model) | | 0.500 | 0.500 |" in text
    assert "above 0.5, the base model's preference accuracy" in text
    assert "lies above chance: 0.5, the base model's preference accuracy." in text
    assert "- preference accuracy: the share of a task's held-out (prompt, chosen, rejected) pairs" in text


def test_the_reward_margin_table_is_the_mean_over_seeds_after_the_last_task(tmp_path: Path) -> None:
    text = write_report(preference_run(tmp_path / "pref")).read_text()
    section = "## Reward margin after the last task"
    assert section in text and "β = 0.1 times how much more the log-probability of the chosen response" in text
    for method, per_seed in MARGINS.items():
        cells = _cells(text, section, method)
        assert cells["seeds"] == "3"
        assert cells["mean over tasks"] == t_cell([float(np.mean(m)) for m in per_seed])
        for j, task in enumerate(TASKS):
            assert cells[task] == t_cell([m[j] for m in per_seed])
    assert "**" not in text.split(section)[1].split("##")[0]  # descriptive: nothing ranked bold


def test_the_console_summary_and_the_comparison_name_preference_accuracy(tmp_path: Path) -> None:
    a, b = preference_run(tmp_path / "a"), preference_run(tmp_path / "b")
    assert summary_table(a).splitlines()[0].endswith("final accuracy per task (preference)")
    text = compare_runs([a, b])
    assert "## Summary: preference accuracy" in text and "task-aware" not in text
    assert "functional drift" not in text


def test_a_classification_run_keeps_its_task_aware_section(tmp_path: Path) -> None:
    run = hand_run(tmp_path)  # env.json without `kind`: written before preference streams, a classification run
    assert load_run(run).kind == "classification"
    text = write_report(run).read_text()
    assert "## Summary: class-incremental" in text and "## Summary: task-aware" in text
    assert "Highest ACC (class-incremental)" in text and "Reward margin" not in text
    assert "; functional drift on the evaluated inputs of earlier learned tasks" in text
    assert "- functional drift: Bhattacharyya distance" in text and "(plots/accuracy_matrices_task_aware.png)" in text
    assert "training loss over all classes" in text and "stars (2 classes" in text
    assert summary_table(run).splitlines()[0].endswith("final accuracy per task (CIL)")
    env = json.loads((run / "env.json").read_text())
    env["stream"]["kind"] = "classification"  # the key written today: the same report
    (run / "env.json").write_text(json.dumps(env))
    again = write_report(run).read_text()
    assert [line for line in again.splitlines() if "report generated" not in line] == \
        [line for line in text.splitlines() if "report generated" not in line]


def test_an_unknown_stream_kind_is_one_clear_error(tmp_path: Path) -> None:
    run = hand_run(tmp_path)
    env = json.loads((run / "env.json").read_text())
    env["stream"]["kind"] = "ranking"
    (run / "env.json").write_text(json.dumps(env))
    with pytest.raises(RunDirError, match="stream kind 'ranking'.*classification, preference"):
        write_report(run)

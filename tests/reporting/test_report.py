"""The report and the comparison, rendered from one small synthetic run (naive, seeds 0 and 1, curves on)."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from clbench.cli import main
from clbench.reporting.compare import compare_runs
from clbench.reporting.report import write_report, write_report_or_warn
from clbench.results import read_records

SECTIONS = ("# clbench report: ", "## Findings", "## Setup", "## Hyper-parameters", "## Summary: class-incremental",
            "## Learning each task", "## Summary: task-aware", "## Accuracy matrices", "## Accuracy along training",
            "## Per-layer weight change", "## Forgetting against drift", "## Cost", "## Units", "## Definitions")
PLOTS = ("stability_plasticity.png", "accuracy_matrices.png", "accuracy_matrices_task_aware.png",
         "accuracy_curves.png", "layer_drift.png", "forgetting_vs_drift.png", "cost.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One run shared by this module's tests (what `run_tiny` does, once): 3 tasks, 2 seeds, curves."""
    from conftest import tiny_config

    from clbench.registry import MethodRegistry
    from clbench.training.progress import Progress
    from clbench.training.run import run

    base = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLBENCH_CACHE", str(base / "cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        config = tiny_config(base, ("naive",), seeds=[0, 1], eval_every=1, train_size=16, test_size=12)
        yield run(config, registry=MethodRegistry.default(()), progress=Progress("quiet"),
                  command="clbench run --methods naive --stream synthetic --model tiny --seeds 0,1 --eval-every 1")


def _copy(run: Path, dest: Path, keep: Any = None, env: dict[str, Any] | None = None) -> Path:
    """A copy of a run directory, optionally keeping only some records or changing env.json."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("plots", "report.md"))
    if keep is not None:
        lines = [json.dumps(r) for r in read_records(run) if keep(r)]
        (dest / "results.jsonl").write_text("\n".join(lines) + "\n")
    if env is not None:
        current = json.loads((dest / "env.json").read_text())
        current.update(env)
        (dest / "env.json").write_text(json.dumps(current))
    return dest


def _table_row(text: str, section: str, label: str) -> list[str]:
    """Cells of the row `label` in the first table after heading `section`."""
    part = text.split(section, 1)[1]
    for line in part.splitlines():
        if line.startswith(f"| {label} |"):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no row {label!r} after {section!r}")


def _cells(text: str, section: str, label: str) -> dict[str, str]:
    """Column title -> cell of the row `label` in the first table after heading `section`."""
    part = text.split(section, 1)[1]
    header = next(line for line in part.splitlines() if line.startswith("| "))
    titles = [c.strip() for c in header.strip("|").split("|")]
    return dict(zip(titles, _table_row(text, section, label)))


def test_report_has_every_section_and_plot(tiny_run: Path) -> None:
    report = write_report(tiny_run)
    text = report.read_text()
    assert report == tiny_run / "report.md"
    for heading in SECTIONS:
        assert re.search(rf"^{re.escape(heading)}", text, re.MULTILINE), heading
    assert "clbench run --methods naive --stream synthetic" in text and "[config.yaml](config.yaml)" in text
    assert "synthetic** version 2" in text and "torch " in text and "CPU run: peak RSS" in text
    assert "skipped" not in text
    for name in PLOTS:
        png = tiny_run / "plots" / name
        assert png.is_file() and png.stat().st_size > 1000, name
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert f"(plots/{name})" in text


def test_summary_cells_match_hand_computation(tiny_run: Path) -> None:
    from scipy import stats

    records = read_records(tiny_run)
    sizes = [t["test"] for t in json.loads((tiny_run / "env.json").read_text())["stream"]["tasks"]]
    text = write_report(tiny_run).read_text()
    # ACC per seed = mean over tasks of the last row. ± combines the seed t-interval, t_{0.975,1}·s/√2, with
    # the test sets' sampling error at the mean, 1.96·sqrt(p(1−p)/n_eff), n_eff from Σ p_j(1−p_j)/n_j.
    acc, final, learn = [], [], []
    for seed in (0, 1):
        cells = {(r["row"], r["eval_index"]): r["value"] for r in records
                 if r["type"] == "accuracy" and r["metric"] == "acc_cil" and r["seed"] == seed}
        final.append([cells[(3, j)] for j in range(3)])
        acc.append(np.mean(final[-1]))
        learn.append(cells[(2, 1)])
    p = np.mean(final, axis=0)
    variance = sum(p[j] * (1 - p[j]) / sizes[j] for j in range(3)) / 9
    seeds = stats.t.ppf(0.975, 1) * np.std(acc, ddof=1) / math.sqrt(2)
    half = math.sqrt(seeds**2 + stats.norm.ppf(0.975) ** 2 * variance)
    row = _cells(text, "## Summary: class-incremental", "naive")
    assert row["seeds"] == "2"
    assert row["ACC ↑"].strip("*") == f"{np.mean(acc):.3f} ± {half:.3f}"
    drift = [r["value"] for r in records if r["type"] == "drift" and r["param"] == "__overall__"
             and r["metric"] == "frobenius_total" and r["row"] == 3]
    assert row["Δθ since start"].startswith(f"{np.mean(drift):.4f} ± ")
    # learning accuracy of task 2, R[2, 2], on its own test set
    seeds = stats.t.ppf(0.975, 1) * np.std(learn, ddof=1) / math.sqrt(2)
    half = math.sqrt(seeds**2 + stats.norm.ppf(0.975) ** 2 * np.mean(learn) * (1 - np.mean(learn)) / sizes[1])
    task = json.loads((tiny_run / "env.json").read_text())["stream"]["tasks"][1]["name"]
    cell = _cells(text, "## Learning each task", "naive")[task]
    assert cell.strip("*").split(" †")[0] == f"{np.mean(learn):.3f} ± {half:.3f}"


def test_single_seed_has_the_test_sets_interval_and_no_significance_marks(tiny_run: Path, tmp_path: Path) -> None:
    one = _copy(tiny_run, tmp_path / "one", keep=lambda r: r["seed"] == 0 and r["type"] != "curve")
    text = write_report(one).read_text()
    assert " ± " in _cells(text, "## Summary: class-incremental", "naive")["ACC ↑"]  # the test sets' error
    tables = text.split("## Summary: class-incremental")[1].split("## Accuracy matrices")[0]
    assert not [line for line in tables.splitlines() if line.startswith("| ") and "≈" in line]
    assert "Plot `accuracy_curves.png` skipped: no curve records" in text
    assert not (one / "plots" / "accuracy_curves.png").exists()
    assert (one / "plots" / "layer_drift.png").is_file()


def test_run_outside_a_git_checkout_says_so_instead_of_none(tiny_run: Path, tmp_path: Path) -> None:
    run = _copy(tiny_run, tmp_path / "nogit", env={"git_commit": None})
    text = write_report(run).read_text()
    assert "git commit not recorded (not run from a git checkout)" in text and "`None`" not in text


def test_cli_report_and_compare_side_by_side(tiny_run: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(main, ["report", str(tiny_run)], catch_exceptions=False)
    assert result.exit_code == 0 and (tiny_run / "report.md").is_file()
    a, b = _copy(tiny_run, tmp_path / "run_a"), _copy(tiny_run, tmp_path / "run_b")
    monkeypatch.chdir(tmp_path)  # run directories given relative to here, as a user types them
    result = CliRunner().invoke(main, ["compare", "run_a", "run_b", "--out", "cmp"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert text.strip() == result.output.strip()
    links = re.findall(r"^\| \[run_[ab]\]\(([^)]+)\)", text, flags=re.MULTILINE)
    assert [(tmp_path / "cmp" / link).resolve() for link in links] == [(a / "report.md").resolve(),
                                                                      (b / "report.md").resolve()]
    ours = _cells(text, "## Summary: class-incremental", "run_a: naive")
    theirs = _cells(text, "## Summary: class-incremental", "run_b: naive")
    assert ours["ACC ↑"].strip("*≈ ") == theirs["ACC ↑"].strip("*≈ ")  # same records, same scores
    assert "## Summary: task-aware" in text and "identical apart from `out`" in text


def test_compare_different_streams_is_one_line_exit_2(tiny_run: Path, tmp_path: Path) -> None:
    other = _copy(tiny_run, tmp_path / "other", env={"stream": {"name": "reviews", "version": 7, "tasks": []}})
    result = CliRunner().invoke(main, ["compare", str(tiny_run), str(other)], catch_exceptions=False)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith("clbench: error: runs use different streams: ")
    assert "synthetic v2" in lines[0] and "reviews v7" in lines[0] and "compare runs of the same stream" in lines[0]
    with pytest.raises(Exception, match="different streams"):
        compare_runs([tiny_run, other])


def test_report_failure_only_warns(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "results.jsonl").write_text('{"type": "unit"\n{"also": "torn"}\n')  # corrupted, not just torn
    warnings: list[str] = []
    assert write_report_or_warn(broken, warnings.append) is None
    assert len(warnings) == 1 and "\n" not in warnings[0] and "clbench report" in warnings[0]


def test_reused_first_task_is_charged_to_the_unit_that_reused_it(tiny_run: Path, tmp_path: Path) -> None:
    from clbench.reporting.rundata import load_run, unit_scores

    before = unit_scores(load_run(tiny_run))
    copy = _copy(tiny_run, tmp_path / "shared")
    note = {"type": "note", "unit": "naive/seed1", "method": "naive", "seed": 1, "row": 1, "task": "colours",
            "metric": "shared_first_task", "value": "naive/seed0"}
    with (copy / "results.jsonl").open("a") as fh:
        fh.write(json.dumps(note) + "\n")
    after = unit_scores(load_run(copy))
    producer_task1 = next(r["value"] for r in read_records(tiny_run) if r["unit"] == "naive/seed0"
                          and r["type"] == "profile" and r["phase"] == "train" and r["row"] == 1
                          and r["metric"] == "wall_s")
    assert after["naive/seed1"]["train_time_s"] == pytest.approx(before["naive/seed1"]["train_time_s"]
                                                                 + producer_task1)
    assert after["naive/seed0"]["train_time_s"] == before["naive/seed0"]["train_time_s"]

"""Progress says where a run is: unit i/N, task t/T, the run's ETA, accuracy as each task finishes, the reused
first task; library warnings stay out of the output unless --verbose."""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from clbench.cli import main
from clbench.training.progress import Progress, duration

FIXTURES = Path(__file__).parents[1] / "fixtures"
SMALL = ["--stream", "synthetic", "--model", "tiny", "--train-size", "16", "--test-size", "8", "--max-steps", "2"]


def test_duration() -> None:
    assert [duration(s) for s in (0.4, 12, 95, 4000)] == ["0s", "12s", "1m35s", "1h06m"]


def test_run_reports_units_tasks_eta_accuracy_and_reuse(tmp_path: Path) -> None:
    from conftest import tiny_config

    from clbench.registry import MethodRegistry
    from clbench.training.run import run

    stream = io.StringIO()
    config = tiny_config(tmp_path, ("naive", "ewc"), max_steps=2, train_size=16, test_size=8)
    run(config, registry=MethodRegistry.default(()), progress=Progress("lines", stream))
    lines = stream.getvalue().splitlines()
    starts = [line for line in lines if re.search(r"\[unit \d/2\]: task \d/3", line)]
    assert [re.search(r"(\w+/seed0) \[unit (\d)/2\]: task (\d)/3", s).groups() for s in starts] == [  # type: ignore[union-attr]
        ("naive/seed0", "1", "1"), ("naive/seed0", "1", "2"), ("naive/seed0", "1", "3"),
        ("ewc/seed0", "2", "1"), ("ewc/seed0", "2", "2"), ("ewc/seed0", "2", "3")]
    assert "run eta" not in starts[0] and all("(run eta " in s for s in starts[1:])
    assert "ewc/seed0 colours: reusing the first task as trained by naive/seed0 (2 steps), not training it again" \
        in lines
    after = [line for line in lines if "accuracy on the tasks so far" in line]
    assert len(after) == 6
    assert re.fullmatch(r"naive/seed0: after 'shapes', accuracy on the tasks so far \(class-incremental\): "
                        r"colours \d\.\d{3}, shapes \d\.\d{3}; mean \d\.\d{3}", after[1])


def test_accuracy_lines_match_the_records() -> None:
    stream = io.StringIO()
    progress = Progress("lines", stream)
    progress.start_run(1, 2)
    records = [{"type": "accuracy", "unit": "a/seed0", "row": 2, "task": "t2", "eval_task": name, "eval_index": i,
                "metric": metric, "value": value}
               for i, (name, value) in enumerate((("t1", 0.5), ("t2", 0.25), ("t3", 0.0)))
               for metric in ("acc_cil", "acc_til")]
    progress.append(records)
    assert stream.getvalue().strip() == ("a/seed0: after 't2', accuracy on the tasks so far (class-incremental): "
                                         "t1 0.500, t2 0.250; mean 0.375")
    assert progress.eta().startswith("run eta ")  # one of two tasks done


@pytest.mark.parametrize("verbose", [False, True])
def test_library_warnings_only_with_verbose(tmp_path: Path, verbose: bool) -> None:
    args = ["run", "--methods", "warns", "--plugin", str(FIXTURES / "plugin_warns.py"), *SMALL, "--out",
            str(tmp_path / "run")]
    with warnings.catch_warnings(record=True) as caught:  # what would reach the terminal
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, args + (["--verbose"] if verbose else []), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    shown = " ".join(str(w.message) for w in caught)
    for needle in ("library-future-warning", "library-user-warning"):
        assert (needle in shown) is verbose, shown


def test_lora_run_prints_no_library_warnings(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(main, ["run", "--methods", "lora", *SMALL, "--out", str(tmp_path / "run")],
                                    catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert not caught, [str(w.message) for w in caught]
    assert "Warning" not in result.stderr, result.stderr

"""Every benchmark script runs end to end at the smallest sizes and prints its figure: a benchmark that crashes
is found here, not in the session that meant to measure with it. No time is asserted (figures live in
benchmarks/README.md)."""

from __future__ import annotations

import importlib
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.network]  # MiniLM and the reviews stream come from pinned archives

CASES = {
    "bench_overhead": (["--steps", "2", "--repeats", "1", "--test-size", "8"],
                       ("reproduces the runner's training losses exactly: True", "all runs in this process",
                        "overhead (clbench / bare")),
    "bench_overhead --fresh": (["--steps", "2", "--repeats", "1", "--test-size", "8", "--fresh"],
                               ("each run in a new process", "repeat 1: clbench", "repeat 1: bare",
                                "overhead (clbench / bare")),
    "bench_avalanche": (["--train-size", "16", "--test-size", "8", "--repeats", "1"],
                        ("naive: train+method", "ewc: train+method", "final acc_cil")),
    "bench_eval": (["--repeats", "1", "--test-size", "16"], ("speed-up (padded / bucketed",)),
    "bench_fisher": (["--n", "16", "--repeats", "1", "--model", "tiny"], ("fisher (hooks):",)),
    "bench_fip": (["--model", "tiny", "--steps", "1", "--repeats", "1", "--buffer", "16", "--seq-len", "16",
                   "--skip", "fip-geometric"], ("fip step time",)),
    "bench_tune": (["--model", "tiny", "--stream", "synthetic", "--trials", "2", "--steps", "2", "--train-size",
                    "32", "--test-size", "8", "--pruner", "halving", "--prune-every", "1"],
                   ("search / separate runs:", "the search's choices among the trials run to the end")),
    "bench_grid": (["--model", "tiny", "--stream", "synthetic", "--steps", "2", "--train-size", "32",
                    "--test-size", "8", "--methods", "naive,ewc"], ("grid / sum of singles:",)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs_and_prints_its_figure(name: str, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    argv, expected = CASES[name]
    script = name.split()[0]
    module = importlib.import_module(f"clbench.benchmarks.{script}")
    monkeypatch.setattr(sys, "argv", [script, *argv])  # the scripts whose main() reads sys.argv
    module.main()
    out = capsys.readouterr().out
    assert out.startswith("machine: ")
    for text in expected:
        assert text in out, out

"""Crash safety: determinism, --resume after an interruption or SIGKILL, checkpoints, the lock, failing units."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from runs_util import FAULTS, comparable, tiny_run

from clbench.cli import main
from clbench.errors import RunDirError
from clbench.reporting.report import write_report
from clbench.reporting.rundata import accuracy_matrices
from clbench.results import read_records


def test_same_seed_gives_the_same_accuracy_matrix(tmp_path: Path) -> None:
    first = tiny_run(tmp_path / "a", ("naive", "ewc"), seeds=[3])
    second = tiny_run(tmp_path / "b", ("naive", "ewc"), seeds=[3])
    assert comparable(first) == comparable(second)
    for unit, matrix in accuracy_matrices(first).items():
        assert (matrix == accuracy_matrices(second)[unit]).all()


def test_interrupted_run_resumes_to_the_uninterrupted_results(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    methods = ("naive", "interrupt", "counter")
    settings = {"plugins": (FAULTS,), "eval_every": 2, "max_steps": 5}
    reference = tiny_run(tmp_path / "ref", methods, **settings)
    out = tmp_path / "run"
    monkeypatch.setenv("CLBENCH_TEST_INTERRUPT", "1")  # `interrupt` stops the run at step 3 of task 2
    with pytest.raises(KeyboardInterrupt):
        tiny_run(out, methods, **settings)
    monkeypatch.delenv("CLBENCH_TEST_INTERRUPT")
    assert not (out / ".lock").exists()
    marker = json.loads((out / "checkpoints" / "interrupt" / "seed0" / "checkpoint.json").read_text())
    assert marker["row"] == 1 and marker["task"]
    partial = read_records(out)
    assert any(r["unit"] == "interrupt/seed0" and r["row"] == 2 for r in partial)  # a curve of the unfinished task
    assert not (out / "checkpoints" / "naive").exists()  # deleted when its unit finished

    resumed = tiny_run(out, methods, resume=True, **settings)
    assert comparable(resumed) == comparable(reference)
    assert [r["value"] for r in resumed if r["type"] == "resume"] == [1]
    assert not any((out / "checkpoints").rglob("*.safetensors"))


def test_a_resume_with_more_seeds_keeps_the_finished_units_and_runs_the_new_seeds(tmp_path: Path) -> None:
    methods = ("naive", "ewc")
    reference = tiny_run(tmp_path / "ref", methods, seeds=[0, 1, 2])
    out = tmp_path / "run"
    first = tiny_run(out, methods, seeds=[0])
    before = (out / "results.jsonl").read_bytes()
    extended = tiny_run(out, methods, seeds=[0, 1, 2], resume=True)
    assert (out / "results.jsonl").read_bytes().startswith(before)  # seed 0's records kept as written
    assert comparable(extended, {"naive/seed0", "ewc/seed0"}) == comparable(first)  # and not trained again
    assert comparable(extended) == comparable(reference)  # seeds 1 and 2 as a run with all three gives them
    assert "seeds:\n- 0\n- 1\n- 2\n" in (out / "config.yaml").read_text()
    added = json.loads((out / "env.json").read_text())["seeds_added"]
    assert [entry["seeds"] for entry in added] == [[1, 2]]
    write_report(out)
    assert f"(seeds 1, 2 added {added[0]['at']} at commit" in (out / "report.md").read_text()
    again = tiny_run(out, methods, seeds=[0, 1, 2], resume=True)  # the saved run now has three seeds: no work
    assert comparable(again) == comparable(extended)
    with pytest.raises(RunDirError, match="seeds"):  # dropping a seed is another run
        tiny_run(out, methods, seeds=[0, 1], resume=True)


@pytest.mark.slow  # two CLI processes and a reference run: about 30 s on a quiet 2-core machine
def test_sigkill_in_the_middle_of_a_task_then_resume_gives_identical_results(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    args = ["run", "--methods", "naive,counter", "--plugin", FAULTS, "--stream", "synthetic", "--model", "tiny",
            "--train-size", "32", "--test-size", "16", "--batch-size", "8", "--max-steps", "150", "--quiet",
            "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "clbench.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:  # wait until task 1 of `naive` is finished
            if results.is_file() and '"row": 1' in results.read_text():
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()!r}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed = read_records(out)
    assert not any(r["type"] == "unit" for r in killed)  # no unit had finished

    # the saved config.yaml lists the plugin file; importing it from there takes the explicit flag (#16)
    result = CliRunner().invoke(main, ["run", "--out", str(out), "--resume", "--quiet", "--allow-config-plugins"])
    assert result.exit_code == 0, result.output
    reference = tiny_run(tmp_path / "ref", ("naive", "counter"), plugins=(FAULTS,), max_steps=150)
    assert comparable(read_records(out)) == comparable(reference)
    assert (accuracy_matrices(read_records(out))["naive/seed0"] == accuracy_matrices(reference)["naive/seed0"]).all()


def test_corrupted_checkpoint_is_one_error_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    monkeypatch.setenv("CLBENCH_TEST_INTERRUPT", "1")
    with pytest.raises(KeyboardInterrupt):
        tiny_run(out, ("interrupt",), plugins=(FAULTS,))
    monkeypatch.delenv("CLBENCH_TEST_INTERRUPT")
    model = next((out / "checkpoints").rglob("model.safetensors"))
    data = bytearray(model.read_bytes())
    data[-5] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(RunDirError, match="model.safetensors"):
        tiny_run(out, ("interrupt",), plugins=(FAULTS,), resume=True)


def test_a_locked_run_directory_is_refused_and_a_stale_lock_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with pytest.raises(RunDirError, match="in use by process"):
        tiny_run(out, ("naive",))
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    records = tiny_run(out, ("naive",))
    assert any(r["type"] == "unit" and r["value"] == "done" for r in records)
    assert not (out / ".lock").exists()


def test_nan_loss_and_cuda_oom_fail_their_unit_and_the_others_go_on(tmp_path: Path) -> None:
    records = tiny_run(tmp_path / "run", ("nan-loss", "naive", "oom-loss"), plugins=(FAULTS,))
    status = {r["unit"]: r for r in records if r["type"] == "unit"}
    assert status["naive/seed0"]["value"] == "done"
    assert status["nan-loss/seed0"]["value"] == "failed"
    assert "loss became nan at step 3 of task" in status["nan-loss/seed0"]["error"]
    assert status["oom-loss/seed0"]["value"] == "failed"
    assert "out of memory with batch_size=8" in status["oom-loss/seed0"]["error"]
    assert not (tmp_path / "run" / "checkpoints" / "nan-loss").exists()

"""Crash tests (#16): kill a real `clbench` process at random moments, then `--resume`; the results must
equal an uninterrupted run's.

Every test starts `python -m clbench.cli` (tiny model, synthetic stream, three methods of which one keeps
state in its checkpoints, two seeds, curves every 4 steps), kills it with SIGKILL (or SIGINT, as Ctrl-C)
while it trains, reports, or resumes, then runs `clbench run --out DIR --resume` to completion. The resumed
run's records, read as documented (a torn last line is skipped; a unit's `resume` record drops its earlier
records with a larger row) and without timing and scheduling records (profile, note, resume), must equal
the uninterrupted reference run's, with no duplicate, no failed unit, no checkpoint or lock left, and a
report.

Kill points are drawn from bands of the reference run's record count with a seeded generator: set
CLBENCH_CRASH_SEED to draw others. Only the CLI and files are used (no clbench imports): module paths move.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow  # every test here runs two or three CLI processes: 20-60 s each on 2 cores

FAULTS = str(Path(__file__).parent / "fixtures" / "plugin_faults.py")
# fmt: off
RUN = ["--methods", "naive,ewc,counter", "--plugin", FAULTS, "--seeds", "0,1", "--stream", "synthetic",
       "--model", "tiny", "--train-size", "32", "--test-size", "16", "--batch-size", "8", "--max-steps", "10",
       "--eval-every", "4", "--quiet"]
# fmt: on
NOT_COMPARED = {"profile", "note", "resume"}  # timing and scheduling records, not what was learnt
SEED = os.environ.get("CLBENCH_CRASH_SEED", "16")
TIMEOUT = 600


# ------------------------------------------------------------------------------------------- shared helpers


def read_results(run_dir: Path) -> list[dict[str, Any]]:
    """results.jsonl as documented: complete records (a torn last line skipped); a unit's `resume` record
    drops that unit's earlier records with a larger row."""
    lines = (run_dir / "results.jsonl").read_text(encoding="utf-8").splitlines()
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            assert number == len(lines), f"line {number} of {run_dir / 'results.jsonl'} is corrupted"
            break
        if record["type"] == "resume":
            records = [r for r in records if r["unit"] != record["unit"] or r["row"] <= record["value"]]
        records.append(record)
    return records


def comparable(records: list[dict[str, Any]]) -> dict[tuple[Any, ...], Any]:
    """What a run learnt, keyed so two runs compare with == (NaN compares equal to NaN); no duplicates."""
    out: dict[tuple[Any, ...], Any] = {}
    for r in records:
        if r["type"] in NOT_COMPARED:
            continue
        key = (
            r["unit"],
            r["type"],
            r["row"],
            r.get("step"),
            r["metric"],
            r.get("eval_index"),
            r.get("param"),
        )
        assert key not in out, f"duplicate record {key}"
        value = r["value"]
        out[key] = "nan" if isinstance(value, float) and math.isnan(value) else value
    return out


def line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@dataclass
class Workspace:
    root: Path
    env: dict[str, str]

    def start(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        # Ctrl-C must reach the run even when the tests run in a background job, whose shell hands its children
        # SIGINT ignored: a child inherits an ignored signal, and Python keeps it ignored. A handled one is reset
        # to the default in the child, so handle it here.
        if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        with (self.root / log).open("ab") as err:
            return subprocess.Popen(
                [sys.executable, "-m", "clbench.cli", *args],
                cwd=self.root,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def run(self, *args: str, log: str) -> None:
        proc = self.start(*args, log=log)
        returncode = proc.wait(timeout=TIMEOUT)
        assert returncode == 0, f"`clbench {' '.join(args)}` exited {returncode}: {self.tail(log)}"

    def tail(self, log: str) -> str:
        return (self.root / log).read_text(errors="replace")[-1500:]


def kill_when(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], sig: int = signal.SIGKILL, delay: float = 0.0
) -> None:
    """Send `sig` to `proc` as soon as `ready()` holds (polled every 2 ms), after `delay` seconds; the process
    must still be running then, or the test did not test what it says."""
    deadline = time.monotonic() + TIMEOUT
    while proc.poll() is None and not ready():
        assert time.monotonic() < deadline, "the kill point was never reached"
        time.sleep(0.002)
    if delay:
        time.sleep(delay)
    assert proc.poll() is None, f"the process ended (exit {proc.returncode}) before the kill point"
    proc.send_signal(sig)
    proc.wait(timeout=120)


def draw(band: tuple[float, float], total: int, salt: str) -> int:
    """A record count drawn from `band` (fractions of the reference run's records)."""
    rng = random.Random(f"{SEED}/{salt}")
    return max(1, int(rng.uniform(*band) * total))


def assert_like_reference(run_dir: Path, reference: dict[tuple[Any, ...], Any], context: str) -> None:
    records = read_results(run_dir)
    status = {r["unit"]: r["value"] for r in records if r["type"] == "unit"}
    assert set(status.values()) == {"done"} and len(status) == 6, f"{context}: unit status {status}"
    got = comparable(records)
    missing = sorted(set(reference) - set(got))[:3]
    extra = sorted(set(got) - set(reference))[:3]
    differ = sorted(k for k in set(got) & set(reference) if got[k] != reference[k])[:3]
    assert got == reference, f"{context}: missing {missing}, extra {extra}, different {differ}"
    assert not list((run_dir / "checkpoints").rglob("*.safetensors")), f"{context}: checkpoints left behind"
    assert not (run_dir / ".lock").exists(), f"{context}: lock left behind"
    assert (run_dir / "report.md").is_file(), f"{context}: no report"


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("crash")
    env = {k: v for k, v in os.environ.items() if k != "CLBENCH_DATA_DIR"}
    env.update(
        CLBENCH_CACHE=str(root / "cache"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return Workspace(root, env)


@dataclass
class Reference:
    path: Path
    records: dict[tuple[Any, ...], Any]
    lines: int  # records written by the uninterrupted run


@pytest.fixture(scope="module")
def reference(workspace: Workspace) -> Reference:
    workspace.run("run", *RUN, "--out", "reference", log="reference.err")
    path = workspace.root / "reference"
    return Reference(path, comparable(read_results(path)), line_count(path / "results.jsonl"))


def resume(workspace: Workspace, out: str) -> list[str]:
    # --plugin again: the fixture methods must not depend on the saved config.yaml importing plugin code
    return ["run", "--out", out, "--resume", "--quiet", "--plugin", FAULTS]


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    "band", [(0.02, 0.12), (0.25, 0.4), (0.5, 0.65), (0.75, 0.95)], ids=["early", "quarter", "half", "late"]
)
def test_sigkill_while_training_then_resume(
    workspace: Workspace, reference: Reference, band: tuple[float, float]
) -> None:
    out = f"train-{band[0]}"
    k = draw(band, reference.lines, out)
    proc = workspace.start("run", *RUN, "--out", out, log=f"{out}.err")
    kill_when(proc, lambda: line_count(workspace.root / out / "results.jsonl") >= k)
    assert proc.returncode == -signal.SIGKILL
    workspace.run(*resume(workspace, out), log=f"{out}.err")
    assert_like_reference(
        workspace.root / out, reference.records, f"SIGKILL after {k} of {reference.lines} records"
    )


def test_ctrl_c_while_training_then_resume(workspace: Workspace, reference: Reference) -> None:
    out = "ctrl-c"
    k = draw((0.35, 0.6), reference.lines, out)
    proc = workspace.start("run", *RUN, "--out", out, log=f"{out}.err")
    kill_when(proc, lambda: line_count(workspace.root / out / "results.jsonl") >= k, sig=signal.SIGINT)
    assert proc.returncode != 0
    assert not (workspace.root / out / ".lock").exists(), "Ctrl-C left the lock"
    assert "Traceback" not in workspace.tail(f"{out}.err")
    workspace.run(*resume(workspace, out), log=f"{out}.err")
    assert_like_reference(
        workspace.root / out, reference.records, f"SIGINT after {k} of {reference.lines} records"
    )


def test_sigkill_while_run_writes_its_report_then_resume(workspace: Workspace, reference: Reference) -> None:
    out = "run-report"
    proc = workspace.start("run", *RUN, "--out", out, log=f"{out}.err")
    delay = random.Random(f"{SEED}/{out}").uniform(0.0, 0.3)
    kill_when(
        proc, lambda: line_count(workspace.root / out / "results.jsonl") >= reference.lines, delay=delay
    )
    assert proc.returncode == -signal.SIGKILL
    workspace.run(*resume(workspace, out), log=f"{out}.err")
    assert_like_reference(
        workspace.root / out, reference.records, f"SIGKILL {delay:.2f} s into the report phase"
    )


def test_sigkill_during_clbench_report_then_resume(workspace: Workspace, reference: Reference) -> None:
    out = "report"
    shutil.copytree(reference.path, workspace.root / out)
    plots = workspace.root / out / "plots"
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert pngs, "the reference run drew no plots"
    proc = workspace.start("report", out, log=f"{out}.err")
    delay = random.Random(f"{SEED}/{out}").uniform(0.0, 0.3)
    kill_when(proc, lambda: len(list(plots.glob("*.png"))) < len(pngs), delay=delay)  # it has begun redrawing
    assert proc.returncode == -signal.SIGKILL
    workspace.run(*resume(workspace, out), log=f"{out}.err")
    assert_like_reference(
        workspace.root / out, reference.records, f"SIGKILL {delay:.2f} s into `clbench report`"
    )
    assert sorted(p.name for p in plots.glob("*.png")) == pngs
    workspace.run("report", out, log=f"{out}.err")


def test_sigkill_during_resume_then_resume(workspace: Workspace, reference: Reference) -> None:
    out = "resume-twice"
    results = workspace.root / out / "results.jsonl"
    first = draw((0.15, 0.35), reference.lines, f"{out}/1")
    proc = workspace.start("run", *RUN, "--out", out, log=f"{out}.err")
    kill_when(proc, lambda: line_count(results) >= first)
    assert proc.returncode == -signal.SIGKILL
    second = line_count(results) + draw((0.2, 0.4), reference.lines, f"{out}/2")
    proc = workspace.start(*resume(workspace, out), log=f"{out}.err")
    kill_when(proc, lambda: line_count(results) >= second)
    assert proc.returncode == -signal.SIGKILL
    workspace.run(*resume(workspace, out), log=f"{out}.err")
    assert_like_reference(
        workspace.root / out,
        reference.records,
        f"SIGKILL after {first} records, then during --resume at {second} lines",
    )

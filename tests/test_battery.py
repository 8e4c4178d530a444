"""The hostile-input battery (#16): bad or hostile inputs as a careless or unlucky user would give them.

One table, `CASES`, of inputs across the CLI flags, `--set`, config YAML files, stream YAML files and their
data files (CSV / JSONL / parquet), plugins, run directories (results.jsonl, config.yaml, checkpoints) and the
tokenisation cache. Every case runs in a fresh folder (also the working directory) and drives the CLI only:
through click's CliRunner, or a subprocess where a real process is needed (concurrency, Ray). Inputs are files
and command lines; the only clbench import is `clbench.cli.main` (module paths inside the package will move).

A refusal case (the default) asserts: exit code 2; one line on stderr, `clbench: error: ...`, holding the
given words (the value and the fix); no traceback; every file and folder that existed before is byte-identical
after, and nothing new was written (the run directory included). Click's own usage errors (unknown option,
bad type of a typed flag) print `Usage: / Try ... --help / Error: ...`; that fixed three-line form is accepted
and its `Error:` line is checked instead. Cases where the right outcome is not a refusal (a recovery, a run
whose unit fails, results that must survive) give their own `check`.

Cases that fail today are strict xfails whose reason starts with `#16 [class]`: when a fix makes one pass,
pytest reports it as failed (XPASS strict): remove its `fails=` then. Reasons marked "new" were found while
building this battery and are not in the issue's list.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import json
import math
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from clbench.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
FAULTS = str(FIXTURES / "plugin_faults.py")
# The smallest run that trains: tiny model, 8 examples per split, one optimiser step per task.
# fmt: off
TRAIN = ["--model", "tiny", "--train-size", "8", "--test-size", "8", "--max-steps", "1", "--batch-size", "8",
         "--quiet"]
# fmt: on
SYN = ["--stream", "synthetic", *TRAIN]
MAX_MESSAGE = 1000  # any message longer than this is not "one line a person reads"
NOT_COMPARED = {"profile", "note", "resume"}  # timing and scheduling records, not what was learnt
HAS_CUDA = importlib.util.find_spec("torch") is not None and __import__("torch").cuda.is_available()


# ------------------------------------------------------------------------------------------- shared helpers


def invoke(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Result:
    """`clbench ARGV` in this process; an uncaught exception is kept in `result.exception`, not raised."""
    return CliRunner().invoke(main, list(argv), env=dict(env or {}), catch_exceptions=True)


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file (or "dir") under `root`; plugins' bytecode caches are ignored."""
    out = {}
    for p in sorted(root.rglob("*")):
        if "__pycache__" in p.parts:
            continue
        rel = str(p.relative_to(root))
        if p.is_symlink() and not p.exists():
            out[rel] = "broken-link"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_no_traceback(result: Result) -> None:
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit), f"uncaught {type(exc).__name__}: {str(exc)[:300]}"
    assert "Traceback" not in result.output


def message_line(stderr: str) -> str:
    """The one message line of stderr (see the module docstring for click's usage form)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if len(lines) == 3 and lines[0].startswith("Usage:") and lines[2].startswith("Error: "):
        return lines[2]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {stderr[:600]!r}"
    assert lines[0].startswith("clbench: error: "), lines[0][:300]
    return lines[0]


def assert_message(
    line: str,
    needles: Sequence[str | re.Pattern[str]],
    absent: Sequence[str] = (),
    max_chars: int = MAX_MESSAGE,
) -> None:
    assert len(line) <= max_chars, f"message of {len(line)} characters: {line[:300]}..."
    for needle in needles:
        found = needle.search(line) if isinstance(needle, re.Pattern) else needle in line
        assert found, f"{needle!r} not in: {line[:600]}"
    for word in absent:
        assert word not in line, f"{word!r} must not be in: {line[:600]}"


def assert_refused(
    result: Result,
    needles: Sequence[str | re.Pattern[str]],
    absent: Sequence[str] = (),
    max_chars: int = MAX_MESSAGE,
) -> None:
    assert_no_traceback(result)
    assert result.exit_code == 2, f"exit code {result.exit_code}; stderr: {result.stderr[:600]!r}"
    assert_message(message_line(result.stderr), needles, absent, max_chars)


def assert_kept(before: Mapping[str, str], after: Mapping[str, str], new_allowed: bool = False) -> None:
    changed = sorted(p for p, digest in before.items() if after.get(p) != digest)
    assert not changed, f"changed or deleted: {changed}"
    if not new_allowed:
        new = sorted(set(after) - set(before))
        assert not new, f"written although the input was refused: {new}"


def strict_json(line: str) -> Any:
    """json.loads that refuses the NaN / Infinity tokens (as strict parsers such as jq or JavaScript do)."""

    def refuse(token: str) -> Any:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(line, parse_constant=refuse)


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


@contextlib.contextmanager
def working_dir(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def subprocess_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CLBENCH_DATA_DIR"}
    env.update(
        CLBENCH_CACHE=str(cache),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def csv_text(prefix: str, labels: Sequence[str], n: int = 24) -> str:
    """A small CSV of unique texts (differing between prefixes), labels cycling through `labels`."""
    rows = [f"{prefix} sample {i} {'word ' * (i % 4)}end,{labels[i % len(labels)]}" for i in range(n)]
    return "text,label\n" + "\n".join(rows) + "\n"


GOOD_CSV = csv_text("alpha", ["a", "b"])


# ----------------------------------------------------------------- prebuilt run directories (built once)


class Prebuilt:
    """Run directories made once per module by real CLI runs, copied into each case that needs one.

    finished/    fin/ (a finished `naive` run with report and plots: SYN flags) and cache/ (its tokenisation)
    interrupted/ data/ (a user stream: tasks 'first' and 'second' over CSV files) and run/ (`naive` finished,
                 `interrupt` stopped by Ctrl-C in task 2 with its checkpoint after task 1) and cache/
    Paths inside the runs are relative, so a copy is a self-contained run in the case's folder.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.built: dict[str, Path] = {}

    def get(self, name: str) -> Path:
        if name not in self.built:
            folder = self.root / name
            folder.mkdir()
            with working_dir(folder):
                getattr(self, f"_build_{name}")(folder)
            self.built[name] = folder
        return self.built[name]

    @staticmethod
    def _build_finished(folder: Path) -> None:
        result = invoke(
            ["run", "--methods", "naive", *SYN, "--out", "fin"], env={"CLBENCH_CACHE": str(folder / "cache")}
        )
        assert result.exit_code == 0, result.output

    @staticmethod
    def _build_interrupted(folder: Path) -> None:
        data = folder / "data"
        data.mkdir()
        (data / "t1.csv").write_text(csv_text("alpha", ["a", "b"]))
        (data / "t2.csv").write_text(csv_text("beta", ["c", "d"]))
        (data / "stream.yaml").write_text(
            "name: user\nversion: 1\n"
            "defaults: {source: files, train_size: 16, test_size: 8, max_length: 32}\n"
            "tasks:\n  - {name: first, train: t1.csv, classes: [a, b]}\n"
            "  - {name: second, train: t2.csv, classes: [c, d]}\n"
        )
        result = invoke(
            [
                "run",
                "--methods",
                "naive,interrupt",
                "--plugin",
                FAULTS,
                "--stream",
                "data/stream.yaml",
                "--model",
                "tiny",
                "--max-steps",
                "4",
                "--batch-size",
                "8",
                "--quiet",
                "--out",
                "run",
            ],
            env={"CLBENCH_CACHE": str(folder / "cache"), "CLBENCH_TEST_INTERRUPT": "1"},
        )
        assert (
            result.exit_code == 1 and (folder / "run/checkpoints/interrupt/seed0/checkpoint.json").is_file()
        ), result.output


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory: pytest.TempPathFactory) -> Prebuilt:
    return Prebuilt(tmp_path_factory.mktemp("prebuilt"))


@dataclass
class Where:
    """A case's folder (also the working directory) and the prebuilt runs it may copy in."""

    tmp: Path
    prebuilt: Prebuilt

    def copy(self, name: str) -> None:
        for item in self.prebuilt.get(name).iterdir():
            shutil.copytree(item, self.tmp / item.name, symlinks=True)

    def write(self, files: Mapping[str, str | bytes]) -> None:
        for name, content in files.items():
            path = self.tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")


Make = Callable[[Where], list[str]]
Check = Callable[[Where, Result, Mapping[str, str]], None]


@dataclass(frozen=True)
class Case:
    name: str
    make: Make  # writes the inputs into the case's folder; returns the command line after `clbench`
    needles: tuple[str | re.Pattern[str], ...] = ()  # the message must hold these (value and fix)
    absent: tuple[str, ...] = ()  # ... and must not hold these
    check: Check | None = None  # replaces the refusal checks when the right outcome is not a refusal
    procedure: Callable[[Path], None] | None = None  # a case that drives its own processes
    env: Mapping[str, str] = field(default_factory=dict)  # "{tmp}" is replaced by the case's folder
    max_chars: int = MAX_MESSAGE
    fails: str | None = None  # "#16 [class]: what goes wrong now" -> strict xfail
    slow: bool = False
    skip: str | None = None


# ------------------------------------------------------------------------------------------ case builders


def run(
    *args: str,
    files: Mapping[str, str | bytes] | None = None,
    methods: str | None = "naive",
    out: str | None = "out",
) -> Make:
    """A fresh run of `methods` into `out` (None: no such flag; later flags override earlier ones), after
    writing `files`."""

    def make(w: Where) -> list[str]:
        w.write(files or {})
        return [
            "run",
            *(["--methods", methods] if methods else []),
            *SYN,
            *(["--out", out] if out else []),
            *args,
        ]

    return make


def command(argv: Sequence[str], files: Mapping[str, str | bytes] | None = None) -> Make:
    """Any command line, after writing `files`."""

    def make(w: Where) -> list[str]:
        w.write(files or {})
        return list(argv)

    return make


def config(
    text: str | bytes,
    *args: str,
    files: Mapping[str, str | bytes] | None = None,
    methods: str | None = "naive",
    out: str | None = "out",
) -> Make:
    """A run with `--config cfg.yaml` holding `text` (flags override the file: pass None to leave one out)."""
    return run(
        "--config", "cfg.yaml", *args, files={"cfg.yaml": text, **(files or {})}, methods=methods, out=out
    )


STREAM_HEAD = (
    "name: user\nversion: 1\ndefaults: {source: files, train_size: 8, test_size: 8, max_length: 32}\n"
)


def stream_file(text: str | bytes, files: Mapping[str, str | bytes] | None = None, *args: str) -> Make:
    """A run of the stream file `streams/s.yaml` (`files` are written under streams/ unless they name a
    folder of their own with a leading '/')."""

    def make(w: Where) -> list[str]:
        w.write({"streams/s.yaml": text})
        w.write({(k[1:] if k.startswith("/") else f"streams/{k}"): v for k, v in (files or {}).items()})
        return ["run", "--methods", "naive", *TRAIN, "--stream", "streams/s.yaml", "--out", "out", *args]

    return make


def files_task(
    options: str,
    files: Mapping[str, str | bytes] | None = None,
    *args: str,
    classes: str = "classes: [a, b], ",
) -> Make:
    """A one-task user stream: `{name: t1, source: files, <classes><options>}`."""
    return stream_file(f"{STREAM_HEAD}tasks:\n  - {{name: t1, {classes}{options}}}\n", files, *args)


def symlinked_secret(w: Where) -> list[str]:
    """streams/link.csv -> ../secret.csv (outside the stream's folder)."""
    w.write({"secret.csv": "s3cr3t-header\nvalue\n"})
    (w.tmp / "streams").mkdir()
    (w.tmp / "streams" / "link.csv").symlink_to(w.tmp / "secret.csv")
    return files_task("train: link.csv")(w)


def plugin_run(methods: str, source: str, *args: str) -> Make:
    """A run of `methods` with the plugin file `plug.py` holding `source` (after the usual imports)."""
    head = "from dataclasses import dataclass\n\nfrom clbench.methods import Hooks, MethodConfig, option\n\n"
    return run("--plugin", "plug.py", *args, files={"plug.py": head + source}, methods=methods)


def from_prebuilt(
    name: str,
    argv: Sequence[str],
    damage: Callable[[Path], None] | None = None,
    files: Mapping[str, str | bytes] | None = None,
) -> Make:
    """Copy a prebuilt run into the case's folder, damage it, then run `argv`."""

    def make(w: Where) -> list[str]:
        w.copy(name)
        w.write(files or {})
        if damage is not None:
            damage(w.tmp)
        return list(argv)

    return make


def finished(
    argv: Sequence[str],
    damage: Callable[[Path], None] | None = None,
    files: Mapping[str, str | bytes] | None = None,
) -> Make:
    return from_prebuilt("finished", argv, damage, files)


def interrupted(argv: Sequence[str], damage: Callable[[Path], None] | None = None) -> Make:
    return from_prebuilt("interrupted", argv, damage)


RESUME_FIN = ["run", "--out", "fin", "--resume", "--quiet"]
RESUME_INT = ["run", "--out", "run", "--resume", "--quiet", "--plugin", FAULTS]


def edit(rel: str, fn: Callable[[str], str]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        path = root / rel
        path.write_text(fn(path.read_text(encoding="utf-8")), encoding="utf-8")

    return damage


def set_yaml_key(rel: str, key: str, value: Any) -> Callable[[Path], None]:
    """Set a top-level key of a YAML file, whatever the layout the file was written in."""

    def damage(root: Path) -> None:
        import yaml

        path = root / rel
        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), key: value}, sort_keys=False))

    return damage


def replace_bytes(rel: str, data: bytes) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        (root / rel).write_bytes(data)

    return damage


def with_bytes(rel: str, fn: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        (root / rel).write_bytes(fn((root / rel).read_bytes()))

    return damage


def remove(rel: str) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        path = root / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return damage


def results_is_a_folder(root: Path) -> None:
    (root / "fin/results.jsonl").unlink()
    (root / "fin/results.jsonl").mkdir()


def edit_marker(**changes: Any) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        path = root / "run/checkpoints/interrupt/seed0/checkpoint.json"
        marker = json.loads(path.read_text())
        marker.update(changes)
        path.write_text(json.dumps(marker, indent=1))

    return damage


def flip_byte(rel: str) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        data = bytearray((root / rel).read_bytes())
        data[-5] ^= 0xFF
        (root / rel).write_bytes(bytes(data))

    return damage


def tokenised(root: Path) -> Path:
    files = list((root / "cache" / "tokenized").glob("*.safetensors"))
    assert len(files) == 1, files
    return files[0]


def alter_cached_labels(root: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = tokenised(root)
    tensors = load_file(str(path))
    for key in tensors:
        if key.endswith(".labels"):
            tensors[key] = tensors[key].flip(0).contiguous()  # same labels, other examples
    save_file(tensors, str(path))


def cache_entry_is_a_folder(root: Path) -> None:
    path = tokenised(root)
    path.unlink()
    path.mkdir()


def tokenized_is_a_file(root: Path) -> None:
    shutil.rmtree(root / "cache" / "tokenized")
    (root / "cache" / "tokenized").write_text("not a folder")


BOMB_LINES = "  - &a [lol, lol, lol, lol, lol]\n" + "".join(
    f"  - &{c} [*{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdef", "bcdefg")
)  # 5**7 leaves, 7 lines
EVIL = 'import pathlib\n\npathlib.Path("PWNED").write_text("plugin code ran")\n'
STREAM_OK_TASK = "tasks:\n  - {name: x, source: synthetic, classes: [a, b]}\n"


# ------------------------------------------------------------------------------ checks other than refusal


def same_as_finished(w: Where, result: Result, out: str = "out") -> None:
    assert_no_traceback(result)
    assert result.exit_code == 0, result.output[-600:]
    reference = comparable(read_results(w.prebuilt.get("finished") / "fin"))
    assert comparable(read_results(w.tmp / out)) == reference, (
        "results differ from the same run on a clean cache"
    )


def recovers() -> Check:
    """A damaged cache is rebuilt: the run succeeds with the results of a clean cache."""

    def check(w: Where, result: Result, before: Mapping[str, str]) -> None:
        same_as_finished(w, result)

    return check


def recovers_or_refuses(*needles: str | re.Pattern[str]) -> Check:
    """Either the same results as a clean run (the damage was detected and repaired), or a clean refusal."""

    def check(w: Where, result: Result, before: Mapping[str, str]) -> None:
        assert_no_traceback(result)
        if result.exit_code == 2:
            assert_message(message_line(result.stderr), needles)
            assert_kept(before, snapshot(w.tmp))
        else:
            same_as_finished(w, result)

    return check


def runs_or_refuses(*needles: str | re.Pattern[str]) -> Check:
    """Valid if unusual input: either the run succeeds, or a clean refusal naming the input."""

    def check(w: Where, result: Result, before: Mapping[str, str]) -> None:
        assert_no_traceback(result)
        if result.exit_code == 2:
            assert_message(message_line(result.stderr), needles)
            assert_kept(before, snapshot(w.tmp))
        else:
            assert result.exit_code == 0, result.output[-600:]

    return check


def units_fail_alone(failed: Mapping[str, Sequence[str]], done: Sequence[str] = ()) -> Check:
    """Each unit in `failed` fails alone (its `unit` record is failed, its error holds the words), every unit
    in `done` finishes, no traceback, and the exit code says that some units failed (neither 0 nor 2)."""

    def check(w: Where, result: Result, before: Mapping[str, str]) -> None:
        assert_no_traceback(result)
        status = {r["unit"]: r for r in read_results(w.tmp / "out") if r["type"] == "unit"}
        for unit in done:
            assert status.get(unit, {}).get("value") == "done", f"{unit} did not finish: {status.get(unit)}"
        for unit, words in failed.items():
            assert status.get(unit, {}).get("value") == "failed", f"{unit} has no failed record"
            for word in words:
                assert word in status[unit].get("error", ""), f"{word!r} not in {status[unit].get('error')!r}"
        assert result.exit_code not in (0, 2), f"exit code {result.exit_code} although units failed"

    return check


def distinct_checkpoints(methods: Sequence[str]) -> Check:
    def check(w: Where, result: Result, before: Mapping[str, str]) -> None:
        assert_no_traceback(result)
        assert result.exit_code == 0, result.output[-600:]
        markers = sorted((w.tmp / "out" / "checkpoints").glob("*/seed0/checkpoint.json"))
        owners = sorted(json.loads(m.read_text())["method"] for m in markers)
        assert owners == sorted(methods), (
            f"checkpoint folders {[str(m.parent) for m in markers]} hold {owners}"
        )

    return check


def keeps_every_record() -> Check:
    """--resume may append to results.jsonl and may add a missing final newline, but never drops a record."""

    def check(w: Where, result: Result, before: Mapping[str, str]) -> None:
        assert_no_traceback(result)
        assert result.exit_code == 0, result.output[-600:]
        old = (w.prebuilt.get("finished") / "fin" / "results.jsonl").read_bytes().rstrip(b"\n")
        new = (w.tmp / "fin" / "results.jsonl").read_bytes()
        assert new.startswith(old), (
            f"--resume rewrote results.jsonl ({len(old)} bytes before, {len(new)} after)"
        )
        assert any(r["type"] == "unit" and r["value"] == "done" for r in read_results(w.tmp / "fin"))

    return check


def report_keeps_or_refuses() -> Check:
    """A torn last line: refuse (naming results.jsonl, changing nothing) or report what the records hold
    without destroying the report and plots of the finished unit."""

    def check(w: Where, result: Result, before: Mapping[str, str]) -> None:
        assert_no_traceback(result)
        if result.exit_code == 2:
            assert_message(message_line(result.stderr), ["results.jsonl"])
            assert_kept(before, snapshot(w.tmp))
            return
        assert result.exit_code == 0, result.output[-600:]
        plots_before = sorted(p for p in before if p.startswith("fin/plots/"))
        plots_after = sorted(p.relative_to(w.tmp).as_posix() for p in (w.tmp / "fin/plots").glob("*"))
        assert plots_after == plots_before, f"plots lost: {sorted(set(plots_before) - set(plots_after))}"
        assert "No unit has finished yet" not in (w.tmp / "fin/report.md").read_text()

    return check


def strict_json_results(run_dir: str) -> Check:
    def check(w: Where, result: Result, before: Mapping[str, str]) -> None:
        assert_no_traceback(result)
        assert result.exit_code == 0, result.output[-600:]
        lines = (w.tmp / run_dir / "results.jsonl").read_text().splitlines()
        bad = []
        for number, line in enumerate(lines, 1):
            try:
                strict_json(line)
            except ValueError as exc:
                bad.append(f"line {number}: {exc}")
        assert not bad, f"{len(bad)} of {len(lines)} lines are not strict JSON, e.g. {bad[0]}"

    return check


# --------------------------------------------------------------------- cases that need real processes


def inotify_opened(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Block until some process opens `path` (Linux inotify IN_OPEN), `proc` ends or the time is up."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    try:
        assert libc.inotify_add_watch(fd, os.fsencode(path), 0x20) >= 0, os.strerror(ctypes.get_errno())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                return True
        return False
    finally:
        os.close(fd)


def two_runs_into_one_out(tmp: Path) -> None:
    """B starts, passes its checks of --out and starts preparing data (a user stream: we stop it as it opens
    the CSV); A then runs into the same empty --out and finishes; B goes on. B must be refused (exit 2, one
    line) and leave A's run byte-identical: today B takes the free lock, rewrites config.yaml and env.json and
    appends its records to A's results."""
    data = tmp / "streams"
    data.mkdir()
    (data / "big.csv").write_text(
        "text,label\n" + "".join(f"row {i} of the slow stream,{'ab'[i % 2]}\n" for i in range(20000))
    )
    (data / "s.yaml").write_text(f"{STREAM_HEAD}tasks:\n  - {{name: t1, classes: [a, b], train: big.csv}}\n")
    env = subprocess_env(tmp / "cache")
    cli = [sys.executable, "-m", "clbench.cli", "run", "--methods", "naive", *TRAIN, "--out", "shared"]
    errors = tmp / "b.err"
    with errors.open("wb") as err:
        b = subprocess.Popen(
            [*cli, "--stream", "streams/s.yaml"], cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=err
        )
    try:
        assert inotify_opened(data / "big.csv", b, timeout=240), (
            f"B never read its data: {errors.read_text()}"
        )
        b.send_signal(signal.SIGSTOP)
        a = subprocess.run(
            [*cli, "--stream", "synthetic"], check=False, cwd=tmp, env=env, capture_output=True, timeout=300
        )
        assert a.returncode == 0, a.stderr.decode()[-600:]
        first = snapshot(tmp / "shared")
        b.send_signal(signal.SIGCONT)
        b.wait(timeout=300)
    finally:
        if b.poll() is None:
            b.send_signal(signal.SIGCONT)
            b.kill()
            b.wait()
    stderr = errors.read_text()
    assert "Traceback" not in stderr
    assert b.returncode == 2, f"the second run into one --out exited {b.returncode}"
    assert_message(message_line(stderr), ["shared"])
    assert_kept(first, snapshot(tmp / "shared"))


def dead_ray_address(tmp: Path) -> None:
    """--ray-address to a port where nothing listens: refused with one line within a short time."""
    with socket.socket() as s:  # a free port: bound, never listened on, then closed
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clbench.cli",
            "run",
            "--methods",
            "naive",
            *SYN,
            "--out",
            "out",
            "--executor",
            "ray",
            "--ray-address",
            address,
        ],
        cwd=tmp,
        env=subprocess_env(tmp / "cache"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"`--executor ray --ray-address {address}` (nothing listening) still running after 60 s")
    text = stderr.decode()
    assert "Traceback" not in text and proc.returncode == 2, text[-600:]
    assert_message(message_line(text), [address])
    assert not (tmp / "out").exists()


# ------------------------------------------------------------------------------------------------ the table


def x(cls: str, what: str) -> str:
    return f"#16 [{cls}]: {what}"


NEW = "(new) "
NO_LINE = re.compile(r"line \d+")
PASSWD_FIRST = "root:"

CASES: list[Case] = [
    # ---- command-line flags of `clbench run`
    Case("flag-method-typo", run("--methods", "naiv"), ("'naiv'", "did you mean 'naive'")),
    Case("flag-methods-only-commas", run("--methods", ",,"), ("no methods given", "--methods")),
    Case("flag-method-twice", run("--methods", "naive,naive"), ("naive", "twice", "once")),
    Case("flag-variant-empty-label", run("--methods", "naive@"), ("'naive@'", "letters, digits")),
    Case("flag-variant-bad-label", run("--methods", "naive@a b"), ("'naive@a b'", "letters, digits")),
    Case("flag-variant-of-unknown-method", run("--methods", "naiv@x"), ("'naiv'", "did you mean 'naive'")),
    Case("flag-stream-typo", run("--stream", "synthetc"), ("'synthetc'", "did you mean 'synthetic'")),
    Case("flag-stream-empty", run("--stream", ""), ("unknown stream ''", "list streams")),
    Case("flag-stream-missing-file", run("--stream", "nope/s.yaml"), ("nope/s.yaml", "does not exist")),
    Case(
        "flag-stream-is-a-folder",
        run("--stream", "adir.yaml", files={"adir.yaml/x": "x"}),
        ("adir.yaml", "YAML path"),
    ),
    Case("flag-model-typo", run("--model", "tinyy"), ("'tinyy'", "did you mean 'tiny'")),
    Case(
        "flag-model-missing-folder", run("--model", "./no_model"), ("'./no_model'", "local model directory")
    ),
    Case(
        "flag-model-empty-folder",
        run("--model", "emptymodel", files={"emptymodel/.keep": ""}),
        ("emptymodel",),
    ),
    Case(
        "flag-model-folder-bad-config",
        run("--model", "m", files={"m/config.json": "{not json"}),
        ("'m'", "config"),
    ),
    Case(
        "flag-model-folder-without-weights",
        run("--model", "m", files={"m/config.json": '{"model_type": "bert"}'}),
        ("'m'", "model.safetensors"),
    ),
    Case("flag-seed-negative", run("--seeds", "-1"), ("seeds [-1]", "non-negative")),
    Case("flag-seed-repeated", run("--seeds", "1,1"), ("[1, 1]", "once")),
    Case("flag-seed-word", run("--seeds", "a,b"), ("seeds", "'a'", "integer")),
    Case("flag-seed-fraction", run("--seeds", "1.5"), ("seeds", "1.5", "integer")),
    Case("flag-seeds-empty", run("--seeds", ""), ("no seeds given", "--seeds")),
    Case(
        "flag-seed-2pow63",
        run("--seeds", str(2**63)),
        (str(2**63),),
    ),
    Case(
        "flag-seed-2pow64-minus-1",
        run("--seeds", str(2**64 - 1)),
        (str(2**64 - 1),),
    ),
    Case(
        "flag-seed-2pow64",
        run("--seeds", str(2**64)),
        (str(2**64),),
    ),
    Case("flag-epochs-zero", run("--epochs", "0"), ("epochs=0", "positive")),
    Case("flag-epochs-negative", run("--epochs", "-3"), ("epochs=-3", "positive")),
    Case("flag-epochs-word", run("--epochs", "three"), ("--epochs", "'three'")),
    Case("flag-max-steps-zero", run("--max-steps", "0"), ("max_steps=0", "positive")),
    Case("flag-batch-size-zero", run("--batch-size", "0"), ("batch_size=0", "positive")),
    Case("flag-lr-zero", run("--lr", "0"), ("lr=0.0", "(0, 1)")),
    Case("flag-lr-one", run("--lr", "1"), ("lr=1.0", "(0, 1)")),
    Case("flag-lr-negative", run("--lr", "-1e-3"), ("lr=-0.001", "(0, 1)")),
    Case("flag-lr-nan", run("--lr", "nan"), ("lr=nan", "(0, 1)")),
    Case("flag-lr-inf", run("--lr", "inf"), ("lr=inf", "(0, 1)")),
    Case("flag-lr-word", run("--lr", "fast"), ("--lr", "'fast'")),
    Case("flag-train-size-zero", run("--train-size", "0"), ("train_size=0", "positive")),
    Case("flag-test-size-negative", run("--test-size", "-5"), ("test_size=-5", "positive")),
    Case("flag-max-length-too-short", run("--max-length", "4"), ("max_length=4", "at least 8")),
    Case(
        "flag-max-length-beyond-positions",
        run("--max-length", "1000"),
        ("max_length=1000", "512"),
    ),
    Case("flag-buffer-size-negative", run("--buffer-size", "-1"), ("buffer_size=-1", "non-negative")),
    Case("flag-eval-every-negative", run("--eval-every", "-2"), ("eval_every=-2", "0 (off)")),
    Case("flag-head-choice", run("--head", "sideways"), ("--head", "'sideways'")),
    Case("flag-executor-choice", run("--executor", "dask"), ("--executor", "'dask'")),
    Case("flag-device-tpu", run("--device", "tpu"), ("device='tpu'", "cpu")),
    Case("flag-device-cuda-word-index", run("--device", "cuda:x"), ("device='cuda:x'",)),
    Case(
        "flag-device-cuda-missing",
        run("--device", "cuda"),
        ("device='cuda'", "--device cpu"),
        skip="CUDA is available here" if HAS_CUDA else None,
    ),
    Case("flag-data-dir-missing", run("--data-dir", "nodata"), ("'nodata'", "not a directory")),
    Case(
        "flag-data-dir-is-a-file",
        run("--data-dir", "f.txt", files={"f.txt": "x"}),
        ("'f.txt'", "not a directory"),
    ),
    Case(
        "flag-out-is-a-file", run("--out", "a_file", files={"a_file": "keep me"}), ("a_file", "another --out")
    ),
    Case(
        "flag-out-under-a-file",
        run("--out", "a_file/sub", files={"a_file": "keep me"}),
        ("a_file", "under a file"),
    ),
    Case("flag-out-two-levels-missing", run("--out", "a/b/c"), ("does not exist", "create it first")),
    Case(
        "flag-out-cannot-be-created",
        run("--out", "/proc/clbench-battery-run"),
        ("/proc/clbench-battery-run", "another --out"),
    ),
    Case("flag-config-missing", run("--config", "none.yaml"), ("none.yaml", "does not exist")),
    Case(
        "flag-config-is-a-folder", run("--config", "cfgdir", files={"cfgdir/x": ""}), ("--config", "cfgdir")
    ),
    Case("flag-unknown-option", run("--epoch", "2"), ("--epoch", "--epochs")),
    Case("flag-resume-without-out", command(["run", "--resume", "--quiet"]), ("--resume needs --out",)),
    Case(
        "flag-resume-empty-folder",
        command(["run", "--resume", "--out", "empty", "--quiet"], {"empty/.keep": ""}),
        ("nothing to resume", "empty"),
    ),
    Case("flag-plugin-missing", run("--plugin", "nope.py"), ("nope.py", "does not exist")),
    Case(
        "flag-ray-dead-address",
        lambda w: [],
        procedure=dead_ray_address,
        slow=True,
        skip=None if importlib.util.find_spec("ray") else "ray is not installed",
    ),
    # ---- --set KEY=VALUE
    Case("set-no-equals", run("--set", "epochs"), ("'epochs'", "KEY=VALUE")),
    Case("set-empty-key", run("--set", "=5"), ("'=5'", "KEY=VALUE")),
    Case("set-int-word", run("--set", "epochs=two"), ("epochs", "'two'", "integer")),
    Case("set-bool-word", run("--set", "keep_checkpoints=maybe"), ("keep_checkpoints", "true or false")),
    Case("set-float-word", run("--set", "lr=fast"), ("lr", "'fast'", "number")),
    Case("set-list-for-int", run("--set", "epochs=[1, 2]"), ("epochs", "[1, 2]", "integer")),
    Case("set-eval-batch-zero", run("--set", "eval_batch_size=0"), ("eval_batch_size=0", "positive")),
    Case("set-warmup-too-high", run("--set", "warmup_ratio=1.5"), ("warmup_ratio=1.5", "[0, 1)")),
    Case("set-warmup-nan", run("--set", "warmup_ratio=.nan"), ("warmup_ratio=nan", "[0, 1)")),
    Case("set-precision", run("--set", "precision=fp8"), ("precision='fp8'", "fp32")),
    Case("set-head", run("--set", "head=sideways"), ("head='sideways'", "per-task")),
    Case("set-weight-decay-negative", run("--set", "weight_decay=-1"), ("weight_decay", "non-negative")),
    Case(
        "set-weight-decay-nan",
        run("--set", "weight_decay=.nan"),
        ("weight_decay", "nan"),
    ),
    Case(
        "set-weight-decay-inf",
        run("--set", "weight_decay=.inf"),
        ("weight_decay", "inf"),
    ),
    Case(
        "set-grad-clip-nan",
        run("--set", "grad_clip=.nan"),
        ("grad_clip", "nan"),
    ),
    Case(
        "set-grad-clip-inf",
        run("--set", "grad_clip=.inf"),
        ("grad_clip", "inf"),
    ),
    Case("set-lr-inf", run("--set", "lr=.inf"), ("lr=inf", "(0, 1)")),
    Case(
        "set-method-options-key",
        run("--set", "method_options=x"),
        ("method_options", "one mapping per method"),
    ),
    Case(
        "set-method-section-scalar",
        run("--set", "ewc=5", methods="ewc"),
        ("'ewc'", "ewc."),
        absent=("did you mean 'ewc'",),
    ),
    Case(
        "set-option-typo",
        run("--set", "ewc.penalty_wieght=5", methods="ewc"),
        ("ewc.penalty_wieght", "did you mean 'penalty_weight'"),
    ),
    Case(
        "set-option-word",
        run("--set", "ewc.penalty_weight=heavy", methods="ewc"),
        ("ewc.penalty_weight", "'heavy'", "number"),
    ),
    Case(
        "set-option-negative",
        run("--set", "ewc.penalty_weight=-1", methods="ewc"),
        ("penalty_weight=-1", ">= 0"),
    ),
    Case(
        "set-option-inf",
        run("--set", "ewc.penalty_weight=.inf", methods="ewc"),
        ("penalty_weight", "inf"),
    ),
    Case(
        "set-option-nan",
        run("--set", "ewc.penalty_weight=.nan", methods="ewc"),
        ("penalty_weight", "nan"),
    ),
    Case("set-option-of-method-without-options", run("--set", "naive.r=8"), ("naive.r", "has no options")),
    Case(
        "set-option-of-method-not-run", run("--set", "lora.rank=8"), ("'lora'", "not in --methods", "add it")
    ),
    Case("set-option-of-unknown-method", run("--set", "nosuch.x=1"), ("'nosuch'",)),
    Case("set-seeds-list-negative", run("--set", "seeds=[1, -2]"), ("seeds [1, -2]", "non-negative")),
    Case(
        "set-errors-all-at-once",
        run("--set", "epoch=2", "--set", "batch_size=0"),
        ("'epoch'", "batch_size=0"),
    ),
    # ---- --config YAML files
    Case("config-malformed-flow", config("epochs: [1, 2\n"), ("cfg.yaml", "not valid YAML")),
    Case(
        "config-error-line-number",
        config("methods: [naive]\nepochs: 2\n lr: 0.1\n"),
        ("cfg.yaml", NO_LINE),
    ),
    Case("config-top-level-list", config("- 1\n- 2\n"), ("cfg.yaml", "must be a mapping")),
    Case("config-top-level-scalar", config("42\n"), ("cfg.yaml", "must be a mapping")),
    Case(
        "config-not-utf8", config("epochs: 2 # caf\xe9\n".encode("latin-1")), ("cfg.yaml", "not valid YAML")
    ),
    Case(
        "config-python-tag",
        config("epochs: !!python/object/apply:os.system ['touch PWNED']\n"),
        ("cfg.yaml", "not valid YAML"),
    ),
    Case("config-unknown-key", config("epoch: 2\n"), ("'epoch'", "did you mean 'epochs'")),
    Case("config-epochs-word", config("epochs: three\n"), ("epochs", "'three'", "integer")),
    Case("config-epochs-fraction", config("epochs: 2.5\n"), ("epochs", "2.5", "integer")),
    Case("config-epochs-bool", config("epochs: true\n"), ("epochs", "True", "integer")),
    Case("config-methods-mapping", config("methods: {naive: 1}\n"), ("methods", "{'naive': 1}")),
    Case("config-seeds-negative", config("seeds: [0, -1]\n"), ("seeds [0, -1]", "non-negative")),
    Case("config-empty-methods", config("methods: []\n", methods=None), ("no methods given",)),
    Case("config-lr-nan", config("lr: .nan\n"), ("lr=nan", "(0, 1)")),
    Case(
        "config-weight-decay-nan",
        config("weight_decay: .nan\n"),
        ("weight_decay", "nan"),
    ),
    Case(
        "config-option-inf",
        config("ewc: {penalty_weight: .inf}\n", "--methods", "ewc"),
        ("penalty_weight", "inf"),
    ),
    Case(
        "config-method-section-scalar",
        config("ewc: 5\n", "--methods", "ewc"),
        ("'ewc'", "ewc."),
        absent=("did you mean 'ewc'",),
    ),
    Case(
        "config-errors-all-at-once",
        config("epoch: 2\nbatch_size: 0\n"),
        ("'epoch'", "batch_size=0"),
    ),
    Case(
        "config-out-is-a-file",
        config("out: a_file\n", files={"a_file": "keep"}, out=None),
        ("a_file", "another --out"),
    ),
    Case(
        "config-stream-missing",
        config("stream: gone.yaml\n", "--stream", "gone.yaml"),
        ("gone.yaml", "does not exist"),
    ),
    Case("config-resume-key", config("resume: true\n"), ("'resume'",)),
    Case(
        "config-alias-bomb",
        config("epochs:\n" + BOMB_LINES),
        ("epochs",),
        max_chars=300,
    ),
    Case(
        "config-plugins-entry",
        config("plugins: [evil.py]\nepochs: 0\n", files={"evil.py": EVIL}),
        ("evil.py",),
    ),
    # ---- stream YAML files
    Case("stream-malformed", stream_file("name: s\nversion: 1\ntasks: [\n"), ("s.yaml", "not valid YAML")),
    Case(
        "stream-error-line-number",
        stream_file("name: s\nversion: 1\n  tasks: []\n"),
        ("s.yaml", NO_LINE),
    ),
    Case("stream-top-level-list", stream_file("- a\n"), ("s.yaml", "must be a mapping")),
    Case("stream-empty-file", stream_file(""), ("s.yaml", "must be a mapping")),
    Case(
        "stream-not-utf8",
        stream_file("name: caf\xe9\nversion: 1\n".encode("latin-1")),
        ("s.yaml", "not valid YAML"),
    ),
    Case(
        "stream-python-tag",
        stream_file("name: !!python/object/apply:os.system ['touch PWNED']\n"),
        ("s.yaml", "not valid YAML"),
    ),
    Case("stream-missing-keys", stream_file("name: s\n"), ("missing key 'version'", "missing key 'tasks'")),
    Case(
        "stream-unknown-key",
        stream_file("name: s\nversion: 1\ntaks: []\n"),
        ("'taks'", "did you mean 'tasks'"),
    ),
    Case(
        "stream-no-tasks",
        stream_file("name: s\nversion: 1\ntasks: []\n"),
        ("'tasks' must be a non-empty list",),
    ),
    Case(
        "stream-tasks-mapping",
        stream_file("name: s\nversion: 1\ntasks: {a: 1}\n"),
        ("'tasks' must be a non-empty list",),
    ),
    Case("stream-task-not-mapping", stream_file("name: s\nversion: 1\ntasks: [x]\n"), ("task #1", "mapping")),
    Case(
        "stream-task-without-source",
        stream_file("name: s\nversion: 1\ntasks:\n  - {name: x, classes: [a, b]}\n"),
        ("task 'x'", "missing 'source'"),
    ),
    Case(
        "stream-unknown-source",
        stream_file("name: s\nversion: 1\ntasks:\n  - {name: x, source: file}\n"),
        ("'file'", "did you mean 'files'"),
    ),
    Case(
        "stream-train-size-zero",
        stream_file(
            "name: s\nversion: 1\ntasks:\n  - {name: x, source: synthetic, classes: [a, b], train_size: 0}\n"
        ),
        ("'train_size'", "positive integer"),
    ),
    Case(
        "stream-max-length-word",
        stream_file(
            "name: s\nversion: 1\ntasks:\n"
            "  - {name: x, source: synthetic, classes: [a, b], max_length: long}\n"
        ),
        ("'max_length'", "'long'"),
    ),
    Case(
        "stream-one-class",
        stream_file("name: s\nversion: 1\ntasks:\n  - {name: x, source: synthetic, classes: [a]}\n"),
        ("'classes'", "at least two"),
    ),
    Case(
        "stream-head",
        stream_file(f"name: s\nversion: 1\nhead: sideways\n{STREAM_OK_TASK}"),
        ("'sideways'", "'shared'"),
    ),
    Case(
        "stream-label-space",
        stream_file(f"name: s\nversion: 1\nlabel_space: mixed\n{STREAM_OK_TASK}"),
        ("'mixed'", "by-name"),
    ),
    Case(
        "stream-truncation",
        stream_file(
            "name: s\nversion: 1\ntasks:\n"
            "  - {name: x, source: synthetic, classes: [a, b], truncation: middle}\n"
        ),
        ("'middle'", "head_tail"),
    ),
    Case(
        "stream-duplicate-task",
        stream_file(
            "name: s\nversion: 1\ntasks:\n  - {name: x, source: synthetic, classes: [a, b]}\n"
            "  - {name: x, source: synthetic, classes: [c, d]}\n"
        ),
        ("'x'", "twice"),
    ),
    Case(
        "stream-version-word", stream_file(f"name: s\nversion: one\n{STREAM_OK_TASK}"), ("'version'", "'one'")
    ),
    Case(
        "stream-seed-fraction",
        stream_file(f"name: s\nversion: 1\nseed: 1.5\n{STREAM_OK_TASK}"),
        ("'seed'", "1.5"),
    ),
    Case(
        "stream-defaults-list",
        stream_file(f"name: s\nversion: 1\ndefaults: [1]\n{STREAM_OK_TASK}"),
        ("'defaults' must be a mapping",),
    ),
    Case(
        "stream-synthetic-unknown-option",
        stream_file(
            "name: s\nversion: 1\ntasks:\n  - {name: x, source: synthetic, classes: [a, b], colour: red}\n"
        ),
        ("'colour'", "keywords_per_class"),
    ),
    Case(
        "stream-synthetic-without-classes",
        stream_file("name: s\nversion: 1\ntasks:\n  - {name: x, source: synthetic}\n"),
        ("task 'x'", "needs 'classes'"),
    ),
    Case(
        "stream-and-flag-errors-together",
        stream_file(
            "name: s\nversion: 1\ntasks:\n  - {name: x, source: synthetic, classes: [a, b], train_size: 0}\n",
            None,
            "--epochs",
            "0",
        ),
        ("epochs=0", "'train_size'"),
    ),
    Case(
        "stream-alias-bomb",
        stream_file("name: s\nversion:\n" + BOMB_LINES + STREAM_OK_TASK),
        ("'version'",),
        max_chars=300,
    ),
    # ---- the `files` source: options and data files
    Case("files-without-train", files_task("source: files"), ("task 't1'", "needs 'train:")),
    Case(
        "files-unknown-option",
        files_task("train: d.csv, text_column: body", {"d.csv": GOOD_CSV}),
        ("'text_column'",),
    ),
    Case(
        "files-label-map-list",
        files_task("train: d.csv, label_map: [a, b]", {"d.csv": GOOD_CSV}),
        ("label_map", "mapping"),
    ),
    Case(
        "files-no-classes-no-map",
        files_task("train: d.csv", {"d.csv": GOOD_CSV}, classes=""),
        ("task 't1'", "'classes'"),
    ),
    Case(
        "files-map-to-one-class",
        files_task("train: d.csv, label_map: {a: x, b: x}", {"d.csv": GOOD_CSV}, classes=""),
        ("label_map", "'x'", "two classes"),
    ),
    Case("files-missing-file", files_task("train: gone.csv"), ("'gone.csv'", "not found", "fix the path")),
    Case("files-path-is-a-folder", files_task("train: sub", {"sub/x.csv": GOOD_CSV}), ("'sub'", "not found")),
    Case(
        "files-unknown-suffix", files_task("train: d.txt", {"d.txt": GOOD_CSV}), ("d.txt", ".csv", "'format'")
    ),
    Case(
        "files-unknown-format",
        files_task("train: d.csv, format: xml", {"d.csv": GOOD_CSV}),
        ("d.csv", "'format'"),
    ),
    Case(
        "files-csv-missing-text-column",
        files_task("train: d.csv", {"d.csv": "body,label\nx y,a\n"}),
        ("text column 'text'", "d.csv", "body"),
    ),
    Case(
        "files-csv-missing-label-column",
        files_task("train: d.csv, label: target", {"d.csv": GOOD_CSV}),
        ("label column 'target'", "d.csv"),
    ),
    Case(
        "files-csv-missing-group-column",
        files_task("train: d.csv, group: thread", {"d.csv": GOOD_CSV}),
        ("group column 'thread'", "d.csv"),
    ),
    Case(
        "files-csv-unknown-label",
        files_task("train: d.csv", {"d.csv": GOOD_CSV + "odd row,zebra\n"}),
        ("'zebra'", "d.csv row 25", "label_map"),
    ),
    Case(
        "files-csv-label-out-of-range",
        files_task("train: d.csv", {"d.csv": "text,label\nx y,7\n"}),
        ("'7'", "d.csv row 1"),
    ),
    Case(
        "files-csv-label-negative",
        files_task("train: d.csv", {"d.csv": "text,label\nx y,-1\n"}),
        ("'-1'", "d.csv row 1"),
    ),
    Case(
        "files-csv-ragged-row",
        files_task("train: d.csv", {"d.csv": GOOD_CSV + "only one field\n"}),
        ("d.csv row 25",),
    ),
    Case(
        "files-csv-semicolons",
        files_task("train: d.csv", {"d.csv": "text;label\nx;a\n"}),
        ("text column 'text'", "text;label"),
    ),
    Case(
        "files-csv-not-utf8",
        files_task("train: d.csv", {"d.csv": "text,label\ncaf\xe9,a\n".encode("latin-1")}),
        ("d.csv", "not UTF-8", "0xe9"),
    ),
    Case(
        "files-label-map-missing-value",
        files_task("train: d.csv, label_map: {a: a}", {"d.csv": GOOD_CSV}),
        ("'b'", "missing from label_map"),
    ),
    Case(
        "files-test-file-missing",
        files_task("train: d.csv, test: gone.csv", {"d.csv": GOOD_CSV}),
        ("'gone.csv'", "not found"),
    ),
    Case(
        "files-csv-empty",
        files_task("train: e.csv", {"e.csv": ""}),
        ("e.csv",),
    ),
    Case(
        "files-csv-header-only",
        files_task("train: e.csv", {"e.csv": "text,label\n"}),
        ("e.csv",),
    ),
    Case(
        "files-csv-two-rows",
        files_task("train: e.csv", {"e.csv": "text,label\nx y,a\nz w,b\n"}),
        ("e.csv",),
    ),
    Case(
        "files-csv-all-texts-empty",
        files_task("train: e.csv", {"e.csv": "text,label\n,a\n ,b\n"}),
        ("e.csv",),
    ),
    Case(
        "files-jsonl-empty",
        files_task("train: e.jsonl", {"e.jsonl": ""}),
        ("e.jsonl",),
    ),
    Case(
        "files-jsonl-bad-line",
        files_task("train: d.jsonl", {"d.jsonl": '{"text": "x", "label": "a"}\n{oops\n'}),
        ("d.jsonl", "line 2", "not JSON"),
    ),
    Case(
        "files-jsonl-array-line",
        files_task("train: d.jsonl", {"d.jsonl": "[1, 2]\n"}),
        ("d.jsonl", "line 1", "not a JSON object"),
    ),
    Case(
        "files-jsonl-nan-label",
        files_task("train: d.jsonl", {"d.jsonl": '{"text": "x y", "label": NaN}\n'}),
        ("label nan", "d.jsonl row 1"),
    ),
    Case(
        "files-parquet-corrupt",
        files_task("train: d.parquet", {"d.parquet": b"PAR1 not really"}),
        ("d.parquet", "not a readable parquet file"),
    ),
    Case(
        "files-csv-huge-field",
        files_task("train: d.csv", {"d.csv": GOOD_CSV + '"' + "x" * 140_000 + '",a\n'}),
        check=runs_or_refuses("d.csv"),
    ),
    Case(
        "files-long-texts-beyond-positions",
        files_task(
            "train: d.csv",
            {"d.csv": "text,label\n" + "".join(f"{'the ' * 700}item {i},{'ab'[i % 2]}\n" for i in range(20))},
            "--max-length",
            "1000",
        ),
        ("max_length=1000", "512"),
    ),
    Case(
        "files-path-etc-passwd",
        files_task("train: /etc/passwd, format: csv"),
        ("/etc/passwd",),
        absent=(PASSWD_FIRST,),
        skip=None if Path("/etc/passwd").is_file() else "no /etc/passwd",
    ),
    Case(
        "files-path-dot-dot",
        files_task("train: ../secret.csv", {"/secret.csv": "s3cr3t-header\nvalue\n"}),
        ("../secret.csv",),
        absent=("s3cr3t",),
    ),
    Case(
        "files-path-symlink-outside",
        symlinked_secret,
        ("link.csv",),
        absent=("s3cr3t",),
    ),
    Case(
        "files-path-from-working-dir",
        files_task("train: secret.csv", {"/secret.csv": "s3cr3t-header\nvalue\n"}),
        ("secret.csv",),
        absent=("s3cr3t",),
    ),
    # ---- plugins
    Case("plugin-is-a-folder", run("--plugin", "pdir", files={"pdir/x.py": ""}), ("'pdir'", ".py")),
    Case(
        "plugin-not-python",
        run("--plugin", "p.txt", files={"p.txt": "print(1)\n"}),
        ("p.txt", "pass a .py file"),
    ),
    Case("plugin-syntax-error", plugin_run("naive", "def broken(:\n"), ("plug.py", "syntax error", "line")),
    Case(
        "plugin-import-error",
        plugin_run("naive", "import no_such_module_xyz\n"),
        ("plug.py", "no_such_module_xyz", "fix the file"),
    ),
    Case("plugin-defines-nothing", plugin_run("naive", "VALUE = 1\n"), ("plug.py", "defines no method")),
    Case(
        "plugin-shadows-builtin",
        plugin_run("naive", 'class N(Hooks):\n    name = "naive"\n'),
        ("'naive'", "defined twice", "rename"),
    ),
    Case(
        "plugin-name-twice",
        plugin_run("dup", 'class A(Hooks):\n    name = "dup"\n\n\nclass B(Hooks):\n    name = "dup"\n'),
        ("'dup'", "defined twice"),
    ),
    Case(
        "plugin-config-not-frozen",
        plugin_run(
            "loose",
            (
                "@dataclass\nclass C(MethodConfig):\n    w: float = option(1.0, 'w')\n\n\n"
                "class M(Hooks):\n    name = 'loose'\n    config_cls = C\n"
            ),
        ),
        ("plug.py", "non-frozen"),
    ),
    Case(
        "plugin-hook-not-callable",
        plugin_run("nohook", "class M(Hooks):\n    name = 'nohook'\n    loss = 5\n"),
        ("'loss'", "not callable"),
    ),
    Case(
        "plugin-config-check-raises",
        plugin_run(
            "picky",
            (
                "@dataclass(frozen=True)\nclass C(MethodConfig):\n    w: float = option(1.0, 'w')\n\n"
                "    def __post_init__(self):\n        raise ValueError('w must be sane')\n\n\n"
                "class M(Hooks):\n    name = 'picky'\n    config_cls = C\n"
            ),
        ),
        ("picky", "w must be sane"),
    ),
    Case(
        "plugin-option-word",
        plugin_run(
            "opt",
            (
                "@dataclass(frozen=True)\nclass C(MethodConfig):\n    k: int = option(1, 'k')\n\n\n"
                "class M(Hooks):\n    name = 'opt'\n    config_cls = C\n"
            ),
            "--set",
            "opt.k=many",
        ),
        ("opt.k", "'many'", "integer"),
    ),
    Case(
        "plugin-exits-on-import",
        plugin_run("naive", "raise SystemExit(0)\n"),
        ("plug.py",),
    ),
    Case(
        "plugin-raises-in-loss",
        plugin_run(
            "boom,naive",
            (
                "class M(Hooks):\n    name = 'boom'\n\n"
                "    def loss(self, model, batch, outputs, task_loss):\n"
                "        raise RuntimeError('boom')\n"
            ),
        ),
        check=units_fail_alone({"boom/seed0": ["boom", "loss"]}, done=["naive/seed0"]),
    ),
    Case(
        "plugin-raises-in-after-task",
        plugin_run(
            "boom,naive",
            (
                "class M(Hooks):\n    name = 'boom'\n\n    def after_task(self, task, model, data):\n"
                "        raise RuntimeError('boom')\n"
            ),
        ),
        check=units_fail_alone({"boom/seed0": ["boom", "after_task"]}, done=["naive/seed0"]),
    ),
    Case(
        "plugin-raises-in-setup",
        plugin_run(
            "boom,naive",
            (
                "class M(Hooks):\n    name = 'boom'\n\n"
                "    def setup(self, model, ctx):\n        raise RuntimeError('boom')\n"
            ),
        ),
        check=units_fail_alone({"boom/seed0": ["boom", "setup"]}, done=["naive/seed0"]),
    ),
    Case(
        "plugin-state-dict-not-serialisable",
        plugin_run(
            "boom,naive",
            (
                "class M(Hooks):\n    name = 'boom'\n\n"
                "    def state_dict(self):\n        return {'x': object()}\n"
            ),
        ),
        check=units_fail_alone({"boom/seed0": ["boom", "state_dict"]}, done=["naive/seed0"]),
    ),
    Case(
        "plugin-nan-loss-every-unit",
        run("--plugin", FAULTS, "--max-steps", "4", methods="nan-loss"),
        check=units_fail_alone({"nan-loss/seed0": ["loss became nan"]}),
    ),
    Case(
        "plugin-nan-loss-one-unit",
        run("--plugin", FAULTS, "--max-steps", "4", methods="nan-loss,naive"),
        check=units_fail_alone({"nan-loss/seed0": ["loss became nan"]}, done=["naive/seed0"]),
    ),
    Case(
        "plugin-variant-folder-collision",
        plugin_run("naive@a,naive_a", "class M(Hooks):\n    name = 'naive_a'\n", "--keep-checkpoints"),
        check=distinct_checkpoints(["naive@a", "naive_a"]),
    ),
    # ---- run directories: a finished run (fin/)
    Case(
        "rundir-existing-run-without-resume",
        finished(["run", "--methods", "naive", *SYN, "--out", "fin"]),
        ("'fin'", "already holds a run", "--resume"),
    ),
    Case(
        "rundir-locked-by-live-process",
        finished(
            RESUME_FIN, files={"fin/.lock": json.dumps({"pid": os.getpid(), "host": socket.gethostname()})}
        ),
        ("in use by process", ".lock"),
    ),
    Case(
        "rundir-lock-garbage", finished(RESUME_FIN, files={"fin/.lock": "garbage"}), ("fin/.lock", "delete")
    ),
    Case(
        "rundir-resume-without-config",
        finished(RESUME_FIN, remove("fin/config.yaml")),
        ("nothing to resume", "config.yaml"),
    ),
    Case(
        "rundir-config-malformed",
        finished(RESUME_FIN, replace_bytes("fin/config.yaml", b"epochs: [1\n")),
        ("config.yaml", "not valid YAML"),
    ),
    Case(
        "rundir-config-list",
        finished(RESUME_FIN, replace_bytes("fin/config.yaml", b"- 1\n")),
        ("config.yaml", "must be a mapping"),
    ),
    Case(
        "rundir-config-not-utf8",
        finished(RESUME_FIN, with_bytes("fin/config.yaml", lambda b: b + b"# \xe9\n")),
        ("config.yaml", "not valid YAML"),
    ),
    Case(
        "rundir-config-method-options-scalar",
        finished(
            RESUME_FIN,
            set_yaml_key("fin/config.yaml", "method_options", 5),
        ),
        ("method_options", "config.yaml"),
    ),
    Case(
        "rundir-config-unknown-key",
        finished(RESUME_FIN, edit("fin/config.yaml", lambda t: t + "bogus: 1\n")),
        ("'bogus'", "config.yaml"),
    ),
    Case(
        "rundir-config-plugins-entry",
        finished(
            RESUME_FIN,
            edit("fin/config.yaml", lambda t: t.replace("plugins: []", "plugins: [evil.py]")),
            files={"evil.py": EVIL},
        ),
        ("evil.py",),
    ),
    Case(
        "rundir-resume-other-stream",
        finished([*RESUME_FIN, "--stream", "reviews"]),
        ("different configuration", "stream", "'reviews'"),
    ),
    Case(
        "rundir-resume-other-sizes", finished([*RESUME_FIN, "--train-size", "64"]), ("train_size (8 -> 64)",)
    ),
    Case(
        "rundir-resume-other-methods",
        finished([*RESUME_FIN, "--methods", "ewc"]),
        ("methods", "different configuration"),
    ),
    Case(
        "rundir-resume-other-seeds",
        finished([*RESUME_FIN, "--seeds", "1"]),
        ("seeds", "different configuration"),
    ),
    Case(
        "rundir-resume-other-max-steps",
        finished([*RESUME_FIN, "--set", "max_steps=2"]),
        ("max_steps (1 -> 2)",),
    ),
    Case(
        "rundir-results-corrupt-middle-line",
        finished(RESUME_FIN, with_bytes("fin/results.jsonl", lambda b: b"{not json\n" + b)),
        ("results.jsonl", "line 1 is corrupted"),
    ),
    Case(
        "rundir-results-foreign-line",
        finished(RESUME_FIN, with_bytes("fin/results.jsonl", lambda b: b"[1, 2]\n" + b)),
        ("results.jsonl", "not a clbench record"),
    ),
    Case(
        "rundir-results-record-missing-fields",
        finished(
            RESUME_FIN,
            with_bytes("fin/results.jsonl", lambda b: b + b'{"type": "accuracy", "unit": "x", "row": 0}\n'),
        ),
        ("results.jsonl",),
    ),
    Case(
        "rundir-results-not-utf8",
        finished(RESUME_FIN, with_bytes("fin/results.jsonl", lambda b: b"\xff\xfe" + b)),
        ("results.jsonl",),
    ),
    Case(
        "rundir-results-is-a-folder",
        finished(RESUME_FIN, results_is_a_folder),
        ("results.jsonl",),
    ),
    Case(
        "rundir-results-no-final-newline",
        finished(RESUME_FIN, with_bytes("fin/results.jsonl", lambda b: b[:-1])),
        check=keeps_every_record(),
    ),
    Case(
        "rundir-results-strict-json",
        finished(["compare", "fin", "fin"]),
        check=strict_json_results("fin"),
    ),
    Case(
        "report-torn-last-line",
        finished(["report", "fin"], with_bytes("fin/results.jsonl", lambda b: b[:-20])),
        check=report_keeps_or_refuses(),
    ),
    Case(
        "report-config-malformed",
        finished(["report", "fin"], replace_bytes("fin/config.yaml", b"a: [1\n")),
        ("config.yaml",),
    ),
    Case(
        "report-config-list",
        finished(["report", "fin"], replace_bytes("fin/config.yaml", b"- 1\n")),
        ("config.yaml",),
    ),
    Case(
        "report-env-malformed",
        finished(["report", "fin"], replace_bytes("fin/env.json", b"{bad")),
        ("env.json",),
    ),
    Case(
        "report-env-list",
        finished(["report", "fin"], replace_bytes("fin/env.json", b"[1]")),
        ("env.json",),
    ),
    Case(
        "report-results-not-utf8",
        finished(["report", "fin"], with_bytes("fin/results.jsonl", lambda b: b"\xff" + b)),
        ("results.jsonl",),
    ),
    Case(
        "report-record-missing-fields",
        finished(
            ["report", "fin"],
            with_bytes("fin/results.jsonl", lambda b: b + b'{"type": "accuracy", "unit": "x", "row": 0}\n'),
        ),
        ("results.jsonl",),
    ),
    Case(
        "report-no-results",
        command(["report", "empty"], {"empty/.keep": ""}),
        ("'empty'", "no results.jsonl"),
    ),
    Case("report-missing-folder", command(["report", "nowhere"]), ("'nowhere'", "no results.jsonl")),
    Case(
        "compare-missing-folder", finished(["compare", "fin", "nowhere"]), ("'nowhere'", "no results.jsonl")
    ),
    # ---- run directories: an interrupted run with a checkpoint (run/ over the user stream in data/)
    Case(
        "rundir-checkpoint-marker-corrupt",
        interrupted(
            RESUME_INT, replace_bytes("run/checkpoints/interrupt/seed0/checkpoint.json", b'{"row": ')
        ),
        ("checkpoint", "corrupted", "delete"),
    ),
    Case(
        "rundir-checkpoint-model-altered",
        interrupted(RESUME_INT, flip_byte("run/checkpoints/interrupt/seed0/task1/model.safetensors")),
        ("model.safetensors", "sha256", "delete"),
    ),
    Case(
        "rundir-checkpoint-file-missing",
        interrupted(RESUME_INT, remove("run/checkpoints/interrupt/seed0/task1/rng.safetensors")),
        ("rng.safetensors", "missing"),
    ),
    Case(
        "rundir-checkpoint-marker-row-edited",
        interrupted(RESUME_INT, edit_marker(row=2)),
        ("checkpoint.json",),
    ),
    Case(
        "rundir-stream-data-changed",
        interrupted(
            RESUME_INT,
            edit(
                "data/t1.csv",
                lambda t: t.replace(",a\n", ",tmp\n").replace(",b\n", ",a\n").replace(",tmp\n", ",b\n"),
            ),
        ),
        ("'first'",),
    ),
    Case(
        "rundir-stream-file-changed",
        interrupted(
            RESUME_INT, edit("data/stream.yaml", lambda t: t.replace("train_size: 16", "train_size: 12"))
        ),
        ("stream.yaml",),
    ),
    Case(
        "rundir-resume-with-other-plugin-method",
        interrupted([*RESUME_INT, "--methods", "naive,counter"]),
        ("methods", "different configuration"),
    ),
    # ---- the tokenisation cache (CLBENCH_CACHE points at the case's copy of the finished run's cache)
    Case(
        "cache-labels-altered",
        finished(["run", "--methods", "naive", *SYN, "--out", "out"], alter_cached_labels),
        env={"CLBENCH_CACHE": "{tmp}/cache"},
        check=recovers_or_refuses("tokenized"),
    ),
    Case(
        "cache-truncated",
        finished(
            ["run", "--methods", "naive", *SYN, "--out", "out"],
            lambda root: tokenised(root).write_bytes(tokenised(root).read_bytes()[:100]),
        ),
        env={"CLBENCH_CACHE": "{tmp}/cache"},
        check=recovers(),
    ),
    Case(
        "cache-garbage",
        finished(
            ["run", "--methods", "naive", *SYN, "--out", "out"],
            lambda root: tokenised(root).write_bytes(b"\x00garbage" * 64),
        ),
        env={"CLBENCH_CACHE": "{tmp}/cache"},
        check=recovers(),
    ),
    Case(
        "cache-entry-is-a-folder",
        finished(["run", "--methods", "naive", *SYN, "--out", "out"], cache_entry_is_a_folder),
        env={"CLBENCH_CACHE": "{tmp}/cache"},
        check=recovers_or_refuses("tokenized"),
    ),
    Case(
        "cache-tokenized-is-a-file",
        finished(["run", "--methods", "naive", *SYN, "--out", "out"], tokenized_is_a_file),
        env={"CLBENCH_CACHE": "{tmp}/cache"},
        check=recovers_or_refuses("tokenized"),
    ),
    Case(
        "cache-env-is-a-file",
        run(files={"cachefile": "x"}),
        ("cachefile",),
        env={"CLBENCH_CACHE": "{tmp}/cachefile"},
    ),
    # ---- other commands
    Case("list-unknown", command(["list", "widgets"]), ("'widgets'",)),
    Case("fetch-unknown-stream", command(["fetch", "nosuchstream"]), ("'nosuchstream'", "list streams")),
    # ---- needs real processes
    Case(
        "rundir-two-runs-into-one-out",
        lambda w: [],
        procedure=two_runs_into_one_out,
        slow=True,
        skip=None if sys.platform.startswith("linux") else "uses Linux inotify",
    ),
]


def _param(case: Case) -> Any:
    marks = []
    if case.fails:
        marks.append(pytest.mark.xfail(strict=True, reason=case.fails))
    if case.slow:
        marks.append(pytest.mark.slow)
    if case.skip:
        marks.append(pytest.mark.skip(reason=case.skip))
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_hostile_input(
    case: Case, tmp_path: Path, prebuilt: Prebuilt, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLBENCH_DATA_DIR", raising=False)
    if case.procedure is not None:
        case.procedure(tmp_path)
        return
    where = Where(tmp_path, prebuilt)
    argv = case.make(where)
    before = snapshot(tmp_path)
    result = invoke(argv, env={k: v.replace("{tmp}", str(tmp_path)) for k, v in case.env.items()})
    if case.check is not None:
        case.check(where, result, before)
        return
    assert_refused(result, case.needles, case.absent, case.max_chars)
    assert_kept(before, snapshot(tmp_path))


def test_the_battery_has_at_least_100_cases() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    assert len(CASES) >= 100

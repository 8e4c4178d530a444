"""The run directory: resolved config, environment, append-only results, lock.

`results.jsonl` is append-only: one JSON object per line, written and fsynced as soon as it is known, so a
crash loses at most the record being written (a torn last line is ignored on read). Every record carries
`type`, `unit`, `method`, `seed`, `row` (0 = before training, i = after training task i), `task` (the task
just trained, None in row 0), `metric` and `value`; accuracy records add `eval_task`/`eval_index`, drift
records `param` (per-tensor ones also `norm_before` = ‖W_before‖_F and `norm_change` = ‖ΔW‖_F, so
drift can be regrouped per layer exactly), profile records `phase`.

Lines are strict JSON: a number that is NaN or infinite (e.g. the relative drift of a tensor whose norm was 0)
is written as null, and `read_records` reads null in `value`, `norm_before` and `norm_change` back as NaN.

Resume: a unit continued by `clbench run --resume` first appends a record of type `resume` whose `value` is
the last row its checkpoint holds (-1: restarted from scratch). Rows of that unit written after the checkpoint
by the interrupted run (the partly finished task) stay in the file, which stays append-only, but
`read_records` drops every record of the unit with a larger row that comes before the `resume` record; read
results through it.

Archived: a finished run kept for reading only (the reports committed under `reports/`) may hold its records
as `results.jsonl.gz` (gzip of the same lines) instead; `read_records`, and so `clbench report` and `compare`,
read it when no `results.jsonl` is there.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from clbench.errors import RunDirError

SCHEMA_VERSION = 1
RESULTS = "results.jsonl"
ARCHIVED = RESULTS + ".gz"  # a finished run's records compressed for keeping (e.g. committed reports): read-only
LOCK = ".lock"
PACKAGES = ("clbench", "torch", "transformers", "datasets", "peft", "numpy", "pandas", "avalanche-lib", "ray")


def unit_id(method: str, seed: int) -> str:
    return f"{method}/seed{seed}"


class RecordSink(Protocol):
    """Where the runner appends result records: a run directory, or memory on a Ray worker."""

    def append(self, records: Iterable[Mapping[str, Any]]) -> None: ...


@dataclass
class MemoryRecords:
    """Records kept in memory (a Ray worker returns them to the driver, which appends them)."""

    records: list[dict[str, Any]]

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        self.records.extend(json.loads(json_line(r)) for r in records)


# ---- the record format: strict JSON, one object per line


def json_line(record: Mapping[str, Any]) -> str:
    """One record as strict JSON (no NaN or Infinity tokens, which strict parsers such as jq refuse):
    a non-finite number is written as null, as JavaScript's JSON.stringify does."""
    return json.dumps(_strict(record), sort_keys=True, allow_nan=False)


def _strict(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy and torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot serialise {type(value).__name__}")


# Every record carries these (see the module docstring); some types add their own.
RECORD_FIELDS = ("type", "unit", "method", "seed", "row", "task", "metric", "value")
TYPE_FIELDS = {"accuracy": ("eval_task", "eval_index"), "curve": ("eval_task", "eval_index"),
               "functional": ("eval_task", "eval_index"), "drift": ("param",), "profile": ("phase",)}
NUMBERS = ("value", "norm_before", "norm_change")  # null here is a number that was NaN or infinite


def _record_problem(record: Any) -> str | None:
    """Why `record` is not a clbench record, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [k for k in (*RECORD_FIELDS, *TYPE_FIELDS.get(str(record.get("type")), ())) if k not in record]
    if missing:
        return f"missing {', '.join(repr(k) for k in missing)}"
    if not (isinstance(record["unit"], str) and isinstance(record["row"], int)):
        return "'unit' must be a string and 'row' an integer"
    return None


def _decoded(record: dict[str, Any]) -> dict[str, Any]:
    """A record as written, with null numbers read back as NaN (floats everywhere a number is expected)."""
    for key in NUMBERS:
        if key in record and record[key] is None:
            record[key] = math.nan
    return record


@dataclass
class RunDir:
    """A run directory with its lock held; use as a context manager.

    The directory (and a missing parent) is created on entry; if the run writes nothing into it (e.g. a check
    made under the lock refuses the run), what entry created is removed again on exit.

    `listeners` (progress, experiment trackers) receive every record batch after it is safely on disk.
    """

    path: Path
    listeners: list[RecordSink] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock: int | None = None
        self._created: list[Path] = []

    def __enter__(self) -> RunDir:  # noqa: PYI034 -- RunDir is not subclassed
        missing = [p for p in (self.path, *self.path.parents) if not p.exists()]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory '{self.path}' ({exc.strerror}); choose another --out"
                              ) from None
        self._created = missing  # innermost first
        try:
            self._lock = acquire_lock(self.path)
        except BaseException:
            self._remove_created()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            release_lock(self.path, self._lock)
            self._lock = None
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in self._created:
            try:
                folder.rmdir()  # only while empty: a folder the run wrote into stays
            except OSError:
                break
        self._created = []

    def write_text(self, name: str, text: str) -> None:
        """Write a whole file atomically (temp file + rename)."""
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)

    def repair_tail(self) -> None:
        """Make appends start on a new line: cut a torn last line (a record half-written when a run was killed),
        or end a complete last record that lacks only its newline."""
        file = self.path / RESULTS
        if not file.is_file():
            return
        with file.open("rb+") as fh:
            data = fh.read()
            if not data or data.endswith(b"\n"):
                return
            start = data.rfind(b"\n") + 1
            if _parses(data[start:]):
                fh.write(b"\n")
            else:
                fh.truncate(start)
            fh.flush()
            os.fsync(fh.fileno())

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        lines = "".join(json_line(r) + "\n" for r in records)
        if not lines:
            return
        with (self.path / RESULTS).open("a", encoding="utf-8") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())
        if self.listeners:
            written = [_decoded(json.loads(line)) for line in lines.splitlines()]  # as a reader sees them
            for listener in self.listeners:
                listener.append(written)


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False
    return True


# ---- the run-directory lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(path: Path) -> int:
    """Take `path/.lock` for this process; returns the open descriptor that holds it (see `release_lock`).

    The lock is an OS file lock (filelock's `lock_descriptor`: flock on Unix) on `.lock`, which the OS drops
    when its process dies, so a lock left by a dead process is taken over. Inside, `{"pid", "host"}` names the
    holder for messages; a record naming a live process on this host that holds no OS lock (an older clbench)
    is respected too, and an unreadable record is refused rather than guessed at.

    Raises:
        RunDirError: the directory is in use, the lock file is unreadable, or it cannot be written.
    """
    from filelock import lock_descriptor

    lock = path / LOCK
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirError(f"run directory '{path}' is not writable ({exc.strerror}); choose another --out"
                              ) from None
        try:
            if not lock_descriptor(fd, blocking=False):
                raise _in_use(path, _read_owner(fd))
            if _same_file(fd, lock):  # else its holder deleted it while releasing: lock the new one
                _check_owner(path, _read_owner(fd))
                _write_owner(fd)
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), path.stat())
    except FileNotFoundError:
        return False


def _read_owner(fd: int) -> dict[str, Any] | None:
    """The holder record in the lock file: {} when empty, None when it is not a record."""
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 4096)
    if not data.strip():
        return {}
    try:
        owner = json.loads(data)
    except ValueError:
        return None
    return owner if isinstance(owner, dict) else None


def _check_owner(path: Path, owner: dict[str, Any] | None) -> None:
    """We hold the OS lock: refuse only a record we cannot read, or one naming a process that may be alive."""
    lock = path / LOCK
    if owner is None:
        raise RunDirError(f"lock file '{lock}' is not a clbench lock; delete it if no clbench run uses '{path}'")
    pid, host = owner.get("pid"), owner.get("host")
    if not owner or (host == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)):
        return  # empty (its writer died first) or left by a dead process: take it over
    raise _in_use(path, owner)


def _in_use(path: Path, owner: dict[str, Any] | None) -> RunDirError:
    owner = owner or {}
    return RunDirError(f"run directory '{path}' is in use by process {owner.get('pid', '?')} on "
                       f"{owner.get('host', '?')}; wait for it, pick another --out, or delete '{path / LOCK}' "
                       "if that process is gone")


def _write_owner(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
    os.fsync(fd)


def release_lock(path: Path, fd: int) -> None:
    """Delete `path/.lock` (while still holding it, so nobody takes a lock that is about to vanish), then let
    the OS lock go by closing `fd`."""
    try:
        (path / LOCK).unlink(missing_ok=True)
    finally:
        os.close(fd)


# ---- reading records back


def read_records(path: Path) -> list[dict[str, Any]]:
    """All complete records of a run directory (a torn final line from a crash is skipped).

    A `resume` record of a unit drops that unit's earlier records with a larger row (see the module docstring).

    Raises:
        RunDirError: results.jsonl is not a file, not UTF-8, or holds a line that is not a clbench record.
    """
    file = path / RESULTS
    if not file.exists() and (path / ARCHIVED).is_file():
        file = path / ARCHIVED
    if not file.exists():
        return []
    lines = _result_lines(file)
    records = []
    hint = "restore it or start a new --out"
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break  # torn last line
            raise RunDirError(f"'{file}' line {number} is corrupted; {hint}") from None
        problem = _record_problem(record)
        if problem is not None:
            raise RunDirError(f"'{file}' line {number} is not a clbench record ({problem}); {hint}")
        records.append(_decoded(record))
    return _apply_resumes(records)


def torn_tail(path: Path) -> bool:
    """Whether results.jsonl ends in a partly written record (a run killed, or still writing, mid-record)."""
    file = path / RESULTS
    if not file.is_file():
        return False
    lines = _result_lines(file)
    return bool(lines) and bool(lines[-1].strip()) and not _parses(lines[-1].encode())


def _result_lines(file: Path) -> list[str]:
    if not file.is_file():
        raise RunDirError(f"'{file}' is not a file; restore the run's results file or start a new --out")
    data = file.read_bytes()
    if file.name == ARCHIVED:
        import gzip

        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise RunDirError(f"'{file}' is not a readable gzip file ({exc}); restore it") from None
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise RunDirError(f"'{file}' is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); "
                          "restore it or start a new --out") from None


def failed_units(path: Path) -> list[str]:
    """Units of a run directory whose final status is "failed"."""
    status = {r["unit"]: r["value"] for r in read_records(path) if r["type"] == "unit"}
    return sorted(unit for unit, value in status.items() if value == "failed")


def _apply_resumes(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not any(r["type"] == "resume" for r in records):
        return records
    out: list[dict[str, Any]] = []
    for record in records:
        if record["type"] == "resume":
            unit, last = record["unit"], record["value"]
            out = [r for r in out if r["unit"] != unit or r["row"] <= last]
        out.append(record)
    return out


def environment(command: str | None = None) -> dict[str, Any]:
    """Versions, hardware and git commit for env.json."""
    import torch

    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cuda = None
    if torch.cuda.is_available():
        cuda = {"device": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
                "cuda": torch.version.cuda}
    return {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": cuda,
        "packages": versions,
        "git_commit": git_commit(),
    }


def git_commit(where: Path | None = None) -> str | None:
    """HEAD of the checkout holding `where` (default: this package), '+dirty' when tracked files differ."""
    here = where or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, check=False, capture_output=True, text=True, timeout=5)
        # tracked changes only: a run directory written inside the checkout must not mark its own commit dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, check=False,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")

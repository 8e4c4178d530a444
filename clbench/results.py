"""The run directory: resolved config, environment, append-only results, lock.

`results.jsonl` is append-only: one JSON object per line, written and fsynced as soon as it is known, so a
crash loses at most the record being written (a torn last line is ignored on read). Every record carries
`type`, `unit`, `method`, `seed`, `row` (0 = before training, i = after training task i), `task` (the task
just trained, None in row 0), `metric` and `value`; accuracy records add `eval_task`/`eval_index`, drift
records `param` (per-tensor ones also `norm_before` = ‖W_before‖_F and `norm_change` = ‖ΔW‖_F, so
drift can be regrouped per layer exactly), profile records `phase`.

Resume: a unit continued by `clbench run --resume` first appends a record of type `resume` whose `value` is
the last row its checkpoint holds (-1: restarted from scratch). Rows of that unit written after the checkpoint
by the interrupted run (the partly finished task) stay in the file, which stays append-only, but
`read_records` drops every record of the unit with a larger row that comes before the `resume` record; read
results through it.
"""

from __future__ import annotations

import json
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
        self.records.extend(json.loads(json.dumps(r, default=_jsonable)) for r in records)


@dataclass
class RunDir:
    """A run directory with its lock held; use as a context manager.

    `listeners` (progress, experiment trackers) receive every record batch after it is safely on disk.
    """

    path: Path
    listeners: list[RecordSink] = field(default_factory=list)

    def __enter__(self) -> RunDir:  # noqa: PYI034 -- RunDir is not subclassed
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory '{self.path}' ({exc.strerror}); choose another --out"
                              ) from None
        acquire_lock(self.path)
        return self

    def __exit__(self, *exc: object) -> None:
        release_lock(self.path)

    def write_text(self, name: str, text: str) -> None:
        """Write a whole file atomically (temp file + rename)."""
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)

    def repair_tail(self) -> None:
        """Cut a torn last line (a record half-written when a run was killed) so appends start on a new line."""
        file = self.path / RESULTS
        if not file.is_file():
            return
        with file.open("rb+") as fh:
            data = fh.read()
            if not data or data.endswith(b"\n"):
                return
            fh.truncate(data.rfind(b"\n") + 1)
            fh.flush()
            os.fsync(fh.fileno())

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        lines = "".join(json.dumps(r, sort_keys=True, default=_jsonable) + "\n" for r in records)
        if not lines:
            return
        with (self.path / RESULTS).open("a", encoding="utf-8") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())
        if self.listeners:
            written = [json.loads(line) for line in lines.splitlines()]  # as a reader will see them
            for listener in self.listeners:
                listener.append(written)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(path: Path) -> None:
    """Create `path/.lock` exclusively; a lock left by a dead process on this host is taken over."""
    lock = path / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text())
            except (OSError, ValueError):
                owner = {}
            same_host = owner.get("host") == me["host"]
            if same_host and isinstance(owner.get("pid"), int) and not _pid_alive(owner["pid"]):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            raise RunDirError(f"run directory '{path}' is in use by process {owner.get('pid', '?')} on "
                              f"{owner.get('host', '?')}; wait for it, pick another --out, or delete '{lock}' "
                              "if that process is gone") from None
        except PermissionError:
            raise RunDirError(f"run directory '{path}' is not writable; choose another --out") from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        return
    raise RunDirError(f"could not take the lock '{lock}'; delete it if no clbench run uses '{path}'")


def release_lock(path: Path) -> None:
    lock = path / LOCK
    try:
        if json.loads(lock.read_text()).get("pid") == os.getpid():
            lock.unlink()
    except (OSError, ValueError):
        pass


def read_records(path: Path) -> list[dict[str, Any]]:
    """All complete records of a run directory (a torn final line from a crash is skipped).

    A `resume` record of a unit drops that unit's earlier records with a larger row (see the module docstring).
    """
    file = path / RESULTS
    if not file.is_file():
        return []
    records = []
    lines = file.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break  # torn last line
            raise RunDirError(f"'{file}' line {number} is corrupted; restore it or start a new --out") from None
        if not isinstance(records[-1], dict) or not {"type", "unit", "row"} <= records[-1].keys():
            raise RunDirError(f"'{file}' line {number} is not a clbench record; restore it or start a new --out")
    return _apply_resumes(records)


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

"""The run directory: resolved config, environment, append-only results, lock.

`results.jsonl` is append-only: one JSON object per line, written and fsynced as soon as it is known, so a
crash loses at most the record being written (a torn last line is ignored on read). Every record carries
`type`, `unit`, `method`, `seed`, `row` (0 = before training, i = after training task i), `task` (the task
just trained, None in row 0), `metric` and `value`; accuracy records add `eval_task`/`eval_index`, drift
records `param` (per-tensor ones also `norm_before` = ‖W_before‖_F and `norm_change` = ‖ΔW‖_F, so
drift can be regrouped per layer exactly), profile records `phase`.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from clbench.errors import RunDirError

SCHEMA_VERSION = 1
RESULTS = "results.jsonl"
LOCK = ".lock"
PACKAGES = ("clbench", "torch", "transformers", "datasets", "peft", "numpy", "pandas", "avalanche-lib", "ray")


def unit_id(method: str, seed: int) -> str:
    return f"{method}/seed{seed}"


@dataclass
class RunDir:
    """A run directory with its lock held; use as a context manager."""

    path: Path

    def __enter__(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
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

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        lines = "".join(json.dumps(r, sort_keys=True, default=_jsonable) + "\n" for r in records)
        if not lines:
            return
        with (self.path / RESULTS).open("a", encoding="utf-8") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())


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
    """All complete records of a run directory (a torn final line from a crash is skipped)."""
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
    return records


def environment(command: str | None = None) -> dict[str, Any]:
    """Versions, hardware and git commit for env.json."""
    import torch

    versions = {}
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


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True,
                               timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")

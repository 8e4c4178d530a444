"""Built streams kept on disk, so that a run reads its stream back instead of building it again.

Only a stream whose every source is pinned is kept: `pypi` (archives verified against their sha256) and
`synthetic` (generated from the seed). Building such a stream depends on nothing but the parsed stream file and
clbench's data code, so the key hashes both: every field of the spec (tasks, sources, options, sizes after
run-level overrides, seed, validation fraction), whether test data is read, the data folder, and the bytes of
every module under `clbench/data` (the splitting code, the sources, the pinned hashes). Any edit there builds
afresh. `hf` and `files` streams read data that can change outside clbench, so they are always built.

An entry is `<cache>/streams/<name>-<key>.json`: a first line with the sha256 of the rest, then the stream as
JSON. An entry that fails its sha256 or does not parse is built again and replaced; one that cannot be
written (a read-only cache) only costs building the stream again next time.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clbench.data import Stream, Task
from clbench.data.cachefile import write_entry

if TYPE_CHECKING:
    from clbench.data.streams import StreamSpec

PINNED_SOURCES = ("pypi", "synthetic")  # sources whose data cannot change without clbench's code changing


def entry_path(root: Path, spec: StreamSpec, data_dir: Path | None, read_test: bool) -> Path | None:
    """Where the built `spec` is kept under the cache `root`, or None when a source is not pinned."""
    specs = [*spec.tasks, *([spec.general] if spec.general is not None else [])]
    if any(task.source not in PINNED_SOURCES for task in specs):
        return None
    digest = hashlib.sha256(json.dumps([_plain(spec), read_test, str(data_dir), code_digest()],
                                       sort_keys=True).encode())
    return root / "streams" / f"{spec.name}-{digest.hexdigest()[:24]}.json"


@functools.cache
def code_digest() -> str:
    """sha256 over the path and bytes of every module under `clbench/data`, read once per process."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def read(path: Path) -> Stream | None:
    """The stream kept at `path`, or None when there is none or it fails its sha256 (then it is built again)."""
    try:
        recorded, _, payload = path.read_bytes().partition(b"\n")
        if hashlib.sha256(payload).hexdigest() != recorded.decode("ascii"):
            return None
        return _stream_from(json.loads(payload))
    except (OSError, ValueError, TypeError, KeyError):  # missing, truncated or foreign: build it again
        return None


def write(path: Path, stream: Stream) -> None:
    """Keep `stream` at `path` (written whole or not at all, `clbench.data.cachefile`)."""
    payload = json.dumps(dataclasses.asdict(stream), ensure_ascii=False).encode()
    entry = hashlib.sha256(payload).hexdigest().encode("ascii") + b"\n" + payload
    write_entry(path, lambda tmp: Path(tmp).write_bytes(entry))


def _stream_from(fields: dict[str, Any]) -> Stream:
    tasks = tuple(Task(**_tuples(task)) for task in fields.pop("tasks"))
    return Stream(**_tuples(fields), tasks=tasks)


def _tuples(fields: dict[str, Any]) -> dict[str, Any]:
    """JSON gives lists where the dataclasses hold tuples (texts, labels, classes, groups)."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in fields.items()}


def _plain(value: Any) -> Any:
    """`value` as JSON-ready data: dataclasses and mappings as dicts, sequences as lists, the rest as text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)

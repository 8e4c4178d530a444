"""Result records of one unit: every record the loop writes is built here, bound to its method and seed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from clbench.results import RecordSink, unit_id


@dataclass(frozen=True)
class UnitRecorder:
    """Builds the records of one unit (method × seed) and appends them to `sink` (see `clbench.results`)."""

    method: str
    seed: int
    sink: RecordSink

    @property
    def unit(self) -> str:
        return unit_id(self.method, self.seed)

    def record(self, kind: str, row: int, task: str | None, **fields: Any) -> dict[str, Any]:
        """One record of type `kind` at training stage `row` (0: before training) after task `task`."""
        return {"type": kind, "unit": self.unit, "method": self.method, "seed": self.seed, "row": row,
                "task": task, **fields}

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        self.sink.append(records)

    def status(self, value: str, row: int, error: str | None = None) -> dict[str, Any]:
        """The unit's final status record: "done" or "failed" (with the error's one-line message)."""
        fields = {"error": error} if error is not None else {}
        return self.record("unit", row, None, metric="status", value=value, **fields)

    def resume(self, row: int) -> dict[str, Any]:
        """Readers drop this unit's earlier records after `row` (-1: the unit restarts from scratch)."""
        return self.record("resume", row, None, metric="resume_from_row", value=row)

"""Helpers for tests that compare whole runs: a tiny run in a named folder and its comparable records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"
FAULTS = str(FIXTURES / "plugin_faults.py")

# Records whose values depend on timing or on how the run was scheduled, not on what was learnt.
NOT_COMPARED = {"profile", "note", "resume"}


def tiny_run(out: Path, methods: tuple[str, ...], *, plugins: tuple[str, ...] = (), resume: bool = False,
             **overrides: Any) -> list[dict[str, Any]]:
    """Run `methods` on the synthetic stream with the tiny model into `out`; returns its records."""
    from clbench.config import build_config
    from clbench.registry import MethodRegistry
    from clbench.results import read_records
    from clbench.training.progress import Progress
    from clbench.training.run import run

    values: dict[str, Any] = {"methods": list(methods), "stream": "synthetic", "model": "tiny", "out": str(out),
                              "train_size": 32, "test_size": 16, "batch_size": 8, "eval_batch_size": 32,
                              "buffer_size": 16, "max_steps": 6, "plugins": list(plugins)}
    values.update(overrides)
    config = build_config(values)
    run(config, registry=MethodRegistry.default(plugins), progress=Progress("quiet"), resume=resume)
    return read_records(out)


def comparable(records: list[dict[str, Any]], units: set[str] | None = None) -> dict[tuple[Any, ...], Any]:
    """Everything a run learnt, keyed so that two runs compare with ==: accuracy, curves, drift, functional
    distances and unit status; a key seen twice is an error (results must never duplicate)."""
    out: dict[tuple[Any, ...], Any] = {}
    for r in records:
        if r["type"] in NOT_COMPARED or (units is not None and r["unit"] not in units):
            continue
        key = (r["unit"], r["type"], r["row"], r.get("step"), r["metric"], r.get("eval_index"), r.get("param"))
        assert key not in out, f"duplicate record {key}"
        out[key] = r["value"]
    return out

"""Contract matrix: every registered method runs the 3-task synthetic stream with the tiny model.

Methods are discovered from `MethodRegistry.default().names()` (built-ins, entry points and, with avalanche-lib
installed, the `avalanche:<strategy>` adapters), so a new method joins this matrix without editing it. Each
run is a few optimiser steps per task; the contract is about shape and bookkeeping, not accuracy: a full
(T+1) × T accuracy matrix with no NaN, a "done" unit record in results.jsonl, and drift and profile records
for every task.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clbench.evaluators.accuracy import accuracy_matrix
from clbench.registry import MethodRegistry
from clbench.results import RESULTS

METHODS = MethodRegistry.default().names()
TINY = {"train_size": 16, "test_size": 8, "batch_size": 4, "eval_batch_size": 32, "buffer_size": 8,
        "max_steps": 2}


@pytest.mark.parametrize("method", METHODS)
def test_method_honours_the_runner_contract(method: str,
                                            run_tiny: Callable[..., tuple[Path, list[dict[str, Any]]]]) -> None:
    out, records = run_tiny((method,), **TINY)
    mine = [r for r in records if r["method"] == method]
    assert [r["value"] for r in mine if r["type"] == "unit"] == ["done"], \
        [r.get("error") for r in mine if r["type"] == "unit"]
    for metric in ("acc_cil", "acc_til"):
        R = accuracy_matrix([r for r in mine if r["type"] == "accuracy" and r["metric"] == metric],
                            row_key="row", col_key="eval_index")
        assert R.shape == (4, 3)
        assert not any(math.isnan(v) for v in R.flat)
        assert all(0.0 <= v <= 1.0 for v in R.flat)
    for row in (1, 2, 3):
        assert any(r["type"] == "drift" and r["row"] == row and r["param"] == "__overall__" for r in mine)
        assert any(r["type"] == "profile" and r["row"] == row and r["phase"] == "train" and r["metric"] == "steps"
                   and r["value"] == TINY["max_steps"] for r in mine)
    lines = [json.loads(line) for line in (out / RESULTS).read_text(encoding="utf-8").splitlines() if line]
    assert any(r["type"] == "unit" and r["value"] == "done" and r["method"] == method for r in lines)


@pytest.mark.parametrize("method", METHODS)
def test_method_names_the_optimiser_it_trains_with(method: str) -> None:
    """A report prints `optimizer_name()`; a method that changes the optimiser must say so there."""
    from clbench.protocol import Hooks

    cls = MethodRegistry.default().get(method)
    name = cls().optimizer_name()
    assert isinstance(name, str) and name
    if cls.configure_optimizer is not Hooks.configure_optimizer:
        assert cls.optimizer_name is not Hooks.optimizer_name, f"{method} overrides configure_optimizer only"

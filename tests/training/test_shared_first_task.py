"""Shared first task: methods whose first task is plain fine-tuning train it once per seed, with results equal to
running each method alone; methods that wrap the model (LoRA) train their own."""

from __future__ import annotations

from pathlib import Path

from runs_util import FAULTS, comparable, tiny_run

METHODS = ("naive", "ewc", "counter", "fip", "lora")


def test_shared_first_task_equals_separate_runs(tmp_path: Path) -> None:
    together = tiny_run(tmp_path / "grid", METHODS, plugins=(FAULTS,), seeds=[0, 1], max_steps=4)
    shared = {(r["unit"]) : r["value"] for r in together if r["type"] == "note" and r["metric"] == "shared_first_task"}
    assert shared == {f"{m}/seed{s}": f"naive/seed{s}" for m in ("ewc", "counter", "fip") for s in (0, 1)}
    for method in METHODS:
        alone = tiny_run(tmp_path / method, (method,), plugins=(FAULTS,), seeds=[0, 1], max_steps=4)
        units = {f"{method}/seed0", f"{method}/seed1"}
        assert comparable(together, units) == comparable(alone, units), method


def test_a_method_with_its_own_lr_trains_its_own_first_task(tmp_path: Path) -> None:
    records = tiny_run(tmp_path / "grid", ("naive", "ewc"), seeds=[0], max_steps=4, ewc={"lr": 3e-3})
    assert not [r for r in records if r["type"] == "note" and r["metric"] == "shared_first_task"]
    lrs = {r["unit"]: r["value"] for r in records if r["type"] == "profile" and r["metric"] == "lr"}
    assert lrs == {"naive/seed0": 1e-3, "ewc/seed0": 3e-3}  # tiny's default lr, and ewc's own

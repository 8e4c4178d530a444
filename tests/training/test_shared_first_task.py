"""Shared first task: methods whose first task is plain fine-tuning train it once per seed, with results equal to
running each method alone; methods that wrap the model (LoRA) train their own."""

from __future__ import annotations

from pathlib import Path

import torch
from runs_util import FAULTS, comparable, tiny_run

from clbench.training.sharing import SharedStart

METHODS = ("naive", "ewc", "counter", "fip", "lora")


def test_shared_first_task_equals_separate_runs(tmp_path: Path) -> None:
    together = tiny_run(tmp_path / "grid", METHODS, plugins=(FAULTS,), seeds=[0, 1], max_steps=4)
    shared = {(r["unit"]) : r["value"] for r in together if r["type"] == "note" and r["metric"] == "shared_first_task"}
    assert shared == {f"{m}/seed{s}": f"naive/seed{s}" for m in ("ewc", "counter", "fip") for s in (0, 1)}
    for method in METHODS:
        alone = tiny_run(tmp_path / method, (method,), plugins=(FAULTS,), seeds=[0, 1], max_steps=4)
        units = {f"{method}/seed0", f"{method}/seed1"}
        assert comparable(together, units) == comparable(alone, units), method


def test_units_evaluated_along_training_share_the_first_task_and_its_curve(tmp_path: Path) -> None:
    together = tiny_run(tmp_path / "grid", ("naive", "ewc"), seeds=[0], max_steps=4, eval_every=2)
    assert [r["value"] for r in together if r["type"] == "note" and r["metric"] == "shared_first_task"] == \
        ["naive/seed0"]
    alone = tiny_run(tmp_path / "ewc", ("ewc",), seeds=[0], max_steps=4, eval_every=2)
    curve = comparable(together, {"ewc/seed0"})
    assert {k[3] for k in curve if k[1] == "curve" and k[2] == 1} == {2}  # task 1's curve point, replayed
    assert curve == comparable(alone, {"ewc/seed0"})


def test_a_method_with_its_own_lr_trains_its_own_first_task(tmp_path: Path) -> None:
    records = tiny_run(tmp_path / "grid", ("naive", "ewc"), seeds=[0], max_steps=4, ewc={"lr": 3e-3})
    assert not [r for r in records if r["type"] == "note" and r["metric"] == "shared_first_task"]
    lrs = {r["unit"]: r["value"] for r in records if r["type"] == "profile" and r["metric"] == "lr"}
    assert lrs == {"naive/seed0": 1e-3, "ewc/seed0": 3e-3}  # tiny's default lr, and ewc's own


def test_a_unit_stores_no_copy_that_no_later_unit_of_its_seed_could_reuse() -> None:
    model = torch.nn.Linear(2, 2)
    shared = SharedStart(units=[("naive", 0), ("ewc", 0), ("naive", 1)])
    shared.add_row0(0, "naive/seed0", model, [])
    assert shared.row0_logits(0, model) == []  # ewc/seed0 comes later and may reuse it
    shared.add_row0(0, "ewc/seed0", model, [])
    shared.begin(0, ("key",), "ewc/seed0", model)
    assert len(shared.row0[0]) == 1 and not shared.firsts[0]  # nothing after ewc/seed0 has seed 0
    shared.begin(1, ("key",), "naive/seed1", model)
    assert not shared.firsts[1]
    everything = SharedStart()  # a cache reused across runs (tuning) keeps every entry
    everything.begin(1, ("key",), "naive/seed1", model)
    assert everything.firsts[1]

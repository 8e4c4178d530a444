"""Joint training: trains each task on the union of the tasks' training data seen so far."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clbench.data import EncodedSplit, TaskInfo
from clbench.methods.joint import Joint


def split(task: int, n: int, width: int) -> EncodedSplit:
    return EncodedSplit(torch.ones(n, width, dtype=torch.long), torch.full((n,), width), torch.zeros(n, dtype=torch.long),
                        torch.full((n,), task))


def test_train_data_is_the_union_of_tasks_so_far() -> None:
    method = Joint()
    first, second, third = split(0, 5, 3), split(1, 7, 4), split(2, 2, 2)
    info = TaskInfo(2, "c", ("x",), 2)
    assert method.train_data(TaskInfo(0, "a", ("x",), 0), first, []) is first
    union = method.train_data(info, third, [first, second])
    assert len(union) == 14
    assert union.task_ids.tolist() == [0] * 5 + [1] * 7 + [2] * 2
    assert union.ids.shape == (14, 4)


def test_runner_trains_joint_on_the_union(run_tiny: Callable[..., tuple[Path, list[dict[str, Any]]]]) -> None:
    out, records = run_tiny(("joint",), epochs=1)
    sizes = [t["train"] for t in json.loads((out / "env.json").read_text())["stream"]["tasks"]]
    steps = {r["row"]: r["value"] for r in records
             if r["type"] == "profile" and r["phase"] == "train" and r["metric"] == "steps"}
    examples = {r["row"]: r["value"] for r in records
                if r["type"] == "profile" and r["phase"] == "train" and r["metric"] == "examples"}
    for row in (1, 2, 3):
        seen = sum(sizes[:row])
        assert examples[row] == seen
        assert steps[row] == math.ceil(seen / 8)  # batch_size 8 in the tiny config

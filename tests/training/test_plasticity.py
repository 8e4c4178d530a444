"""Plasticity: naive fine-tuning keeps learning the new tasks of a sequence the tiny model learns, about as well
as the single-task reference that trains each task alone from the same start."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clbench.config import build_config
from clbench.registry import MethodRegistry
from clbench.reporting.rundata import accuracy_matrices
from clbench.results import read_records
from clbench.training.progress import Progress
from clbench.training.run import run

STREAM = """\
name: two-tasks
version: 1
seed: 0
defaults: {source: synthetic, train_size: 330, test_size: 90, max_length: 32}
tasks:
  - {name: colours, classes: [red, green, blue]}
  - {name: shapes, classes: [circle, square]}
"""


def learning_accuracy(tmp_path: Path, pooling: str) -> dict[str, np.ndarray]:
    stream = tmp_path / "two-tasks.yaml"
    stream.write_text(STREAM)
    out = tmp_path / pooling
    config = build_config({"methods": ["naive", "single-task"], "stream": str(stream), "model": "tiny",
                           "out": str(out), "pooling": pooling, "seeds": [0]})
    run(config, registry=MethodRegistry.default(), progress=Progress("quiet"))
    return {unit.split("/")[0]: np.diag(R[1:]) for unit, R in accuracy_matrices(read_records(out)).items()}


def test_naive_learns_each_task_about_as_well_as_alone(tmp_path: Path) -> None:
    learnt = learning_accuracy(tmp_path, "mean")
    assert (learnt["single-task"] > 0.8).all(), learnt  # a sequence the tiny model learns, task by task
    assert (learnt["naive"] >= 0.9 * learnt["single-task"]).all(), learnt

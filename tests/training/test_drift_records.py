"""The runner's drift records equal the fractional Frobenius change of CPU copies of the effective weights taken
at the unit's start and after every task, computed here in float64 (tolerance: 1e-6 relative)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from runs_util import tiny_run
from torch import Tensor, nn

from clbench.ops import effective_weights
from clbench.training import runner
from clbench.training.evaluation import DriftReferences

RTOL = 1e-6


def reference_drift(before: dict[str, Tensor], after: dict[str, Tensor]) -> dict[str, float]:
    """Per-tensor and overall ‖after − before‖ / ‖before‖ from float64 copies."""
    change = {n: float((after[n].double() - before[n].double()).pow(2).sum()) for n in before}
    base = {n: float(before[n].double().pow(2).sum()) for n in before}
    out = {n: (change[n] / base[n]) ** 0.5 for n in before if base[n] > 0}
    out["__overall__"] = (sum(change.values()) / sum(base.values())) ** 0.5
    return out


def test_drift_records_equal_float64_drift_of_weight_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    snapshots: dict[str, list[dict[str, Tensor]]] = {}  # unit -> [start, after task 1, after task 2, ...]

    class Spy(DriftReferences):
        def __init__(self, model: nn.Module) -> None:
            super().__init__(model)
            self.weights = [effective_weights(model)]

        def records(self, records: Any, info: Any, model: nn.Module, more_tasks: bool) -> list[dict[str, Any]]:
            self.weights.append(effective_weights(model))
            snapshots[records.unit] = self.weights
            return super().records(records, info, model, more_tasks)

    monkeypatch.setattr(runner, "DriftReferences", Spy)
    records = tiny_run(tmp_path / "run", ("naive", "ewc", "lora"), max_steps=4)
    drift = [r for r in records if r["type"] == "drift"]
    assert {r["unit"] for r in drift} == set(snapshots) == {"naive/seed0", "ewc/seed0", "lora/seed0"}
    checked = 0
    for unit, weights in snapshots.items():
        assert len(weights) == 4  # start and three tasks
        for row in (1, 2, 3):
            for metric, before in (("frobenius_task", weights[row - 1]), ("frobenius_total", weights[0])):
                expected = reference_drift(before, weights[row])
                got = {r["param"]: r["value"] for r in drift if (r["unit"], r["row"], r["metric"]) == (unit, row, metric)}
                assert got.keys() >= expected.keys()
                for name, value in expected.items():
                    assert got[name] == pytest.approx(value, rel=RTOL, abs=1e-12), (unit, row, metric, name)
                    checked += 1
    assert checked > 200


def test_packed_copies_equal_their_tensors_and_hold_one_buffer_per_dtype() -> None:
    import torch

    from clbench.ops import packed_copies

    tensors = {"a": torch.randn(3, 4), "b": torch.randn(5), "c": torch.arange(6).reshape(2, 3),
               "d": torch.randn(2, 2, 2).transpose(0, 2)}  # a non-contiguous one
    copies = packed_copies(tensors)
    assert list(copies) == list(tensors)
    for name, tensor in tensors.items():
        assert torch.equal(copies[name], tensor) and copies[name].dtype == tensor.dtype
        assert copies[name].data_ptr() != tensor.data_ptr()
    floats = {copies[n].untyped_storage().data_ptr() for n in ("a", "b", "d")}
    assert len(floats) == 1 and copies["c"].untyped_storage().data_ptr() not in floats
    tensors["a"].add_(1.0)  # the copies do not follow the originals, nor each other
    assert not torch.equal(copies["a"], tensors["a"]) and torch.equal(copies["b"], tensors["b"])

"""Avalanche reference adapters: registered when avalanche-lib is installed, and train through Avalanche's loop."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("avalanche")

from clbench.config import build_config, parse_set
from clbench.data import EncodedSplit, TaskInfo
from clbench.interop.avalanche_methods import ADAPTERS, adapter
from clbench.methods import RunContext
from clbench.models import build_model
from clbench.protocol import LoopSettings
from clbench.registry import MethodRegistry

TASKS = (TaskInfo(0, "a", ("x", "y"), 0), TaskInfo(1, "b", ("x", "y"), 2))


def test_adapters_are_registered_and_marked() -> None:
    registry = MethodRegistry.default()
    assert sorted(ADAPTERS) == sorted(n for n in registry.names() if n.startswith("avalanche:"))
    for name in ADAPTERS:
        info = registry.describe(name)
        assert info["origin"].startswith("avalanche adapter")
        assert info["summary"].startswith("[avalanche]")
        assert registry.get(name).external_loop


def test_set_keys_with_a_colon_reach_the_adapter_config() -> None:
    config = build_config({"methods": ["avalanche:ewc"]}, parse_set(["avalanche:ewc.ewc_lambda=5"]))
    assert config.method_options == {"avalanche:ewc": {"ewc_lambda": 5}}


def settings(model: torch.nn.Module, total: int, batch_size: int = 4) -> LoopSettings:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return LoopSettings(optimizer, scheduler, total, 1, batch_size, 1.0, "fp32", torch.device("cpu"),
                        torch.Generator().manual_seed(0))


def test_naive_adapter_trains_one_task_within_the_step_budget() -> None:
    method = MethodRegistry.default().get("avalanche:naive")()
    ctx = RunContext(tasks=TASKS, num_labels=4, device=torch.device("cpu"), seed=0,
                     generator=torch.Generator().manual_seed(1), buffer_size=8, batch_size=4)
    model = method.setup(build_model("tiny", 4, 0), ctx)
    g = torch.Generator().manual_seed(0)
    data = EncodedSplit(torch.randint(5, 60, (10, 6), generator=g), torch.randint(2, 7, (10,), generator=g),
                        torch.randint(0, 2, (10,), generator=g), torch.zeros(10, dtype=torch.long))
    before = [p.detach().clone() for p in model.parameters()]
    result = method.fit_task(TASKS[0], model, data, settings(model, total=4))
    assert result.steps == 4  # 3 batches per epoch: the budget stops training inside the second epoch
    assert result.examples == 14  # batches of 4, 4 and 2, then 4 from the second epoch
    assert result.tokens > 0 and torch.isfinite(torch.tensor(result.last_loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_avalanche_naive_runs_through_the_runner(run_tiny: Callable[..., tuple[Path, list[dict[str, Any]]]]) -> None:
    _, records = run_tiny(("avalanche:naive",), max_steps=2)
    steps = [r["value"] for r in records if r["type"] == "profile" and r["phase"] == "train" and r["metric"] == "steps"]
    assert steps == [2, 2, 2]
    assert [r["value"] for r in records if r["type"] == "unit"] == ["done"]


def test_adapter_options_are_the_config_fields_under_avalanche_names() -> None:
    ewc_cls, si_cls, lwf_cls = adapter("avalanche:ewc"), adapter("avalanche:si"), adapter("avalanche:lwf")
    ewc = ewc_cls(ewc_cls.config_cls(ewc_lambda=5.0, mode="online", decay_factor=0.9))
    assert ewc.strategy_options(None) == {"ewc_lambda": 5.0, "mode": "online", "decay_factor": 0.9}  # type: ignore[arg-type]
    assert si_cls().strategy_options(None) == {"si_lambda": 1.0, "eps": 1e-7}  # type: ignore[arg-type]
    lwf = lwf_cls(lwf_cls.config_cls(alpha=0.5, temperature=3.0))
    assert lwf.strategy_options(None) == {"alpha": 0.5, "temperature": 3.0}  # type: ignore[arg-type]

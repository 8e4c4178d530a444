"""`--compile`: a training step through torch.compile gives the eager step's loss and update (tolerance: 1e-5
relative on the loss, 1e-5 absolute on every parameter after one AdamW step), on the tiny model."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from clbench.data import EncodedSplit, TaskInfo
from clbench.models import build_model
from clbench.protocol import Hooks, RunContext
from clbench.training.runner import train_step

TASKS = (TaskInfo(0, "a", ("x", "y", "z"), 0),)


@functools.cache
def compile_unavailable() -> str | None:
    """Why torch.compile cannot run here (e.g. no C++ compiler for TorchInductor on this CPU), or None."""
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(3))
    except Exception as exc:  # noqa: BLE001 - any failure means the option cannot be tested here
        return f"torch.compile is unavailable on this machine: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def test_compile_is_a_run_option_off_by_default(tmp_path: Path) -> None:
    assert tiny_config(tmp_path).compile is False
    assert tiny_config(tmp_path, compile=True).compile is True


@pytest.mark.slow  # TorchInductor compiles the forward and backward graphs: minutes on a busy 2-core CPU
def test_a_compiled_step_gives_the_eager_loss_and_update(tmp_path: Path) -> None:
    reason = compile_unavailable()
    if reason:
        pytest.skip(reason)
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([12, 7, 12, 3, 9, 12, 5, 10])
    ids = torch.randint(5, 60, (8, 12), generator=g)
    ids[torch.arange(12).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    batch = EncodedSplit(ids, lengths, torch.randint(0, 3, (8,), generator=g), torch.zeros(8, dtype=torch.long)
                         ).batch(torch.arange(8))
    config = tiny_config(tmp_path)
    results = []
    for compiled in (False, True):
        model = build_model("tiny", 3, 0)
        for module in model.modules():  # dropout off: compiled kernels draw other random masks than eager ones
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        ctx = RunContext(tasks=TASKS, num_labels=3, device=torch.device("cpu"), seed=0,
                         generator=torch.Generator().manual_seed(1), buffer_size=0, batch_size=8)
        params = list(model.parameters())
        optimizer = ctx.adamw(params)
        forward = torch.compile(model) if compiled else None
        loss = train_step(model, Hooks(), ctx, batch, params, optimizer, config, forward=forward)
        results.append((loss, {n: p.detach().clone() for n, p in model.named_parameters()}))
    (eager_loss, eager), (compiled_loss, after) = results
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-5)
    assert all(torch.allclose(after[n], eager[n], rtol=0, atol=1e-5) for n in eager)

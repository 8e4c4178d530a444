"""What GEM and A-GEM share in their tests: the optimiser option (the papers' plain SGD by default), and one SGD
step through the runner's `train_step` with what the method computed on the way recorded, for tests of the
papers' first-order guarantees on the step taken."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

from clbench.config import build_config
from clbench.data import EncodedSplit
from clbench.ops import flat_grad
from clbench.training.runner import lr_schedule, train_step


@dataclass
class RecordedStep:
    step: torch.Tensor  # Δθ, flattened
    projected: torch.Tensor  # the gradient after the method's projection, before clipping
    probed: torch.Tensor  # what the probed method function returned this step (G or g_ref)


def sgd_step_through_runner(method: Any, model: torch.nn.Module, probe: str, task: Any,
                            batch: EncodedSplit) -> RecordedStep:
    """Run one runner step of `method` (its own SGD optimiser) on `batch` of `task`, recording the return
    value of `method.<probe>(model, params)` and the projected gradient, and check the update: Δθ = −η·c·g̃
    with η the method's sgd_lr and c torch's clip_grad_norm_ coefficient, up to float32 rounding."""
    params = [p for p in model.parameters() if p.requires_grad]
    seen: dict[str, torch.Tensor] = {}
    probed, after_backward = getattr(method, probe), method.after_backward

    def record_probe(m: torch.nn.Module, ps: list[torch.nn.Parameter]) -> torch.Tensor:
        seen["probed"] = probed(m, ps)  # this step's value (train mode: dropout on)
        return seen["probed"]

    def record_projected(m: torch.nn.Module) -> None:
        after_backward(m)
        seen["projected"] = flat_grad(params)

    setattr(method, probe, record_probe)
    method.after_backward = record_projected
    optimizer = method.configure_optimizer(task, params)
    assert optimizer is not None
    config = build_config({"methods": [method.name], "model": "tiny", "stream": "synthetic"})
    before = torch.cat([p.detach().reshape(-1) for p in params])
    train_step(model, method, method.context, batch.batch(torch.arange(len(batch.labels))), params, optimizer,
               config)
    step = torch.cat([p.detach().reshape(-1) for p in params]) - before
    projected = seen["projected"]
    clip = min(1.0, config.grad_clip / (float(projected.norm()) + 1e-6))  # torch's clip_grad_norm_ coefficient
    expected = -method.config.sgd_lr * clip * projected
    # float32: θ + Δθ is rounded to the weights' precision, Δθ and the clipping coefficient to their own
    rounding = torch.finfo(before.dtype).eps * (2 * before.abs() + expected.abs()) + 1e-5 * expected.abs()
    assert bool(((step - expected).abs() <= rounding).all())
    return RecordedStep(step, projected, seen["probed"])


def check_sgd_by_default_and_adamw_on_request(method_cls: Any, config_cls: Any, task: Any, bad_lr: float) -> None:
    """Plain SGD at sgd_lr (no momentum, no weight decay) by default and named so; optimizer=adamw hands the
    step back to the runner's AdamW; an unknown optimiser or a bad sgd_lr is refused."""
    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer = method_cls().configure_optimizer(task, params)
    assert type(optimizer) is torch.optim.SGD
    assert (optimizer.defaults["lr"], optimizer.defaults["momentum"], optimizer.defaults["weight_decay"]) == (0.03, 0, 0)
    assert method_cls(config_cls(sgd_lr=0.01)).optimizer_name() == "SGD (lr 0.01)"
    adamw = method_cls(config_cls(optimizer="adamw"))
    assert adamw.configure_optimizer(task, params) is None
    assert adamw.optimizer_name() == "AdamW (the runner's)"
    for options, message in (({"optimizer": "adam"}, "optimizer"), ({"sgd_lr": bad_lr}, "sgd_lr")):
        with pytest.raises(ValueError, match=message):
            config_cls(**options)


def check_run_trains_with_sgd(run_tiny: Any, name: str) -> None:
    """Every cell of the accuracy matrix is recorded on the synthetic stream, and the runner trains with the
    method's SGD: each step moves the weights by at most η·(schedule) (clipped gradient norm ≤ 1), which the
    runner's AdamW (`optimizer=adamw`) far exceeds."""
    _, records = run_tiny((name, f"{name}@adamw"), train_size=24, test_size=12,
                          method_options={f"{name}@adamw": {"optimizer": "adamw"}})
    rows = {(r["row"], r["eval_index"]) for r in records if r["type"] == "accuracy" and r["metric"] == "acc_cil"
            and r["method"] == name}
    assert rows == {(i, j) for i in range(4) for j in range(3)}
    steps = 3  # 24 examples at batch size 8, one epoch, no warm-up: schedule 1, 2/3, 1/3
    bound = 0.03 * sum(lr_schedule(t, steps, 0) for t in range(steps))

    def moved(method: str, row: int) -> float:  # ‖θ_after − θ_before‖ over the task
        return sum(r["norm_change"] ** 2 for r in records if r["type"] == "drift" and r["method"] == method
                   and r["row"] == row and r["metric"] == "frobenius_task" and r["param"] != "__overall__") ** 0.5

    assert all(0 < moved(name, row) <= bound * (1 + 1e-5) for row in (1, 2, 3))
    assert moved(f"{name}@adamw", 1) > 3 * bound

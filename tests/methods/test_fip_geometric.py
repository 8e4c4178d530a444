"""Geometric FIP: matrix-free metric products against an explicit Fisher, CG, the step, and a stream run."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from clbench.config import build_config
from clbench.data import EncodedSplit, TaskInfo
from clbench.methods.fip_geometric import FIPGeometric, FIPGeometricConfig, OutputMetric, conjugate_gradient
from clbench.models import build_model
from clbench.ops import flat_grad
from clbench.protocol import RunContext
from clbench.training.runner import train_step

TASKS = (TaskInfo(0, "a", ("x", "y", "z"), 0), TaskInfo(1, "b", ("u", "v"), 3))


def _ctx() -> RunContext:
    return RunContext(tasks=TASKS, num_labels=5, device=torch.device("cpu"), seed=0,
                      generator=torch.Generator().manual_seed(0), buffer_size=16, batch_size=4)


def _split(n: int, task: int, seed: int) -> EncodedSplit:
    g = torch.Generator().manual_seed(seed)
    return EncodedSplit(torch.randint(5, 60, (n, 10), generator=g), torch.randint(4, 10, (n,), generator=g),
                        torch.randint(0, 3, (n,), generator=g), torch.full((n,), task))


def test_metric_product_matches_explicit_fisher() -> None:
    model = build_model("tiny", 5, 0).eval()
    ctx = _ctx()
    batch = _split(6, 0, 1).batch(torch.arange(6))
    named = [(n, p) for n, p in model.named_parameters() if n.startswith("classifier")]  # 64·5 + 5 weights
    metric = OutputMetric(model, ctx, batch, named)
    params = [p for _, p in named]

    def logits(*values: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, dict(zip([n for n, _ in named], values)), (), batch.model_inputs())
        return out.logits  # [B, C]

    jacobians = torch.autograd.functional.jacobian(logits, tuple(p.detach() for p in params))
    jacobian = torch.cat([j.reshape(6, 5, -1) for j in jacobians], dim=-1)  # [B, C, P]
    p = metric.p
    h = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)  # [B, C, C]
    fisher = torch.einsum("bcp,bcd,bdq->pq", jacobian, h, jacobian) / 6  # [P, P]
    vector = torch.randn(fisher.shape[0], generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(metric(vector), fisher @ vector, rtol=1e-4, atol=1e-6)


def test_conjugate_gradient_solves_spd_system() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(conjugate_gradient(lambda v: a @ v, b, 6), torch.linalg.solve(a, b))
    first = conjugate_gradient(lambda v: a @ v, b, 1)  # one iteration: the steepest-descent step
    torch.testing.assert_close(first, (b @ b) / (b @ a @ b) * b)


def _on_second_task(**options: Any) -> tuple[FIPGeometric, nn.Module, list[tuple[str, nn.Parameter]], torch.Tensor]:
    """A tiny model after task 1 (its replay buffer filled), about to train task 2, and a random gradient."""
    model = build_model("tiny", 5, 0)
    method = FIPGeometric(FIPGeometricConfig(**options))
    method.setup(model, _ctx())
    method.after_task(TASKS[0], model, _split(20, 0, 1))
    method.before_task(TASKS[1], model)
    named = list(model.named_parameters())
    gradient = torch.randn(sum(p.numel() for _, p in named), generator=torch.Generator().manual_seed(4))
    return method, model, named, gradient


def test_direction_descends_and_changes_old_outputs_less_than_the_gradient() -> None:
    method, model, named, gradient = _on_second_task(damping=0.01, cg_iterations=8)
    state = method.context.generator.get_state()
    direction = method.direction(model, named, gradient)
    assert abs(float(direction.norm()) - 1) < 1e-5
    assert float(direction @ gradient) < 0
    method.context.generator.set_state(state)  # the same replay batch for the reference metric
    assert method.replay is not None
    index = torch.randperm(len(method.replay), generator=method.context.generator)[:4]
    metric = OutputMetric(model.eval(), method.context, method.replay.batch(index), named)
    unit = gradient / gradient.norm()
    assert float(direction @ metric(direction)) < 0.5 * float(unit @ metric(unit))


def test_runner_step_moves_the_weights_by_step_length_along_the_hooks_descent_direction() -> None:
    """The paper's fixed-length step, on the step the runner takes: SGD at ε along the unit direction δ that
    `after_backward` wrote, so ‖Δθ‖ = ε (clipping leaves a unit vector alone) and Δθ·∇L < 0."""
    model = build_model("tiny", 5, 0)
    method = FIPGeometric(FIPGeometricConfig(step_length=0.02, cg_iterations=3))
    method.setup(model, _ctx())
    method.after_task(TASKS[0], model, _split(20, 0, 1))
    method.before_task(TASKS[1], model)
    params = list(method.trainable_parameters(model))
    optimizer = method.configure_optimizer(TASKS[1], params)
    assert type(optimizer) is torch.optim.SGD
    seen: dict[str, torch.Tensor] = {}
    after_backward = method.after_backward

    def record(m: torch.nn.Module) -> None:
        seen["gradient"] = flat_grad(params).clone()  # ∇L of the new batch
        after_backward(m)
        seen["direction"] = -flat_grad(params)  # δ/‖δ‖

    method.after_backward = record  # type: ignore[method-assign]
    config = build_config({"methods": ["fip-geometric"], "model": "tiny", "stream": "synthetic"})
    before = torch.cat([p.detach().reshape(-1) for p in params])
    train_step(model, method, method.context, _split(4, 1, 5).batch(torch.arange(4)), params, optimizer, config)
    step = torch.cat([p.detach().reshape(-1) for p in params]) - before
    assert model.training
    assert float(seen["direction"].norm()) == pytest.approx(1.0, rel=1e-5)
    assert float(step.norm()) == pytest.approx(0.02, rel=1e-3)  # float32 rounding of θ + Δθ
    assert float(step @ seen["gradient"]) < 0
    assert float(step @ seen["direction"]) == pytest.approx(0.02, rel=1e-3)


def test_direction_is_the_eval_mode_networks_whatever_the_models_mode() -> None:
    """g is measured with dropout off: the same replay batch gives the same direction twice from a model in
    train mode, and the mode is restored."""
    method, model, named, gradient = _on_second_task(cg_iterations=3)
    state = method.context.generator.get_state()
    first = method.direction(model, named, gradient)
    assert model.training
    method.context.generator.set_state(state)
    torch.testing.assert_close(method.direction(model, named, gradient), first, rtol=0, atol=0)


def test_runs_on_stream(run_tiny) -> None:  # type: ignore[no-untyped-def]
    _, records = run_tiny(("fip-geometric",), method_options={"fip-geometric": {"cg_iterations": 2}})
    assert [r["value"] for r in records if r["type"] == "unit"] == ["done"]
    drift = [r["value"] for r in records if r["type"] == "drift" and r["param"] == "__overall__"
             and r["metric"] == "frobenius_task"]
    assert len(drift) == 3 and all(d > 0 for d in drift)  # the SGD steps of tasks 2 and 3 moved the weights

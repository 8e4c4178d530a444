"""GEM: the dual QP's solution satisfies the primal KKT conditions, the hook's projection, memory, a full run."""

from __future__ import annotations

import pytest
import torch
from projected_steps import (
    check_run_trains_with_sgd,
    check_sgd_by_default_and_adamw_on_request,
    sgd_step_through_runner,
)

from clbench.data import EncodedSplit, TaskInfo
from clbench.methods import RunContext
from clbench.methods.gem import GEM, GEMConfig, solve_dual_qp
from clbench.models import build_model
from clbench.ops import flat_grad

TASKS = (TaskInfo(0, "a", ("x", "y"), 0), TaskInfo(1, "b", ("x", "y"), 2), TaskInfo(2, "c", ("x", "y"), 4))


def split(task: TaskInfo, n: int, seed: int = 0, width: int = 8) -> EncodedSplit:
    g = torch.Generator().manual_seed(seed + 10 * task.index)
    lengths = torch.randint(3, width + 1, (n,), generator=g)
    ids = torch.randint(5, 60, (n, width), generator=g)
    ids[torch.arange(width).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    labels = task.label_offset + torch.randint(0, task.num_classes, (n,), generator=g)
    return EncodedSplit(ids, lengths, labels, torch.full((n,), task.index))


def context(buffer_size: int = 16) -> RunContext:
    return RunContext(tasks=TASKS, num_labels=6, device=torch.device("cpu"), seed=0,
                      generator=torch.Generator().manual_seed(1), buffer_size=buffer_size, batch_size=4)


def conflicting(seed: int, tasks: int = 3, dim: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(tasks, dim, generator=g, dtype=torch.float64)  # [tasks, dim]
    grad = -G[0] + 0.3 * torch.randn(dim, generator=g, dtype=torch.float64)  # conflicts with task 0
    return G, grad


@pytest.mark.parametrize("seed", range(4))
def test_projection_is_the_closest_vector_in_the_cone(seed: int) -> None:
    G, g = conflicting(seed)
    projected = solve_dual_qp(G, g, margin=0.0, ridge=1e-12)
    # KKT of min ½‖z − g‖² s.t. G z ≥ 0: z − g = Gᵀλ with λ ≥ 0, G z ≥ 0, λ_k (G z)_k = 0
    lam = torch.linalg.lstsq(G.T, projected - g).solution
    assert torch.allclose(G.T @ lam, projected - g, atol=1e-8)
    constraint = G @ projected
    assert bool((constraint >= -1e-8).all()) and bool((lam >= -1e-8).all())
    assert torch.allclose(lam * constraint, torch.zeros_like(lam), atol=1e-8)
    assert float(G[0] @ g) < 0  # the input really violated a constraint
    # and no feasible point in a random sample is closer to g
    z = torch.randn(2000, G.shape[1], generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    feasible = z[((z @ G.T) >= 0).all(1)]
    assert len(feasible) > 0
    assert float((feasible - g).norm(dim=1).min()) >= float((projected - g).norm())


def test_margin_bounds_the_dual_variables() -> None:
    G, g = conflicting(0)
    projected = solve_dual_qp(G, g, margin=0.5, ridge=1e-3)
    v = torch.linalg.lstsq(G.T, projected - g).solution
    assert bool((v >= 0.5 - 1e-6).all())


def filled(**options: object) -> tuple[GEM, torch.nn.Module]:
    gem = GEM(GEMConfig(**options))  # type: ignore[arg-type]
    model = gem.setup(build_model("tiny", 6, 0).eval(), context())  # no dropout: G recomputed below is the hook's
    for task in TASKS[:2]:
        gem.after_task(task, model, split(task, 12))
    return gem, model


def set_gradient(model: torch.nn.Module) -> None:
    model.zero_grad()
    batch = split(TASKS[2], 6, seed=5).batch(torch.arange(6))
    torch.nn.functional.cross_entropy(model(**batch.model_inputs()).logits, batch.labels).backward()


def test_hook_projection_is_non_negative_against_every_memory_gradient() -> None:
    gem, model = filled(margin=0.0, ridge=1e-9)
    set_gradient(model)
    params = [p for p in model.parameters() if p.requires_grad]
    g = flat_grad(params)
    G = gem.memory_grads(model, params)  # [tasks, params]
    # make sure the test exercises the projection: flip the gradient into the memory's way if needed
    if not bool((G @ g < 0).any()):
        for p in params:
            if p.grad is not None:
                p.grad.neg_()
        g = -g
    assert bool((G @ g < 0).any())
    gem.after_backward(model)
    projected = flat_grad(params).double()
    assert gem.projections == 1
    assert bool((G.double() @ projected >= -1e-6 * float(G.norm() * g.norm())).all())
    assert torch.allclose(projected, solve_dual_qp(G, g, 0.0, 1e-9), atol=1e-6)


def test_each_row_of_G_is_one_earlier_tasks_mean_memory_loss_gradient() -> None:
    gem, model = filled()
    params = [p for p in model.parameters() if p.requires_grad]
    G = gem.memory_grads(model, params)  # [tasks, params]
    assert G.shape[0] == 2
    for row, task in enumerate((0, 1)):
        memory = gem.memory.splits[task]
        batch = memory.batch(torch.arange(len(memory)))  # 8 examples, in two chunks of the batch size inside
        loss = torch.nn.functional.cross_entropy(model(**batch.model_inputs()).logits, batch.labels)
        expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
        torch.testing.assert_close(G[row], expected, rtol=1e-4, atol=1e-7)


def test_no_projection_without_conflict() -> None:
    gem, model = filled()
    set_gradient(model)
    params = [p for p in model.parameters() if p.requires_grad]
    G = gem.memory_grads(model, params)
    g = G.sum(0) / 2 + G.mean(0)  # a gradient agreeing with every memory
    from clbench.ops import assign_flat_grad

    assign_flat_grad(params, g)
    gem.after_backward(model)
    assert gem.projections == 0 and torch.equal(flat_grad(params), g)


def test_memory_splits_the_shared_budget_over_tasks_seen() -> None:
    gem, model = filled()
    assert [len(gem.memory.splits[t]) for t in (0, 1)] == [8, 8]
    gem.after_task(TASKS[2], model, split(TASKS[2], 12))
    assert [len(gem.memory.splits[t]) for t in (0, 1, 2)] == [6, 5, 5]
    assert all(bool((gem.memory.splits[t].task_ids == t).all()) for t in (0, 1, 2))


def test_plain_sgd_at_sgd_lr_by_default_and_the_runners_adamw_on_request() -> None:
    check_sgd_by_default_and_adamw_on_request(GEM, GEMConfig, TASKS[1], bad_lr=0.0)


def test_runner_step_with_sgd_increases_no_memory_loss_to_first_order() -> None:
    """The paper's guarantee, on the step the runner takes: Δθ = −η·c·g̃ (c: clipping), so G Δθ ≤ 0."""
    gem, model = filled(margin=0.0, ridge=1e-9)
    # new classes 4, 5: conflicts with the memory
    recorded = sgd_step_through_runner(gem, model, "memory_grads", TASKS[2], split(TASKS[2], 8, seed=5))
    assert gem.projections == 1
    step, G = recorded.step, recorded.probed
    assert bool((G @ step <= 1e-6 * float(G.norm(dim=1).max() * step.norm())).all())


def test_runs_through_the_synthetic_stream(run_tiny) -> None:  # type: ignore[no-untyped-def]
    check_run_trains_with_sgd(run_tiny, "gem")

"""A-GEM: the closed-form projection, the hook against a recomputed reference gradient, a full run."""

from __future__ import annotations

import torch
from projected_steps import (
    check_run_trains_with_sgd,
    check_sgd_by_default_and_adamw_on_request,
    sgd_step_through_runner,
)

from clbench.data import EncodedSplit, TaskInfo
from clbench.methods import RunContext
from clbench.methods.agem import AGEM, AGEMConfig, agem_project
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


def test_closed_form() -> None:
    g, ref = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 1.0, 1.0])
    projected = agem_project(g, ref)  # gᵀref = −1.5, refᵀref = 2: g + 0.75·ref
    assert torch.allclose(projected, torch.tensor([1.0, -1.25, 1.25]))
    assert abs(float(projected @ ref)) < 1e-7
    assert torch.equal(agem_project(-g, ref), -g)  # no conflict: unchanged


def test_hook_projects_against_a_memory_sample() -> None:
    ctx = RunContext(tasks=TASKS, num_labels=6, device=torch.device("cpu"), seed=0,
                     generator=torch.Generator().manual_seed(1), buffer_size=12, batch_size=4)
    agem = AGEM(AGEMConfig(sample_size=5))
    model = agem.setup(build_model("tiny", 6, 0).eval(), ctx)  # no dropout: the test recomputes g_ref
    for task in TASKS[:2]:
        agem.after_task(task, model, split(task, 10))
    assert len(agem.memory) == 12
    batch = split(TASKS[2], 6, seed=5).batch(torch.arange(6))
    torch.nn.functional.cross_entropy(model(**batch.model_inputs()).logits, batch.labels).backward()
    params = [p for p in model.parameters() if p.requires_grad]
    g = flat_grad(params)
    state = ctx.generator.get_state()
    ref = agem.reference_grad(model, params)
    if float(g @ ref) >= 0:  # make the step conflict with the memory so the projection is exercised
        for p in params:
            p.grad.neg_()
        g = -g
    ctx.generator.set_state(state)
    agem.after_backward(model)
    assert agem.projections == 1
    projected = flat_grad(params)
    assert torch.allclose(projected, g - (g @ ref) / (ref @ ref) * ref, atol=1e-6)
    assert abs(float(projected @ ref)) <= 1e-5 * float(g.norm() * ref.norm())


def filled(**options: object) -> tuple[AGEM, torch.nn.Module]:
    """A-GEM after two tasks of 10 examples each, memory budget 12, on the tiny model in eval mode."""
    ctx = RunContext(tasks=TASKS, num_labels=6, device=torch.device("cpu"), seed=0,
                     generator=torch.Generator().manual_seed(1), buffer_size=12, batch_size=4)
    agem = AGEM(AGEMConfig(**options))  # type: ignore[arg-type]
    model = agem.setup(build_model("tiny", 6, 0).eval(), ctx)
    for task in TASKS[:2]:
        agem.after_task(task, model, split(task, 10))
    return agem, model


def test_reference_gradient_is_the_mean_loss_gradient_over_256_memory_examples() -> None:
    """The authors' 256 examples: with 12 in memory, g_ref is the gradient of the mean loss over all of them,
    not over a batch of the run's batch size (4 here)."""
    assert AGEMConfig().sample_size == 256
    agem, model = filled()
    params = [p for p in model.parameters() if p.requires_grad]
    ref = agem.reference_grad(model, params)
    memory = agem.memory.all()
    batch = memory.batch(torch.arange(len(memory)))
    loss = torch.nn.functional.cross_entropy(model(**batch.model_inputs()).logits, batch.labels)
    expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
    torch.testing.assert_close(ref, expected, rtol=1e-4, atol=1e-7)


def test_plain_sgd_at_sgd_lr_by_default_and_the_runners_adamw_on_request() -> None:
    check_sgd_by_default_and_adamw_on_request(AGEM, AGEMConfig, TASKS[1], bad_lr=-1.0)


def test_runner_step_with_sgd_does_not_increase_the_memory_loss_to_first_order() -> None:
    """Eq. 11's guarantee on the step the runner takes: Δθ = −η·c·g̃ (c: clipping), so ⟨Δθ, g_ref⟩ = 0."""
    agem, model = filled()
    # new classes 4, 5: conflicts with the memory
    recorded = sgd_step_through_runner(agem, model, "reference_grad", TASKS[2], split(TASKS[2], 8, seed=5))
    assert agem.projections == 1
    step, ref = recorded.step, recorded.probed
    assert abs(float(step @ ref)) <= 1e-5 * float(step.norm() * ref.norm())


def test_runs_through_the_synthetic_stream(run_tiny) -> None:  # type: ignore[no-untyped-def]
    check_run_trains_with_sgd(run_tiny, "agem")

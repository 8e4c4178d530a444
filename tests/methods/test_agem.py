"""A-GEM: the closed-form projection, the hook against a recomputed reference gradient, a full run."""

from __future__ import annotations

import torch

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


def test_runs_through_the_synthetic_stream(run_tiny) -> None:  # type: ignore[no-untyped-def]
    _, records = run_tiny(("agem",), train_size=24, test_size=12)
    rows = {(r["row"], r["eval_index"]) for r in records if r["type"] == "accuracy" and r["metric"] == "acc_cil"}
    assert rows == {(i, j) for i in range(4) for j in range(3)}

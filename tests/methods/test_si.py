"""SI: the path integral on a hand-computed two-parameter case, the task-only gradient, the penalty, a full run."""

from __future__ import annotations

import pytest
import torch
from model_util import without_dropout
from torch import nn

from clbench.config import build_config
from clbench.data import EncodedSplit, TaskInfo
from clbench.methods import RunContext
from clbench.methods.si import SI, SIConfig
from clbench.models import build_model
from clbench.training.runner import train_step

TASK_A, TASK_B = TaskInfo(0, "a", ("x", "y"), 0), TaskInfo(1, "b", ("x", "y"), 2)


class TwoParameters(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))


def setup(**options: object) -> tuple[SI, TwoParameters]:
    si = SI(SIConfig(**options))  # type: ignore[arg-type]
    model = TwoParameters()
    ctx = RunContext(tasks=(TASK_A, TASK_B), num_labels=4, device=torch.device("cpu"), seed=0,
                     generator=torch.Generator().manual_seed(0), buffer_size=0, batch_size=1)
    si.setup(model, ctx)
    return si, model


def step(si: SI, model: TwoParameters, grad: list[float], new: list[float]) -> None:
    """One training step as the runner drives it: gradient ready, hook, parameter update, hook."""
    model.w.grad = torch.tensor(grad, dtype=torch.float64)
    si.after_backward(model)
    with torch.no_grad():
        model.w.copy_(torch.tensor(new, dtype=torch.float64))
    model.w.grad = None
    si.after_step(model)


def test_importance_matches_a_hand_computed_two_parameter_case() -> None:
    si, model = setup(damping=0.01, strength=3.0)
    si.before_task(TASK_A, model)
    step(si, model, [0.5, -1.0], [0.8, 2.3])
    step(si, model, [0.2, 0.4], [0.7, 2.1])
    si.after_task(TASK_A, model, None)  # type: ignore[arg-type]
    # ω_1 = −(0.5·−0.2 + 0.2·−0.1) = 0.12, Δ_1 = −0.3: Ω_1 = 0.12 / (0.09 + 0.01) = 1.2
    # ω_2 = −(−1·0.3 + 0.4·−0.2) = 0.38, Δ_2 = 0.1:  Ω_2 = 0.38 / (0.01 + 0.01) = 19
    assert torch.allclose(si.importance["w"], torch.tensor([1.2, 19.0], dtype=torch.float64))
    assert torch.equal(si.anchor["w"], torch.tensor([0.7, 2.1], dtype=torch.float64))

    with torch.no_grad():
        model.w.copy_(torch.tensor([1.0, 2.0], dtype=torch.float64))
    penalty = si.loss(model, None, None, torch.zeros((), dtype=torch.float64))  # type: ignore[arg-type]
    assert torch.allclose(penalty, torch.tensor(3.0 * (1.2 * 0.3**2 + 19.0 * 0.1**2), dtype=torch.float64))


@pytest.mark.parametrize("task_only", [True, False])
def test_second_task_path_integral_uses_the_task_gradient(task_only: bool) -> None:
    si, model = setup(damping=0.01, strength=2.0, task_gradient_only=task_only)
    si.before_task(TASK_A, model)
    step(si, model, [0.5, -1.0], [0.8, 2.3])
    si.after_task(TASK_A, model, None)  # type: ignore[arg-type]
    importance, anchor = si.importance["w"].clone(), si.anchor["w"].clone()

    si.before_task(TASK_B, model)
    with torch.no_grad():
        model.w.copy_(torch.tensor([0.9, 2.2], dtype=torch.float64))
    task_grad = torch.tensor([0.3, 0.1], dtype=torch.float64)
    loss = si.loss(model, None, None, (task_grad * model.w).sum())  # type: ignore[arg-type]
    loss.backward()  # the runner's backward: g = task gradient + penalty gradient
    total_grad = model.w.grad.clone()
    assert torch.allclose(total_grad, task_grad + 2 * 2.0 * importance * (model.w.detach() - anchor))
    si.after_backward(model)
    with torch.no_grad():
        model.w.copy_(torch.tensor([0.85, 2.25], dtype=torch.float64))
    si.after_step(model)
    used = task_grad if task_only else total_grad
    assert torch.allclose(si.omega["w"], -used * torch.tensor([-0.05, 0.05], dtype=torch.float64))


def test_runner_step_accumulates_omega_with_the_gradient_before_clipping() -> None:
    """ω += −g·Δθ on the runner's step, g taken before clipping: with SGD at η and clipping coefficient c,
    Δθ = −η·c·g, so ω = η·c·g² (with the clipped gradient it would be η·c²·g²)."""
    model = without_dropout(build_model("tiny", 4, 0))  # the test recomputes the step's gradient
    si = SI(SIConfig())
    si.setup(model, RunContext(tasks=(TASK_A, TASK_B), num_labels=4, device=torch.device("cpu"), seed=0,
                               generator=torch.Generator().manual_seed(0), buffer_size=0, batch_size=4))
    si.before_task(TASK_A, model)
    g = torch.Generator().manual_seed(1)
    batch = EncodedSplit(torch.randint(5, 60, (4, 6), generator=g), torch.full((4,), 6), torch.tensor([0, 1, 1, 0]),
                         torch.zeros(4, dtype=torch.long)).batch(torch.arange(4))
    params = list(model.parameters())
    loss = nn.functional.cross_entropy(model(**batch.model_inputs()).logits, batch.labels)
    grads = dict(zip([n for n, _ in model.named_parameters()], torch.autograd.grad(loss, params, allow_unused=True)))
    norm = float(torch.cat([v.reshape(-1) for v in grads.values() if v is not None]).norm())
    config = build_config({"methods": ["si"], "model": "tiny", "stream": "synthetic", "grad_clip": 0.05})
    clip = min(1.0, 0.05 / (norm + 1e-6))
    assert clip < 0.5  # clipping is active
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_step(model, si, si.context, batch, params, torch.optim.SGD(params, lr=0.1), config)
    for n, p in model.named_parameters():
        grad = grads[n] if grads[n] is not None else torch.zeros_like(p)
        expected = 0.1 * clip * grad**2
        rounding = grad.abs() * torch.finfo(p.dtype).eps * 2 * (before[n].abs() + p.detach().abs())  # θ in float32
        assert bool(((si.omega[n] - expected).abs() <= rounding + 1e-4 * expected).all()), n


@pytest.mark.parametrize("options", [{"damping": 0.0}, {"strength": -1.0}])
def test_config_validation(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        SIConfig(**options)  # type: ignore[arg-type]


def test_runs_through_the_synthetic_stream(run_tiny) -> None:  # type: ignore[no-untyped-def]
    _, records = run_tiny(("si",), train_size=24, test_size=12)
    rows = {(r["row"], r["eval_index"]) for r in records if r["type"] == "accuracy" and r["metric"] == "acc_cil"}
    assert rows == {(i, j) for i in range(4) for j in range(3)}

"""Parity with Avalanche 0.6's plugins on the same tiny BERT and data (to 1e-5).

Avalanche's plugins are driven hook by hook through a minimal stand-in for its strategy, on the packed-input
wrapper around the very same model object clbench's methods see, so both read and write the same parameters.

Documented differences, accounted for below:
- EWC: Avalanche's Fisher is our `batched` estimator (squared mean-loss gradients of mini-batches in dataset
  order, averaged over batches) and its penalty is λ·Σ F(θ − θ*)², without the 1/2 of Eq. 3: our
  penalty_weight is twice its ewc_lambda.
- SI: Avalanche accumulates ω with the full gradient (our `task_gradient_only=false`) and clips Ω at 0.001
  (hard-coded `clip_to`, from the CORe50 Caffe code); we compare min(Ω, 0.001).
  On CPU, Avalanche's `extract_weights` stores `param.detach().cpu().flatten()`, which for a CPU parameter
  is a view of the live weights, so its "old" and "new" θ alias and every importance is 0 (a bug of 0.6 on
  CPU; `.cpu()` copies on CUDA). The test patches in a copying `extract_weights` and pins the bug separately.
- GEM: same dual QP, margin on the dual variables and ridge 1e-3 as the authors' code; Avalanche computes
  memory gradients before the forward pass of the step, we compute them after backward at the same weights.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from clbench.data import EncodedSplit, TaskInfo
from clbench.methods import RunContext
from clbench.methods.ewc import EWC, EWCConfig
from clbench.methods.gem import GEM, GEMConfig
from clbench.methods.si import SI, SIConfig
from clbench.models import build_model
from clbench.ops import flat_grad

pytest.importorskip("avalanche")

from avalanche.training.plugins import EWCPlugin, GEMPlugin, SynapticIntelligencePlugin
from model_util import without_dropout

from clbench.interop.avalanche import PackedSequenceClassifier, pack

TASKS = (TaskInfo(0, "a", ("x", "y"), 0), TaskInfo(1, "b", ("x", "y"), 2), TaskInfo(2, "c", ("x", "y"), 4))
BATCH = 4
PREFIX = "model."  # the wrapper's attribute holding the HF model


def split(task: TaskInfo, n: int, seed: int = 0, width: int = 8) -> EncodedSplit:
    """Random right-padded examples, sorted by length so clbench's length-sorted plan keeps dataset order."""
    g = torch.Generator().manual_seed(seed + 10 * task.index)
    lengths = torch.randint(3, width + 1, (n,), generator=g).sort().values
    ids = torch.randint(5, 60, (n, width), generator=g)
    ids[torch.arange(width).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    labels = task.label_offset + torch.randint(0, task.num_classes, (n,), generator=g)
    return EncodedSplit(ids, lengths, labels, torch.full((n,), task.index))


def context() -> RunContext:
    return RunContext(tasks=TASKS, num_labels=6, device=torch.device("cpu"), seed=0,
                      generator=torch.Generator().manual_seed(1), buffer_size=16, batch_size=BATCH)


def strategy(wrapper: torch.nn.Module, exp: int, data: EncodedSplit | None = None) -> Any:
    """The attributes of Avalanche's SupervisedTemplate that the three plugins read."""
    dataset = None if data is None else torch.utils.data.TensorDataset(pack(data), data.labels, data.task_ids)
    return SimpleNamespace(model=wrapper, clock=SimpleNamespace(train_exp_counter=exp), device="cpu",
                           _criterion=torch.nn.CrossEntropyLoss(), train_mb_size=BATCH,
                           optimizer=torch.optim.SGD(wrapper.parameters(), lr=0.0),
                           experience=SimpleNamespace(dataset=dataset), loss=torch.zeros(()))


def nudge(model: torch.nn.Module, seed: int, scale: float = 0.02) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("online", [False, True])
def test_ewc_importances_and_penalty(online: bool) -> None:
    model = build_model("tiny", 6, 0)
    wrapper = PackedSequenceClassifier(model)
    ours = EWC(EWCConfig(estimator="batched", penalty_weight=2 * 3.0, online=online,
                         gamma=0.7 if online else 1.0))
    ours.setup(model, context())
    theirs = EWCPlugin(ewc_lambda=3.0, mode="online" if online else "separate",
                       decay_factor=0.7 if online else None)
    for task in TASKS[:2]:
        data = split(task, 10)  # 10 = two full batches and a partial one, as Avalanche's loader cuts them
        theirs.after_training_exp(strategy(wrapper, task.index, data))
        ours.after_task(task, model, data)
        nudge(model, task.index)
    for n, fisher in ours.fishers[-1].items():  # separate: task 2's Fisher; online: γ·F_1 + F_2
        assert torch.allclose(fisher, theirs.importances[1][PREFIX + n].data, rtol=1e-5, atol=1e-8), n
    if not online:
        for n, fisher in ours.fishers[0].items():
            assert torch.allclose(fisher, theirs.importances[0][PREFIX + n].data, rtol=1e-5, atol=1e-8), n
    s = strategy(wrapper, 2)
    theirs.before_backward(s)
    penalty = ours.loss(model, None, None, torch.zeros(()))  # type: ignore[arg-type]
    assert float(s.loss.detach()) > 0
    assert torch.allclose(penalty, s.loss, rtol=1e-5, atol=1e-10)


def _copying_extract_weights(model: torch.nn.Module, target: Any, excluded_parameters: Any) -> None:
    """Avalanche's `extract_weights` with a copy, so snapshots do not alias CPU parameters."""
    for name, param in SynapticIntelligencePlugin.allowed_parameters(model, excluded_parameters):
        target[name].data = param.detach().cpu().flatten().clone()


def run_si(steps_per_task: int = 3) -> tuple[SI, SynapticIntelligencePlugin]:
    """Train the tiny BERT on two tasks with SGD; ours and Avalanche's SI watch the same trajectory."""
    model = build_model("tiny", 6, 0)
    wrapper = PackedSequenceClassifier(model)
    ours = SI(SIConfig(strength=0.5, damping=0.1, task_gradient_only=False))
    ours.setup(model, context())
    theirs = SynapticIntelligencePlugin(si_lambda=1.0, eps=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for task in TASKS[:2]:
        s = strategy(wrapper, task.index)
        theirs.before_training_exp(s)
        ours.before_task(task, model)
        data = split(task, steps_per_task * BATCH)
        for index in torch.arange(steps_per_task * BATCH).split(BATCH):
            batch = data.batch(index)
            theirs.before_training_iteration(s)
            task_loss = torch.nn.functional.cross_entropy(model(**batch.model_inputs()).logits, batch.labels)
            ours.loss(model, batch, None, task_loss).backward()  # one loss drives both: ours (Eq. 4)
            ours.after_backward(model)
            optimizer.step()
            ours.after_step(model)
            theirs.after_training_iteration(s)
            optimizer.zero_grad()
        ours.after_task(task, model, data)
        theirs.after_training_exp(s)
    return ours, theirs


@pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")  # avalanche + numpy 2
def test_si_importances(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SynapticIntelligencePlugin, "extract_weights", staticmethod(_copying_extract_weights))
    ours, theirs = run_si()
    below = 0
    for n, omega in ours.importance.items():
        reference = theirs.ewc_data[1][PREFIX + n].data.view_as(omega)
        assert torch.allclose(omega.clamp(max=0.001), reference, rtol=1e-5, atol=1e-9), n
        assert torch.equal(ours.anchor[n].flatten(), theirs.ewc_data[0][PREFIX + n].data)
        below += int((omega < 0.001).sum())
    assert below > 0.5 * sum(o.numel() for o in ours.importance.values())  # the clip leaves most untouched


@pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")
def test_avalanche_si_importances_vanish_on_cpu_because_snapshots_alias_parameters() -> None:
    ours, theirs = run_si()
    assert any(bool((o != 0).any()) for o in ours.importance.values())
    assert all(bool((theirs.ewc_data[1][PREFIX + n].data == 0).all()) for n in ours.importance)


def test_gem_memory_gradients_and_projection() -> None:
    model = without_dropout(build_model("tiny", 6, 0))  # Avalanche's hook puts the model in train mode
    wrapper = PackedSequenceClassifier(model)
    ours = GEM(GEMConfig(margin=0.5, ridge=1e-3))
    ours.setup(model, context())
    theirs = GEMPlugin(patterns_per_experience=6, memory_strength=0.5)
    for task in TASKS[:2]:
        memory = split(task, 6, seed=3)
        ours.memory.splits[task.index] = memory
        theirs.memory_x[task.index] = pack(memory)
        theirs.memory_y[task.index] = memory.labels
        theirs.memory_tid[task.index] = memory.task_ids
    s = strategy(wrapper, 2)
    theirs.before_training_iteration(s)  # computes G on the memory
    params = list(model.parameters())
    G = ours.memory_grads(model, params)
    assert torch.allclose(G, theirs.G, rtol=1e-5, atol=1e-7)

    model.zero_grad()
    batch = split(TASKS[2], 8, seed=4).batch(torch.arange(8))
    torch.nn.functional.cross_entropy(model(**batch.model_inputs()).logits, batch.labels).backward()
    g = flat_grad(params)
    if not bool((G @ g < 0).any()):
        for p in params:
            p.grad.neg_()
        g = -g
    theirs.after_backward(s)
    reference = flat_grad(params)
    for p, chunk in zip(params, g.split([p.numel() for p in params])):
        p.grad.copy_(chunk.view_as(p))
    ours.after_backward(model)
    assert ours.projections == 1
    assert not torch.allclose(reference, g)
    assert torch.allclose(flat_grad(params), reference, rtol=1e-5, atol=1e-7)

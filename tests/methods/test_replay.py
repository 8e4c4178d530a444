"""Experience replay: the memory stays within the shared budget, its policies, and the replay term."""

from __future__ import annotations

import pytest
import torch
from model_util import without_dropout

from clbench.config import build_config
from clbench.data import EncodedSplit, TaskInfo
from clbench.episodic import Reservoir
from clbench.methods import RunContext
from clbench.methods.replay import Replay, ReplayConfig
from clbench.models import build_model
from clbench.training.runner import train_step

TASKS = (TaskInfo(0, "a", ("x", "y"), 0), TaskInfo(1, "b", ("x", "y"), 2), TaskInfo(2, "c", ("x", "y"), 4))


def split(task: TaskInfo, n: int, seed: int = 0, width: int = 6) -> EncodedSplit:
    g = torch.Generator().manual_seed(seed + task.index)
    ids = torch.randint(5, 60, (n, width), generator=g)  # [n, width]
    lengths = torch.randint(2, width + 1, (n,), generator=g)
    labels = task.label_offset + torch.randint(0, task.num_classes, (n,), generator=g)
    return EncodedSplit(ids, lengths, labels, torch.full((n,), task.index))


def context(buffer_size: int = 16, batch_size: int = 4) -> RunContext:
    return RunContext(tasks=TASKS, num_labels=6, device=torch.device("cpu"), seed=0,
                      generator=torch.Generator().manual_seed(1), buffer_size=buffer_size, batch_size=batch_size)


def fill(method: Replay, sizes: tuple[int, ...]) -> None:
    model = method.setup(build_model("tiny", 6, 0), context())
    for task, n in zip(TASKS, sizes):
        method.after_task(task, model, split(task, n))


@pytest.mark.parametrize("policy", ["reservoir", "balanced"])
def test_memory_respects_the_shared_budget(policy: str) -> None:
    method = Replay(ReplayConfig(policy=policy))
    fill(method, (40, 7, 40))
    stored = method.stored()
    assert stored is not None and len(stored) == 16


def test_memory_holds_everything_while_under_budget() -> None:
    method = Replay(ReplayConfig(policy="reservoir"))
    fill(method, (5, 6))
    stored = method.stored()
    assert stored is not None and len(stored) == 11


def test_balanced_policy_gives_each_task_an_equal_share() -> None:
    method = Replay(ReplayConfig(policy="balanced"))
    fill(method, (40, 40, 40))
    stored = method.stored()
    assert stored is not None
    assert torch.bincount(stored.task_ids, minlength=3).tolist() == [6, 5, 5]


def test_reservoir_keeps_each_example_with_probability_budget_over_seen() -> None:
    counts = torch.zeros(60)
    data = EncodedSplit(torch.arange(60).unsqueeze(1), torch.ones(60, dtype=torch.long), torch.arange(60),
                        torch.zeros(60, dtype=torch.long))
    for seed in range(400):
        reservoir = Reservoir(6)
        g = torch.Generator().manual_seed(seed)
        for lo, hi in ((0, 4), (4, 25), (25, 60)):  # three "tasks" of different sizes
            reservoir.add(data.subset(torch.arange(lo, hi)), g)
        assert reservoir.memory is not None and len(reservoir.memory.labels.unique()) == 6
        counts[reservoir.memory.labels] += 1
    # each example kept with probability 6/60; per block of 20 examples the expected count is 400 * 2 = 800
    assert torch.allclose(counts.view(3, 20).sum(1), torch.full((3,), 800.0), rtol=0.1)


def test_replay_term_is_added_once_memory_exists() -> None:
    method = Replay(ReplayConfig())
    model = method.setup(build_model("tiny", 6, 0), context())
    batch = split(TASKS[1], 4).batch(torch.arange(4))
    outputs = model(**batch.model_inputs())
    task_loss = torch.nn.functional.cross_entropy(outputs.logits, batch.labels)
    assert method.loss(model, batch, outputs, task_loss) is task_loss  # task 1: plain fine-tuning
    method.after_task(TASKS[0], model, split(TASKS[0], 10))
    total = method.loss(model, batch, outputs, task_loss)
    assert total.item() > task_loss.item()
    total.backward()
    assert any(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("fused", [False, True])
def test_runner_loss_is_task_ce_plus_weight_times_ce_on_the_memory_with_its_own_labels(fused: bool) -> None:
    """loss = CE(new batch) + w·CE(memory batch, memory labels), on the runner's step, both forward modes.

    The memory holds 4 examples of task 1 (classes 0, 1) and the replay batch is all of it, so the expected
    value does not depend on the draw; the new batch (classes 2, 3) has as many rows, so the new batch's labels
    would fit the replay logits too.
    """
    method = Replay(ReplayConfig(replay_weight=0.37, fused_forward=fused))
    model = without_dropout(method.setup(build_model("tiny", 6, 0), context(batch_size=4)))
    memory = split(TASKS[0], 4, width=5)
    method.after_task(TASKS[0], model, memory)
    new = split(TASKS[1], 4, seed=3).batch(torch.arange(4))
    with torch.no_grad():
        # predictions far from uniform, so which labels the memory term uses changes its value
        model.classifier.bias.copy_(torch.tensor([2.0, -1.0, 0.5, -2.0, 0.0, 1.0]))
        old = memory.batch(torch.arange(4))
        ce = torch.nn.functional.cross_entropy
        expected = (ce(model(**new.model_inputs()).logits, new.labels)
                    + 0.37 * ce(model(**old.model_inputs()).logits, old.labels))
    config = build_config({"methods": ["replay"], "model": "tiny", "stream": "synthetic"})
    params = list(model.parameters())
    value = train_step(model, method, method.context, new, params, torch.optim.SGD(params, lr=0.0), config)
    assert value == pytest.approx(float(expected), rel=1e-5)


def test_state_dict_round_trip() -> None:
    method = Replay(ReplayConfig())
    fill(method, (30, 30))
    other = Replay(ReplayConfig())
    other.setup(build_model("tiny", 6, 0), context())
    other.load_state_dict(method.state_dict())
    a, b = method.stored(), other.stored()
    assert a is not None and b is not None and torch.equal(a.ids, b.ids) and torch.equal(a.labels, b.labels)


def test_unknown_policy_is_rejected() -> None:
    with pytest.raises(ValueError, match="policy"):
        ReplayConfig(policy="fifo")

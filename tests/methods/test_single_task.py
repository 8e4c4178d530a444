"""Single-task reference: every task after the first starts from the weights `setup` saw, head included."""

from __future__ import annotations

import torch

from clbench.data import TaskInfo
from clbench.methods import RunContext
from clbench.methods.single_task import SingleTask
from clbench.models import build_model

TASKS = (TaskInfo(0, "a", ("x", "y", "z"), 0), TaskInfo(1, "b", ("x", "y"), 3), TaskInfo(2, "c", ("x",), 5))


def test_each_later_task_starts_from_the_weights_setup_saw() -> None:
    ctx = RunContext(tasks=TASKS, num_labels=6, device=torch.device("cpu"), seed=0,
                     generator=torch.Generator().manual_seed(0), buffer_size=0, batch_size=4)
    method = SingleTask()
    model = method.setup(build_model("tiny", 6, 0), ctx)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for task in TASKS:
        method.before_task(task, model)  # from task 2 on: the previous task's training is undone, head included
        assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items()), task.name
        with torch.no_grad():  # "train" the task: every weight moves in place
            for param in model.parameters():
                param.add_(0.1)
    method.before_task(TASKS[0], model)  # the first task never resets (it may be shared with naive)
    assert not torch.equal(model.classifier.weight, start["classifier.weight"])

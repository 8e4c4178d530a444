"""Joint (multitask) training: the upper bound that may see every earlier task's training data again.

Caruana, "Multitask Learning", Machine Learning 28 (1997); used as the upper bound of continual-learning
comparisons, e.g. Lopez-Paz & Ranzato 2017 ("iid") and Avalanche's `Cumulative` strategy. While training task
t it trains on the union of the training splits of tasks 1..t (continuing from the current model), so nothing
is forgotten for lack of data; any forgetting left is the model's and the budget's. It stores all past data,
so it sits outside the shared `buffer_size` budget and is not a continual-learning method itself.

Budget: an epoch of task t covers every example of tasks 1..t, so under `epochs` joint takes more optimiser
steps on later tasks than every other method (e.g. with equal task sizes, t times as many on task t); under
`max_steps` it takes the same number of steps but sees each example less often. The runner's `steps` and
`examples` profile records per task show what it took; compare it with that in mind.

Hooks: `train_data` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from clbench.data import EncodedSplit, TaskInfo
from clbench.methods import Hooks, MethodConfig


@dataclass(frozen=True)
class JointConfig(MethodConfig):
    """Joint training has no hyperparameters of its own."""


class Joint(Hooks):
    """Multitask upper bound: trains each task on the union of all tasks' training data seen so far."""

    name: ClassVar[str] = "joint"
    config_cls: ClassVar[type[MethodConfig]] = JointConfig
    first_task_is_finetuning = True  # task 1 is plain fine-tuning: the runner may share it
    role: ClassVar[str] = "upper-bound"
    citation: ClassVar[str] = "Caruana 1997 (multitask upper bound; Lopez-Paz & Ranzato 2017 'iid')"

    def train_data(self, task: TaskInfo, data: EncodedSplit, previous: Sequence[EncodedSplit]) -> EncodedSplit:
        """Earlier tasks' training splits followed by this task's, as one split."""
        return EncodedSplit.concat([*previous, data]) if previous else data

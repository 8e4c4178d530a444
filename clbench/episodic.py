"""Episodic memory shared by the gradient-projection methods (GEM, A-GEM): per-task samples within one budget.

Every method that keeps old examples draws on the run's single `buffer_size` (docs/protocol.md, fair comparison).
`TaskMemory` splits that budget evenly over the tasks seen so far: after task t each of the t tasks keeps
⌊budget / t⌋ examples (the remainder goes to the earliest tasks). Examples are chosen uniformly at random
with the method's generator when a task ends, and a task's share only ever shrinks by dropping the tail of
that random order, so the kept examples stay a uniform sample. `Reservoir` instead keeps a uniform sample of
the whole stream of examples, whatever the task boundaries (replay's `reservoir` policy).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from clbench.data import AnySplit, BatchPlan, EncodedSplit
from clbench.data.pairs import PairSplit
from clbench.protocol import RunContext


def concat_splits(splits: Sequence[AnySplit]) -> AnySplit:
    """The rows of `splits` in order, as one split of their (common) type."""
    return type(splits[0]).concat(splits)  # type: ignore[arg-type]


def split_state(split: AnySplit, prefix: str) -> dict[str, Any]:
    """A split's tensors and pad id under keys `prefix.<field>`, plus its kind, for a method's state dict."""
    out: dict[str, Any] = {f"{prefix}.kind": "pairs" if isinstance(split, PairSplit) else "examples",
                           f"{prefix}.pad_id": split.pad_id}
    for name, value in vars(split).items():
        if isinstance(value, Tensor) and name != "reference":  # a reference belongs to one task's start
            out[f"{prefix}.{name}"] = value
    return out


def split_from_state(state: dict[str, Any], prefix: str) -> AnySplit:
    """The split `split_state(split, prefix)` saved, on the CPU (checkpoints may be loaded to a GPU)."""
    cls = PairSplit if state.get(f"{prefix}.kind") == "pairs" else EncodedSplit
    names = [f.name for f in dataclasses.fields(cls) if f.name not in ("pad_id", "reference")]
    tensors: dict[str, Any] = {name: state[f"{prefix}.{name}"].cpu() for name in names}
    return cls(**tensors, pad_id=int(state[f"{prefix}.pad_id"]))


def per_task_quota(budget: int, num_tasks: int) -> list[int]:
    """Examples each of `num_tasks` tasks may keep: an even split of `budget`, remainder to the earliest tasks."""
    if num_tasks <= 0:
        return []
    base, extra = divmod(budget, num_tasks)
    return [base + (1 if t < extra else 0) for t in range(num_tasks)]


class TaskMemory:
    """Per-task episodic memory holding at most `budget` examples in total."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.splits: dict[int, AnySplit] = {}  # task index -> kept examples, in random order

    def __len__(self) -> int:
        return sum(len(s) for s in self.splits.values())

    @property
    def task_indices(self) -> list[int]:
        return sorted(self.splits)

    def add(self, task_index: int, data: AnySplit, generator: torch.Generator) -> None:
        """Keep a uniform random sample of `data` for `task_index` and shrink earlier tasks to the new quota."""
        order = torch.randperm(len(data), generator=generator)
        self.splits[task_index] = data.subset(order)
        for t, quota in zip(self.task_indices, per_task_quota(self.budget, len(self.splits))):
            self.splits[t] = self.splits[t].subset(torch.arange(min(quota, len(self.splits[t]))))

    def sample(self, n: int, generator: torch.Generator) -> AnySplit:
        """`n` examples drawn uniformly without replacement from the whole memory (all of it if smaller)."""
        pool = self.all()
        index = torch.randperm(len(pool), generator=generator)[:n]
        return pool.subset(index)

    def all(self) -> AnySplit:
        """Every stored example, tasks in stream order."""
        return concat_splits([self.splits[t] for t in self.task_indices])

    def state_dict(self, prefix: str = "") -> dict[str, Any]:
        """Tensors and plain values of the memory, keys prefixed with `prefix` (for a method's `state_dict`)."""
        out: dict[str, Any] = {"budget": self.budget, "tasks": self.task_indices}
        for t, s in self.splits.items():
            out.update(split_state(s, str(t)))
        return {prefix + k: v for k, v in out.items()}

    def load_state_dict(self, state: dict[str, Any], prefix: str = "") -> None:
        """Restore what `state_dict(prefix)` returned; keys without the prefix are ignored."""
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        self.budget = int(state["budget"])
        # memory lives on the CPU like the training data, whatever device a checkpoint was loaded to
        self.splits = {int(t): split_from_state(state, str(t)) for t in state["tasks"]}


def memory_gradient(model: nn.Module, ctx: RunContext, split: EncodedSplit, params: Sequence[nn.Parameter],
                    batch_size: int) -> Tensor:
    """Flat gradient of the mean cross-entropy over all of `split` w.r.t. `params` (zeros where unused).

    Forward passes run in chunks of `batch_size` (weighted by chunk size, so the result equals one pass over
    the whole split) under the head policy of `ctx`. Gradients come from `torch.autograd.grad`, so the
    parameters' `.grad` fields, which hold the current step's gradient, are left untouched.
    """
    total: Tensor | None = None
    n = len(split)
    for index in BatchPlan(split, batch_size, shuffle=False).indices():
        batch = split.batch(index).to(ctx.device)
        logits = ctx.loss_logits(model(**batch.model_inputs()).logits, batch.task_ids)  # [batch, num_labels]
        loss = nn.functional.cross_entropy(logits.float(), batch.labels, reduction="sum") / n
        grads = torch.autograd.grad(loss, list(params), allow_unused=True)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                          for g, p in zip(grads, params)])
        total = flat if total is None else total + flat
    if total is None:
        return torch.cat([torch.zeros_like(p).reshape(-1) for p in params])
    return total


class Reservoir:
    """Reservoir sampling (Vitter 1985, "Random sampling with a reservoir", Algorithm R) within `budget`.

    Used for experience replay by Chaudhry et al. 2019 and Rolnick et al. 2019: after n examples have been
    offered, each of them is in memory with probability budget / n, whatever the task boundaries. Offering a
    split of m examples is the same as offering them one at a time: the example at stream position s (0-based)
    takes a free slot while there is one, else replaces slot j ~ U{0..s} when j < budget.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.seen = 0  # examples offered so far
        self.memory: AnySplit | None = None

    def __len__(self) -> int:
        return 0 if self.memory is None else len(self.memory)

    def add(self, data: AnySplit, generator: torch.Generator) -> None:
        """Offer every example of `data` to the reservoir, in order (vectorised Algorithm R)."""
        m, held = len(data), len(self)
        if m == 0 or self.budget <= 0:
            self.seen += m
            return
        order = torch.arange(m)
        position = self.seen + order  # [m] stream position of each example
        draw = (torch.rand(m, generator=generator, dtype=torch.float64) * (position + 1)).long()  # [m] j ~ U{0..s}
        slot = torch.where(order < self.budget - held, held + order, draw)  # free slots are filled first, in order
        accepted = slot < self.budget
        owner = torch.full((self.budget,), -1, dtype=torch.long)
        owner.scatter_reduce_(0, slot[accepted], order[accepted], reduce="amax")  # the latest writer of a slot wins
        size = min(self.budget, held + m)
        owner = owner[:size]
        source = torch.arange(size)  # rows of concat(memory, data)
        source[owner >= 0] = held + owner[owner >= 0]
        pool = data if self.memory is None else concat_splits([self.memory, data])
        self.memory = pool.subset(source)
        self.seen += m

    def sample(self, n: int, generator: torch.Generator) -> AnySplit:
        """`n` stored examples drawn uniformly without replacement (all of them if fewer are stored)."""
        if self.memory is None:
            raise ValueError("the reservoir is empty")
        return self.memory.subset(torch.randperm(len(self.memory), generator=generator)[:n])

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"budget": self.budget, "seen": self.seen}
        if self.memory is not None:
            out.update(split_state(self.memory, "memory"))
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.budget, self.seen = int(state["budget"]), int(state["seen"])
        self.memory = None
        if "memory.pad_id" in state:
            self.memory = split_from_state(state, "memory")

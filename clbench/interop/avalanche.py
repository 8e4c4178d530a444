"""Run Avalanche 0.6 strategies on clbench streams: tensor-batch benchmarks and a packed-input model wrapper.

Avalanche strategies expect each sample as a tuple `(x, y, t)` with one input tensor `x`; its EWC importance
loop indexes `batch[0]` and fails on dict batches. So `x` packs a tokenised example's input ids and attention
mask into one `[2, seq]` tensor (a batch is `[batch, 2, seq]`), `y` is the global label in the shared head
and `t` the task index. `PackedSequenceClassifier` wraps a Hugging Face sequence-classification model: it
unpacks `x`, trims the batch to its longest example and returns the logits tensor Avalanche's criterion
wants.

Avalanche is an optional extra (`pip install 'clbench[avalanche]'`); it is imported only inside the functions
that need it.

Example::

    splits = encode_stream(stream, tokenizer, fingerprint)     # [TaskSplits(train, val, test) per task]
    benchmark = avalanche_benchmark([(s.train, s.test) for s in splits])
    model = PackedSequenceClassifier(hf_model)
    strategy = Naive(model=model, optimizer=..., criterion=torch.nn.CrossEntropyLoss(), train_mb_size=16)
    for experience in benchmark.train_stream:
        strategy.train(experience)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from clbench.data import EncodedSplit
from clbench.errors import ClbenchError

INSTALL_HINT = "install the extra: pip install 'clbench[avalanche]'"


def pack(split: EncodedSplit, width: int | None = None) -> Tensor:
    """Input ids and attention mask of every example as one tensor `[n, 2, width]` (ids, then mask)."""
    width = split.ids.shape[1] if width is None else width
    ids = torch.full((len(split), width), split.pad_id, dtype=torch.long)
    keep = min(width, split.ids.shape[1])
    ids[:, :keep] = split.ids[:, :keep]
    mask = (torch.arange(width).unsqueeze(0) < split.lengths.unsqueeze(1)).long()  # [n, width]
    return torch.stack([ids, mask], dim=1)  # [n, 2, width]


def unpack(x: Tensor) -> tuple[Tensor, Tensor]:
    """`[batch, 2, seq]` -> (input_ids, attention_mask), both trimmed to the batch's longest example."""
    mask = x[:, 1]  # [batch, seq]
    width = max(int(mask.sum(dim=1).max()), 1) if x.shape[0] else 1
    return x[:, 0, :width], mask[:, :width]


class PackedSequenceClassifier(nn.Module):
    """Wraps a Hugging Face `...ForSequenceClassification` model to take packed `x` and return logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        input_ids, attention_mask = unpack(x)
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # type: ignore[no-any-return]


def _require_avalanche() -> Any:
    try:
        import avalanche.benchmarks.scenarios.dataset_scenario as scenario
        from avalanche.benchmarks import utils
    except ImportError as exc:
        raise ClbenchError(f"the Avalanche adapter needs avalanche-lib ({exc.name} is missing); "
                           f"{INSTALL_HINT}") from None
    return scenario, utils


def avalanche_dataset(split: EncodedSplit, width: int | None = None) -> Any:
    """One split as an Avalanche classification dataset yielding `(x, y, t)` with packed `x`."""
    _, utils = _require_avalanche()
    x = pack(split, width)
    targets = split.labels.tolist()
    tasks = split.task_ids.tolist()
    return utils.TaskAwareSupervisedClassificationDataset(
        [torch.utils.data.TensorDataset(x, split.labels)],
        data_attributes=[utils.DataAttribute(targets, "targets"),
                         utils.DataAttribute(tasks, "targets_task_labels", use_in_getitem=True)])


def avalanche_benchmark(pairs: Sequence[tuple[EncodedSplit, EncodedSplit]]) -> Any:
    """(train, test) EncodedSplits per task -> an Avalanche `CLScenario` with train and test streams.

    Every split is padded to one common width so that replay buffers mixing tasks still collate.

    Raises:
        ClbenchError: avalanche-lib is not installed, or `pairs` is empty.
    """
    if not pairs:
        raise ClbenchError("avalanche_benchmark got no tasks; pass encode_stream(...)'s (train, test) pairs")
    scenario, _ = _require_avalanche()
    width = max(split.ids.shape[1] for pair in pairs for split in pair)
    train = [avalanche_dataset(tr, width) for tr, _ in pairs]
    test = [avalanche_dataset(te, width) for _, te in pairs]
    return scenario.benchmark_from_datasets(train=train, test=test)

"""Batching with dynamic padding, length bucketing and seeded order; tokenisation and its cache."""

from __future__ import annotations

import torch

from clbench.data import BatchPlan, EncodedSplit
from clbench.data.streams import load_stream
from clbench.data.tokenize import encode_stream, truncate
from clbench.models import load_tokenizer, tokenizer_fingerprint


def make_split(lengths: list[int]) -> EncodedSplit:
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.arange(1, n + 1)
    labels = torch.arange(len(lengths)) % 3
    return EncodedSplit(ids, torch.tensor(lengths), labels, torch.zeros(len(lengths), dtype=torch.long))


def test_batch_trims_padding_to_longest_member() -> None:
    split = make_split([3, 9, 5, 2])
    batch = split.batch(torch.tensor([0, 2]))
    assert batch.input_ids.shape == (2, 5)
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch.num_tokens == 8


def test_training_plan_covers_every_example_once_and_is_seeded() -> None:
    split = make_split([(i * 7) % 23 + 1 for i in range(101)])
    plans = [BatchPlan(split, 8, shuffle=True, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    first, second = (torch.cat(p.indices()) for p in plans)
    assert sorted(first.tolist()) == list(range(101))
    assert torch.equal(first, second)
    other = torch.cat(BatchPlan(split, 8, shuffle=True, generator=torch.Generator().manual_seed(4)).indices())
    assert not torch.equal(first, other)


def test_length_bucketing_reduces_padding() -> None:
    lengths = [(i * 37) % 61 + 2 for i in range(400)]
    split = make_split(lengths)
    plan = BatchPlan(split, 16, shuffle=True, generator=torch.Generator().manual_seed(0))
    padded = sum(len(i) * int(split.lengths[i].max()) for i in plan.indices())
    random_batches = torch.split(torch.randperm(400, generator=torch.Generator().manual_seed(0)), 16)
    padded_random = sum(len(i) * int(split.lengths[i].max()) for i in random_batches)
    assert padded < 0.75 * padded_random


def test_truncation_keeps_head_or_head_and_tail() -> None:
    ids = list(range(100))
    assert truncate(ids, 10, "head") == list(range(10))
    assert truncate(ids, 10, "head_tail") == [0, 1] + list(range(92, 100))
    assert truncate(ids[:5], 10, "head_tail") == ids[:5]


def test_encode_stream_offsets_labels_and_reuses_cache(tmp_path) -> None:
    stream = load_stream("synthetic", train_size=12, test_size=6)
    tokenizer = load_tokenizer("tiny")
    splits = encode_stream(stream, tokenizer, tokenizer_fingerprint("tiny"), tmp_path)
    offsets = [info.label_offset for info in stream.infos()]
    assert offsets == [0, 3, 5]
    for (train, _, test), info, task in zip(splits, stream.infos(), stream.tasks):
        assert train.labels.tolist() == [label + info.label_offset for label in task.train_labels]
        assert set(test.task_ids.tolist()) == {info.index}
        assert int(train.ids[0, 0]) == tokenizer.cls_token_id
        assert int(train.ids[0, int(train.lengths[0]) - 1]) == tokenizer.sep_token_id
        assert int(train.lengths.max()) <= task.max_length
    cached = list((tmp_path / "tokenized").glob("*.safetensors"))
    assert len(cached) == 1
    again = encode_stream(stream, tokenizer, tokenizer_fingerprint("tiny"), tmp_path)
    assert all(torch.equal(a.train.ids, b.train.ids) and torch.equal(a.test.labels, b.test.labels)
               for a, b in zip(splits, again))
    # different texts -> a different cache entry, never a stale hit
    encode_stream(load_stream("synthetic", train_size=13, test_size=6), tokenizer, tokenizer_fingerprint("tiny"),
                  tmp_path)
    assert len(list((tmp_path / "tokenized").glob("*.safetensors"))) == 2


def test_by_name_label_space_shares_outputs_between_tasks_with_equal_classes() -> None:
    from clbench.data import Stream, Task

    def task(name: str, classes: tuple[str, ...]) -> Task:
        return Task(name, classes, ("a",), (0,), ("b",), (0,))

    tasks = (task("movies", ("neg", "pos")), task("tweets", ("neg", "pos")), task("topics", ("x", "y", "z")))
    per_task = Stream("s", 1, 0, tasks)
    by_name = Stream("s", 1, 0, tasks, label_space="by-name")
    assert [i.label_offset for i in per_task.infos()] == [0, 2, 4] and per_task.num_labels == 7
    assert [i.label_offset for i in by_name.infos()] == [0, 0, 2] and by_name.num_labels == 5

"""Deterministic train/test splits for real-data sources: deduplicated, seeded, stratified and grouped.

Every real-data source turns its corpus into `Record`s (text, local label, group key) and calls
`split_records`. The procedure, in order:

1. **Normalise and deduplicate.** Whitespace runs become one space. Exact duplicate texts are kept once;
   a text that appears with two different labels is dropped entirely (the annotation is ambiguous).
2. **Shuffle groups.** Groups (a review's sentences, an article, a tweet's case/punctuation variants) are
   shuffled with a generator seeded by the stream seed and the task name — never the global RNG.
3. **Test set first.** Walking the shuffled groups, a group joins the test side while some class still lacks
   test examples; it contributes only records of classes still short of their quota, and its other records
   are discarded, so no group ever straddles train and test. Class quotas are proportional to the class
   frequencies (largest remainder). The test set therefore depends only on the data, the seed, the task name
   and `test_size` — never on `train_size` — so forgetting is measured on the same examples whatever the
   training budget.
4. **Train set.** The untouched groups form the train pool; `train_size` records are drawn from it
   stratified by label, in a seeded order, so a smaller train set is a per-class prefix of a larger one.

Sizes are maxima: a corpus too small for the request yields every example it has.

A validation set is then carved out of each task's training data by the stream (`split_validation`): a
fraction of it, stratified and grouped in the same way, never touching the test set.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Record:
    """One labelled example: its text, local label 0..C-1 and the group it must stay with."""

    text: str
    label: int
    group: str


@dataclass(frozen=True)
class Split:
    """A train and a test list of records, in their final (seeded) order."""

    train: tuple[Record, ...]
    test: tuple[Record, ...]

    @property
    def train_texts(self) -> tuple[str, ...]:
        return tuple(r.text for r in self.train)

    @property
    def train_labels(self) -> tuple[int, ...]:
        return tuple(r.label for r in self.train)

    @property
    def test_texts(self) -> tuple[str, ...]:
        return tuple(r.text for r in self.test)

    @property
    def test_labels(self) -> tuple[int, ...]:
        return tuple(r.label for r in self.test)


def normalise(text: str) -> str:
    """Collapse every whitespace run (newlines, tabs, CR) to one space and strip both ends."""
    return " ".join(text.split())


def task_rng(seed: int, task_name: str) -> random.Random:
    """A generator private to one task: seeded by sha256 of the stream seed and the task name."""
    digest = hashlib.sha256(f"{seed}/{task_name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def deduplicate(records: Iterable[Record]) -> list[Record]:
    """Normalise texts; keep the first copy of each text; drop texts seen with conflicting labels."""
    first: dict[str, Record] = {}
    conflicting: set[str] = set()
    for record in records:
        text = normalise(record.text)
        if not text:
            continue
        if text in first:
            if first[text].label != record.label:
                conflicting.add(text)
            continue
        first[text] = Record(text, record.label, record.group)
    return [r for t, r in first.items() if t not in conflicting]


def proportional_quotas(counts: dict[int, int], total: int) -> dict[int, int]:
    """Split `total` over classes in proportion to `counts` (largest remainder), never above a count."""
    available = sum(counts.values())
    total = min(total, available)
    if available == 0 or total == 0:
        return {label: 0 for label in counts}
    exact = {label: total * n / available for label, n in counts.items()}
    quotas = {label: int(x) for label, x in exact.items()}
    by_remainder = sorted(counts, key=lambda label: (-(exact[label] - quotas[label]), label))
    for label in by_remainder[: total - sum(quotas.values())]:
        quotas[label] += 1
    return quotas


def split_records(records: Sequence[Record], *, train_size: int, test_size: int, seed: int,
                  task_name: str) -> Split:
    """Deduplicate, then split grouped and stratified into at most `train_size` / `test_size` records.

    Args:
        records: the task's whole corpus, in a fixed (file) order.
        train_size: maximum number of training records.
        test_size: maximum number of test records.
        seed: the stream seed.
        task_name: mixed into the seed so tasks of one stream draw independently.

    Returns:
        The split; both sides are shuffled with the task's generator.
    """
    rng = task_rng(seed, task_name)
    unique = deduplicate(records)
    groups: dict[str, list[Record]] = defaultdict(list)
    for record in unique:  # dict keeps first-appearance order, so the shuffle below is reproducible
        groups[record.group].append(record)
    order = list(groups)
    rng.shuffle(order)
    for key in order:
        rng.shuffle(groups[key])

    counts = Counter(r.label for r in unique)
    need = proportional_quotas(dict(counts), test_size)
    test: list[Record] = []
    used: set[str] = set()
    for key in order:
        if not any(need.values()):
            break
        taken = []
        for record in groups[key]:
            if need[record.label] > 0:
                need[record.label] -= 1
                taken.append(record)
        if taken:
            test.extend(taken)
            used.add(key)

    rng.shuffle(test)  # before the train draw, so the test order cannot depend on train_size
    pool = [r for key in order if key not in used for r in groups[key]]
    train = sample_records(pool, train_size, rng)
    return Split(train=train, test=tuple(test))


def sample_records(records: Sequence[Record], size: int, rng: random.Random,
                   exclude: frozenset[str] = frozenset()) -> tuple[Record, ...]:
    """Deduplicate, drop texts in `exclude`, and draw at most `size` records stratified by label.

    Used where a corpus ships its own train/test split (Hugging Face datasets, user files with a test file):
    each side is sampled on its own, with its own generator, so the test sample never depends on the train
    size. Records come back in a seeded random order; a smaller sample is a per-class prefix of a larger one.
    """
    pool = [r for r in deduplicate(records) if r.text not in exclude]
    rng.shuffle(pool)
    need = proportional_quotas(dict(Counter(r.label for r in pool)), size)
    picked: list[Record] = []
    for record in pool:
        if need[record.label] > 0:
            need[record.label] -= 1
            picked.append(record)
    return tuple(picked)


def split_validation(labels: Sequence[int], groups: Sequence[str], fraction: float, seed: int,
                     task_name: str) -> tuple[list[int], list[int]]:
    """Carve a validation set out of a task's training data; returns (train, validation) positions.

    Stratified (class quotas proportional to the class frequencies, largest remainder, `fraction` of the
    data in all) and grouped (a group's examples all go to one side), seeded by the stream seed and the task
    name apart from the train/test split's generator. Walking the groups in a seeded order, a group joins the
    validation side when all its examples fit into the classes' remaining quotas, so no class gets more than
    its share (a corpus of large groups may get fewer). Both sides keep the training data's order.
    """
    if fraction <= 0 or not labels:
        return list(range(len(labels))), []
    rng = task_rng(seed, f"{task_name}/validation")
    members: dict[str, list[int]] = defaultdict(list)
    for position, group in enumerate(groups):
        members[group].append(position)
    order = list(members)
    rng.shuffle(order)
    need = proportional_quotas(dict(Counter(labels)), round(fraction * len(labels)))
    val: set[int] = set()
    for group in order:
        if not any(need.values()):
            break
        counts = Counter(labels[p] for p in members[group])
        if all(need[label] >= n for label, n in counts.items()):
            for label, n in counts.items():
                need[label] -= n
            val.update(members[group])
    return [p for p in range(len(labels)) if p not in val], sorted(val)

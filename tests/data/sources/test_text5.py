"""The text5 streams (de Masson d'Autume et al. 2019: AG News, Yelp, Amazon, DBpedia, Yahoo Answers in four
orders) and what they rely on in the hf source: class names read from ClassLabel, column templates and text
pairs. Everything runs on small generated local copies in each Hub dataset's schema (no Hub access)."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from clbench.cli import main
from clbench.data.render import PAIR_SEPARATOR, parse_text, split_pair
from clbench.data.sources import hf
from clbench.data.streams import load_stream, load_stream_spec
from clbench.errors import StreamError

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")
ORDERS = {1: ["yelp", "agnews", "dbpedia", "amazon", "yahoo"], 2: ["dbpedia", "yahoo", "agnews", "amazon", "yelp"],
          3: ["yelp", "yahoo", "amazon", "dbpedia", "agnews"], 4: ["agnews", "yelp", "amazon", "yahoo", "dbpedia"]}
# folder under --data-dir (the Hub id's last part), text columns, label column, ClassLabel names (None: int 1..5)
SCHEMAS: dict[str, tuple[str, tuple[str, ...], str, list[str] | None]] = {
    "agnews": ("ag_news", ("text",), "label", ["World", "Sports", "Business", "Sci/Tech"]),
    "yelp": ("yelp_review_full", ("text",), "label", ["1 star", "2 stars", "3 stars", "4 stars", "5 stars"]),
    "amazon": ("Amazon_Reviews_for_Sentiment_Analysis_fine_grained_5_classes", ("review_title", "review_text"),
               "class_index", None),
    "dbpedia": ("dbpedia_14", ("title", "content"), "label", [f"c{i}" for i in range(14)]),
    "yahoo": ("yahoo_answers_topics", ("question_title", "question_content", "best_answer"), "topic",
              [f"t{i}" for i in range(10)]),
}


def rows(task: str, n: int, seed: int) -> tuple[dict[str, list[Any]], Any]:
    """Generated rows and `datasets.Features` in the schema of `task`'s Hub dataset."""
    import datasets

    _, columns, label, names = SCHEMAS[task]
    rng = random.Random(seed)
    classes = len(names) if names else 5
    data: dict[str, list[Any]] = {c: [f"{task} {c} {i} " + " ".join(rng.choice(WORDS) for _ in range(4))
                                      for i in range(n)] for c in columns}
    data[label] = [i % classes + (0 if names else 1) for i in range(n)]
    features = {c: datasets.Value("string") for c in columns}
    features[label] = datasets.ClassLabel(names=names) if names else datasets.Value("int64")
    return data, datasets.Features(features)


def save(task: str, root: Path, parquet: bool) -> None:
    import datasets

    folder = root / SCHEMAS[task][0]
    splits = {split: datasets.Dataset.from_dict(*rows(task, n, seed))
              for split, n, seed in (("train", 140, 0), ("test", 70, 1))}
    if parquet:  # the Hub's layout; the features (ClassLabel names) travel in the parquet schema's metadata
        (folder / "data").mkdir(parents=True)
        for split, dataset in splits.items():
            dataset.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    else:
        datasets.DatasetDict(splits).save_to_disk(str(folder))


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for i, task in enumerate(SCHEMAS):
        save(task, tmp_path, parquet=i % 2 == 1)

    def no_hub(*args: object) -> hf.SplitReader:
        raise AssertionError("the Hub must not be contacted when a local copy exists")

    monkeypatch.setattr(hf, "load_hub_split", no_hub)
    return tmp_path


def test_four_published_orders_with_the_published_sizes() -> None:
    for order, tasks in ORDERS.items():
        spec = load_stream_spec(f"text5-order{order}")
        assert [t.name for t in spec.tasks] == tasks
        assert {(t.train_size, t.test_size) for t in spec.tasks} == {(115_000, 7_600)}
        assert spec.label_space == "by-name" and spec.val_fraction == 0 and spec.head == "shared"
    first = {t.name: t for t in load_stream_spec("text5-order1").tasks}
    for order in (2, 3, 4):  # the same five tasks, only reordered
        assert {t.name: t for t in load_stream_spec(f"text5-order{order}").tasks} == first


@pytest.mark.parametrize("order", [1, 4])
def test_text5_builds_from_local_copies(data_dir: Path, order: int) -> None:
    stream = load_stream(f"text5-order{order}", train_size=50, test_size=20, data_dir=data_dir)
    assert [t.name for t in stream.tasks] == ORDERS[order]
    assert stream.num_labels == 33  # 4 + 5 + 14 + 10, Yelp and Amazon sharing their five star classes
    infos = {i.name: i for i in stream.infos()}
    assert infos["yelp"].label_offset == infos["amazon"].label_offset
    tasks = {t.name: t for t in stream.tasks}
    assert Counter(tasks["agnews"].train_labels) == {c: 12 for c in range(4)} | {0: 13, 1: 13}
    assert len(tasks["yahoo"].test_texts) == 20 and not tasks["yahoo"].val_texts
    assert all(t.startswith("dbpedia title ") and " dbpedia content " in t for t in tasks["dbpedia"].train_texts)
    assert all(t.count(" yahoo ") == 2 for t in tasks["yahoo"].train_texts)  # title, question and answer
    amazon = tasks["amazon"]
    assert amazon.classes == ("1 star", "2 stars", "3 stars", "4 stars", "5 stars")
    assert set(amazon.train_labels) == set(range(5))  # class_index 1..5 mapped to 0..4


def test_cli_run_on_text5_with_local_copies(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--methods", "naive", "--stream", "text5-order3", "--model", "tiny",
                                       "--train-size", "20", "--test-size", "10", "--max-steps", "1", "--data-dir",
                                       str(data_dir), "--out", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    env = json.loads((out / "env.json").read_text())
    assert [t["name"] for t in env["stream"]["tasks"]] == ORDERS[3]
    listed = CliRunner().invoke(main, ["list", "streams"]).output
    assert "text5-order3 (v1, needs Hub or --data-dir)" in listed


def _custom_stream(tmp_path: Path, task: str) -> Path:
    file = tmp_path / "custom.yaml"
    file.write_text(f"name: custom\nversion: 1\nval_fraction: 0\ntasks:\n{task}")
    return file


def test_class_names_come_from_classlabel(data_dir: Path, tmp_path: Path) -> None:
    for dataset in ("fancyzhx/ag_news", "fancyzhx/dbpedia_14"):  # one save_to_disk copy, one parquet copy
        text = '"{title} {content}"' if "dbpedia" in dataset else "text"
        file = _custom_stream(tmp_path, f"  - {{name: t, source: hf, dataset: {dataset}, text: {text}, "
                                        "train_size: 20, test_size: 10}\n")
        task = load_stream(str(file), data_dir=data_dir).tasks[0]
        expected = SCHEMAS["agnews"][3] if "ag_news" in dataset else SCHEMAS["dbpedia"][3]
        assert list(task.classes) == expected


def test_classes_must_agree_with_classlabel(data_dir: Path, tmp_path: Path) -> None:
    file = _custom_stream(tmp_path, "  - {name: t, source: hf, dataset: fancyzhx/ag_news, classes: [a, b, c]}\n")
    with pytest.raises(StreamError, match="'classes' lists 3 names but fancyzhx/ag_news's label column 'label' has "
                                          "4 \\(World, Sports, Business, Sci/Tech\\)"):
        load_stream(str(file), data_dir=data_dir)
    file = _custom_stream(tmp_path, "  - {name: t, source: hf, dataset: x/Amazon_Reviews_for_Sentiment_Analysis_"
                                    "fine_grained_5_classes, text: review_text, label: class_index}\n")
    with pytest.raises(StreamError, match="label column 'class_index' is no ClassLabel, so give 'classes'"):
        load_stream(str(file), data_dir=data_dir)


def test_text_pairs_reach_the_model_as_pairs(tmp_path: Path) -> None:
    import datasets

    from clbench.data.tokenize import encode_texts
    from clbench.models import tiny_tokenizer

    features = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"])})
    data = {"premise": [f"a cat sat {i}" for i in range(60)], "hypothesis": [f"a dog ran {i % 7}" for i in range(60)],
            "label": [i % 3 for i in range(60)]}
    datasets.DatasetDict({s: datasets.Dataset.from_dict(data, features=features) for s in ("train", "test")}
                         ).save_to_disk(str(tmp_path / "nli"))
    file = _custom_stream(tmp_path, "  - {name: nli, source: hf, dataset: org/nli, text: [premise, hypothesis], "
                                    "test_split: test, train_size: 30, test_size: 12}\n")
    task = load_stream(str(file), data_dir=tmp_path).tasks[0]
    assert task.classes == ("entailment", "neutral", "contradiction")
    first, second = split_pair(task.train_texts[0])
    assert first.startswith("a cat sat") and second.startswith("a dog ran")
    ids, lengths = encode_texts(task.train_texts[:1], tiny_tokenizer(), 64, "head")
    tokens = tiny_tokenizer().convert_ids_to_tokens(ids[0, :lengths[0]])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"


def test_text_option_forms_and_errors() -> None:
    row = {"title": "T", "body": f"B{PAIR_SEPARATOR}x", "a": "p", "b": "h"}
    assert parse_text("t", "title").render(row) == "T"
    assert parse_text("t", "{title}: {body}").render(row) == "T: B x"  # the separator never comes from data
    assert split_pair(parse_text("t", ["a", "{b}!"]).render(row) or "") == ["p", "h!"]
    assert parse_text("t", ["a", "missing"]).render(row) is None
    for bad, needle in ((["a"], "a text pair lists two parts"), ("{", "malformed"), ("{0}", "placeholders"),
                        ("{a.b}", "placeholders"), (3, "'text' must name a column")):
        with pytest.raises(StreamError, match=needle):
            parse_text("t", bad)

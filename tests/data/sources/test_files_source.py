"""The files source: a user YAML over CSV / JSONL / parquet files built end to end, and one-line errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from clbench.data.streams import load_stream
from clbench.errors import StreamError


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "body,queue") -> None:
    lines = [header] + [f'"{text}",{label}' for text, label in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def tickets(n: int, labels: tuple[str, ...] = ("billing", "refund", "bug")) -> list[tuple[str, str]]:
    return [(f"ticket {i} about {labels[i % len(labels)]}, line\nbreak", labels[i % len(labels)]) for i in range(n)]


def write_stream(folder: Path, task_yaml: str) -> Path:
    path = folder / "user.yaml"
    path.write_text(f"name: user\nversion: 1\nseed: 0\ntasks:\n{task_yaml}", encoding="utf-8")
    return path


TASKS = """\
  - name: tickets
    source: files
    train: data/train.csv
    text: body
    label: queue
    label_map: {billing: money, refund: money, bug: tech}
    train_size: 40
    test_size: 20
    max_length: 32
  - name: reviews
    source: files
    train: data/reviews.jsonl
    test: data/reviews_test.parquet
    classes: [neg, pos]
    train_size: 30
    test_size: 10
"""


def test_user_stream_end_to_end(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "data").mkdir()
    write_csv(tmp_path / "data" / "train.csv", tickets(90))
    with (tmp_path / "data" / "reviews.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(60):
            fh.write(json.dumps({"text": f"review number {i}", "label": i % 2}) + "\n")
    pq.write_table(pa.table({"text": [f"held out {i}" for i in range(20)], "label": ["neg", "pos"] * 10}),
                   tmp_path / "data" / "reviews_test.parquet")
    stream = load_stream(str(write_stream(tmp_path, TASKS)))
    tickets_task, reviews_task = stream.tasks
    assert tickets_task.classes == ("money", "tech")
    # 40 training rows, of which the stream's default 10% are held out for validation
    assert (len(tickets_task.train_texts), len(tickets_task.val_texts), len(tickets_task.test_texts)) == (36, 4, 20)
    assert Counter(tickets_task.test_labels) == {0: 13, 1: 7}  # 2/3 money, stratified
    assert "\n" not in tickets_task.train_texts[0] and tickets_task.max_length == 32
    assert reviews_task.classes == ("neg", "pos")
    assert len(reviews_task.train_texts) + len(reviews_task.val_texts) == 30 and len(reviews_task.test_texts) == 10
    assert all(t.startswith("held out") for t in reviews_task.test_texts)
    assert stream.num_labels == 4
    again = load_stream(str(write_stream(tmp_path, TASKS)))
    assert again == stream


def one_task(tmp_path: Path, extra: str, train: str = "train.csv") -> Path:
    return write_stream(tmp_path, f"  - name: t\n    source: files\n    train: {train}\n    train_size: 10\n"
                                  f"    test_size: 4\n{extra}")


@pytest.mark.parametrize(("extra", "message"), [
    ("    text: content\n    label: queue\n    classes: [billing, refund, bug]\n",
     "text column 'content' is not in 'train.csv'"),
    ("    text: body\n    label: queue\n    classes: [billing, bug]\n", "unknown label 'refund' in train.csv row 2"),
    ("    text: body\n    label: queue\n    label_map: {billing: a, bug: b}\n",
     "label 'refund' in train.csv row 2 is missing from label_map"),
    ("    text: body\n    label: queue\n", "give 'classes'"),
    ("    text: body\n    label: queue\n    classes: [a, b]\n    colour: red\n", "unknown files option 'colour'"),
])
def test_bad_input_errors(tmp_path: Path, extra: str, message: str) -> None:
    write_csv(tmp_path / "train.csv", tickets(30))
    with pytest.raises(StreamError, match=message) as info:
        load_stream(str(one_task(tmp_path, extra)))
    assert "\n" not in str(info.value)


def test_non_utf8_file(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_bytes("body,queue\ncaf\xe9,billing\n".encode("latin-1"))
    with pytest.raises(StreamError, match=r"is not UTF-8 \(byte 0xe9 at offset 14\); re-save"):
        load_stream(str(one_task(tmp_path, "    text: body\n    label: queue\n    classes: [billing, bug]\n")))


def test_empty_after_filtering(tmp_path: Path) -> None:
    write_csv(tmp_path / "train.csv", [("", "billing"), ("  ", "bug")])
    with pytest.raises(StreamError, match="no training examples left"):
        load_stream(str(one_task(tmp_path, "    text: body\n    label: queue\n    classes: [billing, bug]\n")))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StreamError, match="data file 'nope.csv' not found"):
        load_stream(str(one_task(tmp_path, "    classes: [a, b]\n", train="nope.csv")))


def test_user_csv_stream_runs_through_clbench_run(tmp_path: Path) -> None:
    """A user's YAML stream over CSV files, trained and evaluated by the real CLI with the tiny model."""
    from click.testing import CliRunner

    from clbench.cli import main

    (tmp_path / "data").mkdir()
    write_csv(tmp_path / "data" / "train.csv", tickets(90))
    stream = write_stream(tmp_path, "  - name: tickets\n    source: files\n    train: data/train.csv\n"
                                    "    text: body\n    label: queue\n    label_map: {billing: money, refund: money,"
                                    " bug: tech}\n    train_size: 40\n    test_size: 20\n    max_length: 32\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--methods", "naive", "--stream", str(stream), "--model", "tiny",
                                       "--epochs", "1", "--out", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["eval_task"] for r in records if r["type"] == "accuracy"} == {"tickets"}
    assert any(r["type"] == "unit" and r["value"] == "done" for r in records)


def test_data_paths_are_confined_to_the_stream_folder_unless_data_dir_names_theirs(tmp_path: Path) -> None:
    """A path that leads outside the stream file's folder is refused without being read; passing the data's
    folder as --data-dir (data_dir) is the explicit way to use it."""
    (tmp_path / "elsewhere").mkdir()
    write_csv(tmp_path / "elsewhere" / "train.csv", tickets(30), header="text,label")
    (tmp_path / "streams").mkdir()
    stream = write_stream(tmp_path / "streams", "  - {name: t, source: files, train: ../elsewhere/train.csv, "
                                                "classes: [billing, refund, bug], train_size: 10, test_size: 4}\n")
    with pytest.raises(StreamError, match="lies outside the stream file's folder and --data-dir"):
        load_stream(str(stream))
    stream.write_text(stream.read_text().replace("../elsewhere/train.csv", "train.csv"))
    task = load_stream(str(stream), data_dir=tmp_path / "elsewhere").tasks[0]
    assert len(task.train_texts) + len(task.val_texts) == 10


def test_choosing_hyper_parameters_never_opens_a_test_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    write_csv(tmp_path / "data" / "train.csv", [(f"text {i}", "ab"[i % 2]) for i in range(60)], "text,label")
    write_csv(tmp_path / "data" / "test.csv", [(f"held {i}", "ab"[i % 2]) for i in range(20)], "text,label")
    stream_file = write_stream(tmp_path, "  - {name: t, source: files, classes: [a, b], train: data/train.csv, "
                                         "test: data/test.csv, train_size: 50, test_size: 20}\n")
    clean = load_stream(str(stream_file), read_test=False)
    (tmp_path / "data" / "test.csv").write_bytes(b"\xff\xfe poisoned, not a CSV \x00")
    poisoned = load_stream(str(stream_file), read_test=False)
    assert poisoned == clean and clean.tasks[0].test_texts == ()
    assert len(clean.tasks[0].val_texts) == 5 and len(clean.tasks[0].train_texts) == 45
    with pytest.raises(StreamError):
        load_stream(str(stream_file))  # a run that reports test results does read it


def test_compressed_files_urls_templates_and_pairs(tmp_path: Path) -> None:
    """Through datasets' readers: a gzipped CSV, an xz JSONL read by file:// URL, cells kept as written, a
    template over two columns and a text pair."""
    import gzip
    import lzma

    from clbench.data.render import split_pair

    rows = [f'"{i:03d}","re: topic {i % 3}","body {i}",{"ab"[i % 2]}' for i in range(40)]
    with gzip.open(tmp_path / "train.csv.gz", "wt", encoding="utf-8") as fh:
        fh.write("code,subject,body,label\n" + "\n".join(rows) + "\n")
    with lzma.open(tmp_path / "pairs.jsonl.xz", "wt", encoding="utf-8") as fh:
        for i in range(40):
            fh.write(json.dumps({"q": f"question {i}", "a": f"answer {i}", "label": i % 2}) + "\n")
    stream = write_stream(tmp_path, f"""\
  - {{name: codes, source: files, train: train.csv.gz, text: code, classes: [a, b], train_size: 20, test_size: 8}}
  - {{name: mails, source: files, train: train.csv.gz, text: "{{subject}}: {{body}}", classes: [a, b],
      train_size: 20, test_size: 8}}
  - {{name: qa, source: files, train: "{(tmp_path / 'pairs.jsonl.xz').as_uri()}", text: [q, a], classes: [no, yes],
      train_size: 20, test_size: 8}}
""")
    codes, mails, qa = load_stream(str(stream)).tasks
    assert all(len(t) == 3 and t.isdigit() for t in codes.train_texts + codes.test_texts)  # '007' stays '007'
    assert all(t.startswith("re: topic ") and ": body " in t for t in mails.train_texts)
    question, answer = split_pair(qa.train_texts[0])
    assert question.startswith("question ") and answer == "answer " + question.split()[1]


@pytest.mark.parametrize(("name", "content", "message"), [
    ("d.csv", "text,label\nx y,a\nz w,b,extra\n", "'d.csv' line 3 has 3 fields, the header 2"),
    ("d.jsonl", '{"text": "x", "label": "a"}\n\n{oops\n', "'d.jsonl' line 3 is not JSON"),
    ("d.jsonl", '{"text": "x", "label": "a"}\n[1, 2]\n', "'d.jsonl' line 2 is not a JSON object"),
    ("d.csv", "", "'d.csv' holds no rows"),
    ("d.csv", "text,label\n", "'d.csv' holds no rows"),
])
def test_reader_errors_name_the_file_and_line(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(StreamError, match=message) as info:
        load_stream(str(one_task(tmp_path, "    classes: [a, b]\n", train=name)))
    assert "\n" not in str(info.value)


def test_compressed_jsonl_error_names_the_record(tmp_path: Path) -> None:
    import gzip

    with gzip.open(tmp_path / "d.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write('{"text": "x", "label": "a"}\n{oops\n')
    with pytest.raises(StreamError, match="'d.jsonl.gz' record 2 is not JSON"):
        load_stream(str(one_task(tmp_path, "    classes: [a, b]\n", train="d.jsonl.gz")))

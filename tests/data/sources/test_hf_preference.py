"""The hf source's `kind: preference` route on generated local copies in three column styles: prompt/chosen/
rejected strings, hh-rlhf's whole conversations without a prompt column, and UltraFeedback's chat-message
lists. No real data and no Hub access."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from clbench.data import PREFERENCE_CLASSES
from clbench.data.render import split_preference
from clbench.data.sources import hf
from clbench.data.sources.preference import preference_parts, split_shared_prefix
from clbench.data.streams import load_stream
from clbench.errors import StreamError

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def string_rows(n: int, seed: int) -> dict[str, list[Any]]:
    """prompt, chosen and rejected strings (the plain preference layout)."""
    rng = random.Random(seed)
    prompts = [f"question {seed}-{i}: {words(rng, 4)}?" for i in range(n)]
    return {"prompt": prompts, "chosen": [f"good {words(rng, 5)}" for _ in range(n)],
            "rejected": [f"bad {words(rng, 5)}" for _ in range(n)]}


def hh_rows(n: int, seed: int) -> dict[str, list[Any]]:
    """Anthropic/hh-rlhf's layout: two whole conversations per row that differ only in the last reply."""
    rng = random.Random(seed)
    chosen, rejected = [], []
    for i in range(n):
        history = f"\n\nHuman: hello {seed}-{i} {words(rng, 3)}\n\nAssistant: hi there\n\nHuman: {words(rng, 4)}?"
        chosen.append(f"{history}\n\nAssistant: I think {words(rng, 4)} helps.")
        rejected.append(f"{history}\n\nAssistant: I don't {words(rng, 3)}.")
    return {"chosen": chosen, "rejected": rejected}


def chat_rows(n: int, seed: int, with_prompt: bool) -> dict[str, list[Any]]:
    """UltraFeedback binarized's layout: chosen and rejected are [{role, content}, ...] message lists."""
    rng = random.Random(seed)
    rows: dict[str, list[Any]] = {"chosen": [], "rejected": [], "score_chosen": [], "score_rejected": []}
    if with_prompt:
        rows["prompt"] = []
    for i in range(n):
        question = f"task {seed}-{i}: {words(rng, 4)}"
        for column, answer in (("chosen", f"helpful {words(rng, 4)}"), ("rejected", f"unhelpful {words(rng, 4)}")):
            rows[column].append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
        rows["score_chosen"].append(8.0)
        rows["score_rejected"].append(3.0)
        if with_prompt:
            rows["prompt"].append(question)
    return rows


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Local copies in the layouts `hf` reads: parquet, a save_to_disk DatasetDict, per-split save_to_disk."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    def fail(*args: object) -> hf.SplitReader:
        raise AssertionError("the Hub must not be contacted when a local copy exists")

    monkeypatch.setattr(hf, "load_hub_split", fail)
    (tmp_path / "my-org" / "prefs" / "data").mkdir(parents=True)
    for split, n, seed in (("train", 120, 0), ("test", 60, 1)):
        pq.write_table(pa.table(string_rows(n, seed)),
                       tmp_path / "my-org" / "prefs" / "data" / f"{split}-00000-of-00001.parquet")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(hh_rows(120, 2)),
                          "test": datasets.Dataset.from_dict(hh_rows(60, 3))}).save_to_disk(str(tmp_path / "hh-rlhf"))
    (tmp_path / "h4").mkdir()
    for split, n, seed in (("train", 120, 4), ("test", 60, 5)):
        datasets.Dataset.from_dict(chat_rows(n, seed, False)).save_to_disk(
            str(tmp_path / "trl-lib" / "ultrafeedback_binarized" / split))
        pq.write_table(pa.table(chat_rows(n, seed + 2, True)), tmp_path / "h4" / f"{split}_prefs.parquet")
    return tmp_path


def build(tmp_path: Path, data_dir: Path, options: str, sizes: str = "train_size: 40, test_size: 20") -> Any:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nversion: 1\ntasks:\n  - {{name: p, source: hf, kind: preference, {options}, {sizes}}}\n",
                    encoding="utf-8")
    return load_stream(str(path), data_dir=data_dir)


def parts(stream: Any) -> list[tuple[str, str, str]]:
    task = stream.tasks[0]
    return [split_preference(t) for t in task.train_texts + task.val_texts + task.test_texts]


def check_task(stream: Any) -> None:
    task = stream.tasks[0]
    assert stream.kind == "preference" and task.kind == "preference" and task.classes == PREFERENCE_CLASSES
    assert len(task.train_texts) + len(task.val_texts) == 40 and len(task.test_texts) == 20
    assert set(task.train_labels + task.val_labels + task.test_labels) == {0}
    assert not set(task.train_texts) & set(task.test_texts)


def test_prompt_chosen_rejected_strings(tmp_path: Path, data_dir: Path) -> None:
    stream = build(tmp_path, data_dir, "dataset: my-org/prefs")
    check_task(stream)
    for prompt, chosen, rejected in parts(stream):
        assert prompt.startswith("question ") and chosen.startswith("good ") and rejected.startswith("bad ")
    assert build(tmp_path, data_dir, "dataset: my-org/prefs") == stream  # same seed, same pairs


def test_columns_are_named_by_options(tmp_path: Path, data_dir: Path) -> None:
    stream = build(tmp_path, data_dir, "dataset: my-org/prefs, prompt: prompt, chosen: rejected, rejected: chosen")
    assert all(c.startswith("bad ") and r.startswith("good ") for _, c, r in parts(stream))


def test_hh_rlhf_conversations_without_prompt(tmp_path: Path, data_dir: Path) -> None:
    stream = build(tmp_path, data_dir, "dataset: Anthropic/hh-rlhf")
    check_task(stream)
    for prompt, chosen, rejected in parts(stream):
        assert prompt.startswith("Human: hello") and prompt.endswith("Assistant: I")  # cut after the shared word
        assert chosen.startswith("think ") and rejected.startswith("don't ")


def test_chat_message_lists_without_prompt(tmp_path: Path, data_dir: Path) -> None:
    stream = build(tmp_path, data_dir, "dataset: trl-lib/ultrafeedback_binarized")
    check_task(stream)
    for prompt, chosen, rejected in parts(stream):
        assert prompt.startswith("task ") and chosen.startswith("helpful ") and rejected.startswith("unhelpful ")


def test_chat_message_lists_with_prompt_column(tmp_path: Path, data_dir: Path) -> None:
    stream = build(tmp_path, data_dir, "dataset: h4, train_split: train_prefs, test_split: test_prefs")
    check_task(stream)
    assert all(p.startswith("task ") and c.startswith("helpful ") for p, c, _ in parts(stream))


@pytest.mark.parametrize(("options", "message"), [
    ("dataset: my-org/prefs, label: label", "'label' does not apply to a preference task"),
    ("dataset: my-org/prefs, text: prompt", "'text' does not apply to a preference task"),
    ("dataset: my-org/prefs, classes: [a, b]", r"classes are fixed \(chosen, rejected\)"),
    ("dataset: my-org/prefs, chosen: winner", "chosen column 'winner' is not in split 'test'"),
    ("dataset: Anthropic/hh-rlhf, prompt: question", "prompt column 'question' is not in split 'test'"),
    ("dataset: trl-lib/ultrafeedback_binarized, chosen: score_chosen",
     "test row .*: 8.0 is neither a string nor a list of"),
])
def test_preference_errors_are_one_line(tmp_path: Path, data_dir: Path, options: str, message: str) -> None:
    with pytest.raises(StreamError, match=message) as info:
        build(tmp_path, data_dir, options)
    assert "\n" not in str(info.value)


def test_split_shared_prefix_cuts_at_whitespace() -> None:
    assert split_shared_prefix("Q: a cat sat", "Q: a car sat") == ("Q: a ", "cat sat", "car sat")
    assert split_shared_prefix("\n\nHuman: hi\n\nAssistant: yes", "\n\nHuman: hi\n\nAssistant: no") == \
        ("\n\nHuman: hi\n\nAssistant: ", "yes", "no")
    assert split_shared_prefix("abc", "abd") == ("", "abc", "abd")


def test_preference_parts_skip_unusable_rows() -> None:
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert preference_parts(None, "same reply", "same reply", False) is None
    assert preference_parts(None, "x", None, False) is None
    assert preference_parts(None, [{"role": "user", "content": "q"}], chat, False) is None  # no assistant turn
    assert preference_parts(None, chat, [*chat[:1], {"role": "assistant", "content": "b"}], False) == ("q", "a", "b")
    assert preference_parts(chat[:1], chat, "b", True) == ("q", "a", "b")
    with pytest.raises(ValueError, match="neither a string nor a list"):
        preference_parts(None, 3, "b", False)

"""Tokenisation runs once per (stream, tokenizer, max length) and is reused across methods, seeds and runs.

`tests/test_data.py` covers labels, framing, a repeated `encode_stream` call and a change of texts; this file
covers what the runner relies on: one tokenisation per run whatever the number of units, a cache hit on a
second run, and invalidation by tokenizer, max length, truncation and label layout.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from clbench.data import Stream, tokenize
from clbench.data.streams import load_stream
from clbench.data.tokenize import cache_key, encode_stream
from clbench.models import load_tokenizer, tokenizer_fingerprint


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts `encode_texts` calls (one per split actually tokenised), passing through to the real one."""
    seen: list[int] = []
    real = tokenize.encode_texts

    def counting(texts: tuple[str, ...], *args: Any) -> Any:
        seen.append(len(texts))
        return real(texts, *args)

    monkeypatch.setattr(tokenize, "encode_texts", counting)
    return seen


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "tokenized").glob("*.safetensors"))


def test_one_tokenisation_per_run_shared_by_methods_and_seeds(run_tiny, calls, fresh_cache) -> None:
    _, records = run_tiny(("naive", "ewc"), seeds=[0, 1])
    assert {r["unit"] for r in records} == {"naive/seed0", "naive/seed1", "ewc/seed0", "ewc/seed1"}
    tasks = len(load_stream("synthetic", train_size=48, test_size=24).tasks)
    assert len(calls) == 3 * tasks  # train, validation and test of each task, once for all four units


def test_second_run_hits_the_cache(run_tiny, calls, fresh_cache, tmp_path: Path) -> None:
    run_tiny(("naive",), out=str(tmp_path / "first"))
    assert calls, "the first run tokenises"
    calls.clear()
    run_tiny(("naive", "ewc"), seeds=[3], out=str(tmp_path / "second"))
    assert calls == []  # different methods and seeds, same stream and tokenizer: read from disk
    assert len(_entries(fresh_cache)) == 1


def test_cache_hit_returns_identical_tensors(tmp_path: Path, calls) -> None:
    stream = load_stream("synthetic", train_size=10, test_size=5)
    tok = load_tokenizer("tiny")
    first = encode_stream(stream, tok, tokenizer_fingerprint("tiny"), tmp_path)
    calls.clear()
    again = encode_stream(stream, tok, tokenizer_fingerprint("tiny"), tmp_path)
    assert calls == []
    for first_splits, again_splits in zip(first, again):
        for a, b in zip(first_splits, again_splits):
            assert all(torch.equal(x, y) for x, y in ((a.ids, b.ids), (a.lengths, b.lengths),
                                                      (a.labels, b.labels), (a.task_ids, b.task_ids)))
            assert a.pad_id == b.pad_id


def test_tokenizer_change_invalidates(tmp_path: Path, calls) -> None:
    stream = load_stream("synthetic", train_size=10, test_size=5)
    tok = load_tokenizer("tiny")
    encode_stream(stream, tok, tokenizer_fingerprint("tiny"), tmp_path)
    calls.clear()
    encode_stream(stream, tok, "another-tokenizer-fingerprint", tmp_path)
    assert calls, "a different tokenizer fingerprint must re-tokenise"
    assert len(_entries(tmp_path)) == 2


@pytest.mark.parametrize("change", [{"max_length": 7}, {"truncation": "head_tail"}])
def test_max_length_and_truncation_invalidate(tmp_path: Path, calls, change: dict[str, Any]) -> None:
    stream = load_stream("synthetic", train_size=10, test_size=5)
    tok = load_tokenizer("tiny")
    encode_stream(stream, tok, tokenizer_fingerprint("tiny"), tmp_path)
    calls.clear()
    other = replace(stream, tasks=tuple(replace(t, **change) for t in stream.tasks))
    splits = encode_stream(other, tok, tokenizer_fingerprint("tiny"), tmp_path)
    assert calls and len(_entries(tmp_path)) == 2
    if "max_length" in change:
        assert all(int(s.lengths.max()) <= 7 for pair in splits for s in pair)


def test_version_and_label_layout_are_part_of_the_key() -> None:
    stream = load_stream("synthetic", train_size=10, test_size=5)
    fp = tokenizer_fingerprint("tiny")
    assert cache_key(replace(stream, version=stream.version + 1), fp) != cache_key(stream, fp)
    # label_space moves global label ids (baked into the cached labels) without touching texts
    same_classes = Stream(stream.name, stream.version, stream.seed,
                          tuple(replace(t, classes=stream.tasks[0].classes) for t in stream.tasks[:2]))
    assert cache_key(same_classes, fp) != cache_key(replace(same_classes, label_space="by-name"), fp)


def test_truncated_cache_file_is_rebuilt(tmp_path: Path, calls) -> None:
    stream = load_stream("synthetic", train_size=10, test_size=5)
    tok = load_tokenizer("tiny")
    encode_stream(stream, tok, tokenizer_fingerprint("tiny"), tmp_path)
    (entry,) = _entries(tmp_path)
    entry.write_bytes(entry.read_bytes()[:40])
    calls.clear()
    splits = encode_stream(stream, tok, tokenizer_fingerprint("tiny"), tmp_path)
    assert calls and len(splits) == len(stream.tasks)


def test_a_cache_file_whose_tensors_changed_is_rebuilt(tmp_path: Path, calls) -> None:
    """The sha256 in a cache file's metadata is checked on every use: altered labels (a valid file whose
    metadata was kept) are tokenised again, never used."""
    from safetensors.torch import load_file, save_file

    stream = load_stream("synthetic", train_size=10, test_size=5)
    tok = load_tokenizer("tiny")
    first = encode_stream(stream, tok, tokenizer_fingerprint("tiny"), tmp_path)
    (entry,) = _entries(tmp_path)
    tensors = load_file(str(entry))
    tensors["0.train.labels"] = tensors["0.train.labels"].flip(0).contiguous()
    metadata = {"sha256": tokenize.tensors_digest(load_file(str(entry)))}  # the digest of the original tensors
    save_file(tensors, str(entry), metadata=metadata)
    calls.clear()
    again = encode_stream(stream, tok, tokenizer_fingerprint("tiny"), tmp_path)
    assert calls, "an altered cache file must be tokenised again"
    assert torch.equal(again[0][0].labels, first[0][0].labels)
    assert (entry.stat().st_mode & 0o777) == 0o644  # readable by a group sharing the cache
    calls.clear()
    encode_stream(stream, tok, tokenizer_fingerprint("tiny"), tmp_path)
    assert calls == [], "the rebuilt file verifies"


def test_a_cache_folder_that_is_a_file_is_refused_untouched(tmp_path: Path) -> None:
    from clbench.errors import StreamError

    (tmp_path / "tokenized").write_text("not a folder")
    stream = load_stream("synthetic", train_size=10, test_size=5)
    with pytest.raises(StreamError, match="tokenized' is a file, not the folder"):
        encode_stream(stream, load_tokenizer("tiny"), tokenizer_fingerprint("tiny"), tmp_path)
    assert (tmp_path / "tokenized").read_text() == "not a folder"

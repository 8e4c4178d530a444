"""Tokenise a stream once and cache it on disk, keyed by its texts, the tokenizer and the lengths.

The key hashes the rendered texts and labels themselves (plus tokenizer fingerprint, max length and
truncation), so any change to a stream's rendering or the tokenizer invalidates the cache with no version
bookkeeping, and every method, seed and later run of the same stream reuses one tokenisation.

Each cache file also carries the sha256 of its tensors (`tensors_digest`) in its metadata, checked on every
use: a file that was truncated, altered or written by something else is tokenised again and replaced, never
used. Files are written to a temporary name in the same folder and renamed, readable by the group (0644), so
a cache shared between users and runs never exposes a half-written file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from clbench.data import LM_KINDS, EncodedSplit, Stream, Task, TaskSplits
from clbench.data.cachefile import write_entry
from clbench.data.pairs import encode_pairs
from clbench.data.render import split_pair
from clbench.errors import StreamError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PARTS = ("train", "val", "test")  # the order of TaskSplits
HEAD_FRACTION = 0.25  # head_tail keeps the first quarter of the budget and the last three quarters


def truncate(ids: list[int], budget: int, mode: str) -> list[int]:
    """Cut a token list to `budget` tokens: keep the head, or head and tail (Sun et al. 2019, 'How to
    Fine-Tune BERT for Text Classification', found head+tail best for long reviews)."""
    if len(ids) <= budget:
        return ids
    if mode == "head_tail":
        head = int(budget * HEAD_FRACTION)
        return ids[:head] + ids[len(ids) - (budget - head):]
    return ids[:budget]


def pair_budget(first: int, second: int, budget: int) -> tuple[int, int]:
    """Token budgets of a pair's two parts: both whole if they fit, else the longer one is cut first (down to
    half the budget), as transformers' `longest_first` truncation does."""
    if first + second <= budget:
        return first, second
    half = budget // 2
    if first <= half:
        return first, budget - first
    if second <= budget - half:
        return budget - second, second
    return half, budget - half


def encode_texts(texts: tuple[str, ...], tokenizer: PreTrainedTokenizerBase, max_length: int,
                 truncation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> (ids [n, width] padded with the pad id, lengths [n]), framed as [CLS] ... [SEP] (or BOS/EOS).

    A text pair (`clbench.data.render`) becomes [CLS] first [SEP] second [SEP], each part truncated by
    `truncation` within its share of the budget (`pair_budget`).
    """
    from transformers.utils import logging as hf_logging

    if not texts:  # e.g. the test split while choosing hyper-parameters
        return torch.zeros((0, 1), dtype=torch.long), torch.zeros(0, dtype=torch.long)
    parts = [split_pair(text) for text in texts]
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # we truncate ourselves below; the "longer than maximum" warning is moot
    try:
        flat = tokenizer([p for ps in parts for p in ps], add_special_tokens=False, truncation=False)["input_ids"]
    finally:
        hf_logging.set_verbosity(verbosity)
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    prefix = [first] if first is not None else []
    suffix = [last] if last is not None else []
    budget = max_length - len(prefix) - len(suffix)
    pieces = iter(flat)
    rows = []
    for count in map(len, parts):
        if count == 1:
            rows.append(prefix + truncate(next(pieces), budget, truncation) + suffix)
            continue
        a, b = next(pieces), next(pieces)
        keep_a, keep_b = pair_budget(len(a), len(b), budget - len(suffix))
        rows.append(prefix + truncate(a, keep_a, truncation) + suffix + truncate(b, keep_b, truncation) + suffix)
    width = max((len(r) for r in rows), default=1)
    pad = tokenizer.pad_token_id or 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return ids, torch.tensor([len(r) for r in rows], dtype=torch.long)


def cache_key(stream: Stream, fingerprint: str) -> str:
    digest = hashlib.sha256()
    offsets = [info.label_offset for info in stream.infos()]  # global labels are cached, so their layout counts
    digest.update(json.dumps([stream.name, stream.version, fingerprint, offsets]).encode())
    for task in stream.tasks:
        digest.update(json.dumps([task.name, task.max_length, task.truncation, task.train_texts,
                                  task.train_labels, task.val_texts, task.val_labels, task.test_texts,
                                  task.test_labels]).encode())
    return digest.hexdigest()[:24]


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of `tensors`, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def encode_stream(stream: Stream, tokenizer: PreTrainedTokenizerBase, fingerprint: str,
                  cache: Path | None = None) -> list[TaskSplits]:
    """(train, val, test) EncodedSplits per task, with global labels; read from / written to `cache` if given.

    A preference stream gives `PairSplit`s instead (`clbench.data.pairs.encode_pairs`).

    Raises:
        StreamError: the cache's `tokenized` folder, or this stream's entry in it, is not what it should be (a
            file where a folder belongs, or the reverse); nothing is deleted that clbench did not write.
    """
    if stream.kind in LM_KINDS:  # a few hundred pairs tokenise in well under a second: not cached
        return [TaskSplits(*(encode_pairs(texts, labels, info.label_offset, info.index, tokenizer, task.max_length)
                             for texts, labels in ((task.train_texts, task.train_labels),
                                                   (task.val_texts, task.val_labels),
                                                   (task.test_texts, task.test_labels))))
                for info, task in zip(stream.infos(), stream.tasks)]
    path = cache / "tokenized" / f"{stream.name}-{cache_key(stream, fingerprint)}.safetensors" if cache else None
    pad = int(tokenizer.pad_token_id or 0)
    if path is not None:
        _check_entry(path)
        tensors = _load_verified(path)
        if tensors is not None:
            return [TaskSplits(*(_split_from(tensors, f"{i}.{part}", pad) for part in PARTS))
                    for i in range(len(stream.tasks))]
    out: list[TaskSplits] = []
    tensors = {}
    for info, task in zip(stream.infos(), stream.tasks):
        parts = []
        for part, texts, labels in zip(PARTS, (task.train_texts, task.val_texts, task.test_texts),
                                       (task.train_labels, task.val_labels, task.test_labels)):
            split = _encode_split(task, texts, labels, info.label_offset, info.index, tokenizer)
            parts.append(split)
            key = f"{info.index}.{part}"
            tensors.update({f"{key}.ids": split.ids, f"{key}.lengths": split.lengths,
                            f"{key}.labels": split.labels, f"{key}.task_ids": split.task_ids})
        out.append(TaskSplits(*parts))
    if path is not None:
        _save(path, {k: v.contiguous() for k, v in tensors.items()})
    return out


def _check_entry(path: Path) -> None:
    for where, folder in ((path.parent, True), (path, False)):
        if where.exists() and where.is_dir() != folder:
            kind = "a file" if folder else "a folder"
            raise StreamError(f"tokenisation cache entry '{where}' is {kind}, not the {'folder' if folder else 'file'} "
                              "clbench writes there; delete it (clbench rebuilds it) or set CLBENCH_CACHE elsewhere")


def _load_verified(path: Path) -> dict[str, torch.Tensor] | None:
    """The cached tensors, or None when there are none or they fail their sha256 (then they are re-tokenised)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            recorded = (fh.metadata() or {}).get("sha256")
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 -- safe_open has no __iter__
    except Exception:  # noqa: BLE001 -- a truncated or foreign file: re-tokenise and replace it
        return None
    return tensors if recorded == tensors_digest(tensors) else None


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write the cache file whole or not at all (`clbench.data.cachefile`; a read-only cache only costs
    tokenising again next time)."""
    from safetensors.torch import save_file

    write_entry(path, lambda tmp: save_file(tensors, tmp, metadata={"sha256": tensors_digest(tensors)}))


def _encode_split(task: Task, texts: tuple[str, ...], labels: tuple[int, ...], offset: int, index: int,
                  tokenizer: PreTrainedTokenizerBase) -> EncodedSplit:
    ids, lengths = encode_texts(texts, tokenizer, task.max_length, task.truncation)
    global_labels = torch.tensor(labels, dtype=torch.long) + offset
    return EncodedSplit(ids, lengths, global_labels, torch.full_like(global_labels, index),
                        int(tokenizer.pad_token_id or 0))


def _split_from(tensors: dict[str, torch.Tensor], key: str, pad: int) -> EncodedSplit:
    return EncodedSplit(tensors[f"{key}.ids"], tensors[f"{key}.lengths"], tensors[f"{key}.labels"],
                        tensors[f"{key}.task_ids"], pad)

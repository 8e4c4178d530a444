"""A run's stream resolved and tokenised once, shared by every unit (and put once into Ray's object store)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clbench.config import RunConfig
from clbench.data import EncodedSplit, Stream, TaskInfo
from clbench.data.streams import cache_dir, load_stream
from clbench.data.tokenize import encode_stream
from clbench.models import load_tokenizer, tokenizer_fingerprint


@dataclass
class Prepared:
    """A stream resolved and tokenised once, shared by every unit of a run."""

    stream: Stream
    infos: tuple[TaskInfo, ...]
    splits: list[tuple[EncodedSplit, EncodedSplit]]  # (train, test) per task
    head: str


def prepare(config: RunConfig) -> Prepared:
    """Load and tokenise the stream (tokenisation cached on disk per stream contents and tokenizer)."""
    stream = load_stream(config.stream, train_size=config.train_size, test_size=config.test_size,
                         max_length=config.max_length, data_dir=Path(config.data_dir) if config.data_dir else None)
    tokenizer = load_tokenizer(config.model)
    splits = encode_stream(stream, tokenizer, tokenizer_fingerprint(config.model), cache_dir())
    return Prepared(stream, stream.infos(), splits, config.head or stream.head)

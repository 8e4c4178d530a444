"""A run's stream resolved and tokenised once, shared by every unit (and put once into Ray's object store)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clbench.config import RunConfig
from clbench.data import EncodedSplit, Stream, TaskInfo, TaskSplits
from clbench.data.streams import cache_dir, load_stream
from clbench.data.tokenize import encode_stream
from clbench.models import (
    ModelArgs,
    load_tokenizer,
    model_provenance,
    parse_model_args,
    tokenizer_fingerprint,
)


@dataclass
class Prepared:
    """A stream resolved and tokenised once, shared by every unit of a run, and the model it was tokenised for."""

    stream: Stream
    infos: tuple[TaskInfo, ...]
    splits: list[TaskSplits]  # (train, val, test) per task
    head: str
    eval_split: str = "test"  # what every evaluation reads: "test" (verdicts) or "val" (choices)
    model_args: ModelArgs = field(default_factory=ModelArgs)  # revision resolved to the commit every unit loads
    model_info: dict[str, Any] = field(default_factory=dict)  # env.json's "model" (`model_provenance`)

    @property
    def train(self) -> list[EncodedSplit]:
        return [s.train for s in self.splits]

    @property
    def evaluated(self) -> list[EncodedSplit]:
        """The split every task is evaluated on after each task (`eval_split`)."""
        return [getattr(s, self.eval_split) for s in self.splits]


def prepare(config: RunConfig) -> Prepared:
    """Load and tokenise the stream (tokenisation cached on disk per stream contents and tokenizer).

    A run that evaluates on validation data (`eval_split: val`, as `clbench tune` does) never reads test data.
    """
    args = parse_model_args(config.model_args, config.model)
    model_info = model_provenance(config.model, args)  # an unknown Hub id or revision fails before any data
    if model_info["source"] == "hub":
        args = replace(args, revision=model_info["resolved_revision"])
    stream = load_stream(config.stream, train_size=config.train_size, test_size=config.test_size,
                         max_length=config.max_length, data_dir=Path(config.data_dir) if config.data_dir else None,
                         val_fraction=config.val_fraction, read_test=config.eval_split == "test")
    tokenizer = load_tokenizer(config.model, args.revision)
    splits = encode_stream(stream, tokenizer, tokenizer_fingerprint(config.model, args.revision), cache_dir())
    return Prepared(stream, stream.infos(), splits, config.head or stream.head, config.eval_split, args, model_info)

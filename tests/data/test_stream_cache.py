"""A stream of pinned sources is built once and read back by later runs; anything that could change what the
build gives (spec, sizes, test reading, clbench's data code) gives a new entry, and unpinned sources are never
kept."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from clbench.data import Stream, Task, stream_cache, streams
from clbench.data.streams import cache_dir, load_stream, load_stream_spec


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "streams").glob("*.json"))


def _no_build(*args: Any, **kwargs: Any) -> Stream:
    raise AssertionError("the stream was built again instead of read back")


def test_a_second_load_reads_the_built_stream_back(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = load_stream("synthetic", train_size=40, test_size=20)
    assert len(_entries(fresh_cache)) == 1
    monkeypatch.setattr(streams, "build_stream", _no_build)
    again = load_stream("synthetic", train_size=40, test_size=20)
    assert again == built  # every field, texts and labels as tuples, in order
    assert again.tasks[0].val_texts and again.infos() == built.infos()


def test_every_field_survives_the_round_trip(tmp_path: Path) -> None:
    task = Task(name="a", classes=("x", "y"), train_texts=("t1", "t2"), train_labels=(0, 1), test_texts=("u",),
                test_labels=(1,), max_length=64, truncation="head_tail", source="pypi", description="d",
                train_groups=("g1", "g2"), val_texts=("v\u00e9",), val_labels=(0,), kind="preference")
    stream = Stream(name="s", version=3, seed=7, tasks=(task, replace(task, name="b")), description="two",
                    head="task", label_space="by-name", general_texts=("general",), general_source="pypi:x")
    path = tmp_path / "entry.json"
    stream_cache.write(path, stream)
    assert stream_cache.read(path) == stream


def test_what_changes_the_build_changes_the_entry(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_stream_spec("synthetic", train_size=40, test_size=20)
    path = stream_cache.entry_path(cache_dir(), spec, None, True)
    assert path is not None and path.parent == fresh_cache / "streams"
    assert stream_cache.entry_path(cache_dir(), spec, None, True) == path  # stable within and across processes
    others = [
        stream_cache.entry_path(cache_dir(), load_stream_spec("synthetic", train_size=41, test_size=20), None, True),
        stream_cache.entry_path(cache_dir(), load_stream_spec("synthetic", train_size=40, test_size=20,
                                                              val_fraction=0.2), None, True),
        stream_cache.entry_path(cache_dir(), replace(spec, seed=spec.seed + 1), None, True),
        stream_cache.entry_path(cache_dir(), spec, None, False),  # no test data read
        stream_cache.entry_path(cache_dir(), spec, Path("elsewhere"), True),
    ]
    monkeypatch.setattr(stream_cache, "code_digest", lambda: "an edited splitter")
    others.append(stream_cache.entry_path(cache_dir(), spec, None, True))
    assert len({path, *others}) == len(others) + 1


def test_the_code_digest_covers_the_sources_and_the_splitter() -> None:
    root = Path(stream_cache.__file__).parent
    assert {"splits.py", "catalog.py", "sources/pypi.py"} <= {p.relative_to(root).as_posix()
                                                            for p in root.rglob("*.py")}
    assert len(stream_cache.code_digest()) == 64


def test_unpinned_sources_are_always_built(fresh_cache: Path) -> None:
    spec = load_stream_spec("synthetic", train_size=40, test_size=20)
    for source in ("files", "hf"):
        changed = replace(spec, tasks=(replace(spec.tasks[0], source=source), *spec.tasks[1:]))
        assert stream_cache.entry_path(cache_dir(), changed, None, True) is None
    general = replace(spec, general=replace(spec.tasks[0], source="files"))
    assert stream_cache.entry_path(cache_dir(), general, None, True) is None


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "no digest"])
def test_a_damaged_entry_is_built_again_and_replaced(fresh_cache: Path, damage: str) -> None:
    built = load_stream("synthetic", train_size=40, test_size=20)
    (entry,) = _entries(fresh_cache)
    data = entry.read_bytes()
    text = built.tasks[0].train_texts[0].encode()  # one letter of a text changed: still a well-formed stream
    flipped = data.replace(text, bytes([text[0] ^ 32]) + text[1:], 1)
    assert flipped != data
    entry.write_bytes({"flip": flipped, "truncate": data[:len(data) // 2], "empty": b"",
                       "no digest": data.partition(b"\n")[2]}[damage])
    assert stream_cache.read(entry) is None
    assert load_stream("synthetic", train_size=40, test_size=20) == built
    assert entry.read_bytes() == data


def test_an_unwritable_cache_still_builds(fresh_cache: Path) -> None:
    fresh_cache.mkdir(parents=True)
    (fresh_cache / "streams").write_text("a file where the folder belongs")
    built = load_stream("synthetic", train_size=40, test_size=20)
    assert built == load_stream("synthetic", train_size=40, test_size=20)
    assert (fresh_cache / "streams").read_text() == "a file where the folder belongs"

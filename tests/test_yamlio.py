"""The YAML reader for user files: line numbers in syntax errors, no Python tags, no alias bombs."""

from __future__ import annotations

from pathlib import Path

import pytest

from clbench.errors import ConfigError
from clbench.yamlio import MAX_VALUES, read_yaml


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "f.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_syntax_errors_name_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file '.*f.yaml' is not valid YAML \(line 3, column 4: "):
        read_yaml(write(tmp_path, "methods: [naive]\nepochs: 2\n lr: 0.1\n"), "config file", ConfigError)


@pytest.mark.parametrize(("text", "message"), [
    (b"a: caf\xe9\n", "not UTF-8: byte 0xe9 at offset 6"),
    ("a: !!python/object/apply:os.system ['true']\n", "line 1, column 4: could not determine a constructor"),
])
def test_bytes_and_tags_are_refused(tmp_path: Path, text: str | bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_yaml(write(tmp_path, text), "config file", ConfigError)


def test_an_alias_bomb_is_refused_naming_its_key(tmp_path: Path) -> None:
    bomb = "  - &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"  - &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcd", "bcde"))
    with pytest.raises(ConfigError, match=f"'epochs' expands to more than {MAX_VALUES} values") as info:
        read_yaml(write(tmp_path, "lr: 0.1\nepochs:\n" + bomb), "config file", ConfigError)
    assert len(str(info.value)) < 300


def test_ordinary_aliases_and_merges_still_work(tmp_path: Path) -> None:
    text = "base: &b {train_size: 8, test_size: 4}\ntask: {<<: *b, name: x}\nempty:\n"
    assert read_yaml(write(tmp_path, text), "stream file", ConfigError) == {
        "base": {"train_size": 8, "test_size": 4}, "task": {"train_size": 8, "test_size": 4, "name": "x"},
        "empty": None}
    assert read_yaml(write(tmp_path, ""), "stream file", ConfigError) is None

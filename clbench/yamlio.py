"""Reading the YAML files users hand us (run configs, stream files, a run's saved config.yaml).

Safe (no Python tags), bounded and exact about where a problem is: syntax errors name the file and the line,
and a document whose aliases expand beyond `MAX_VALUES` values (an "alias bomb": a few lines that expand to
millions of values once anything walks them) is refused before anything walks it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from clbench.errors import ClbenchError

MAX_VALUES = 100_000  # values after alias expansion: far above any real config or stream, far below a bomb


def read_yaml(path: str | Path, what: str, error: type[ClbenchError]) -> Any:
    """The parsed document of the YAML file `path` (None when empty), or `error` with a one-line message.

    Args:
        path: The file.
        what: What the file is, for messages, e.g. "config file".
        error: The ClbenchError subclass to raise.
    """
    where = f"{what} '{path}'"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{where} is not valid YAML (not UTF-8: byte {exc.object[exc.start]:#04x} at offset "
                    f"{exc.start}); re-save it as UTF-8") from None
    except OSError as exc:
        raise error(f"cannot read {where} ({exc.strerror}); pass a readable YAML file") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, where, error)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise error(f"{where} is not valid YAML ({at}{exc.problem or exc.context}); fix the syntax") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise error(f"{where} is not valid YAML ({first}); fix the syntax") from None
    except RecursionError:
        raise error(f"{where} nests its values too deeply to read; flatten it") from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, where: str, error: type[ClbenchError]) -> None:
    """Refuse a document whose aliases expand to more than MAX_VALUES values, naming the largest top-level key."""
    sizes: dict[int, int] = {}
    if _expanded_size(root, sizes) <= MAX_VALUES:
        return
    key = "the document"
    if isinstance(root, yaml.MappingNode) and root.value:
        k, _ = max(root.value, key=lambda kv: sizes[id(kv[1])])
        key = f"'{k.value}'" if isinstance(k, yaml.ScalarNode) else "a key"
    raise error(f"{where}: {key} expands to more than {MAX_VALUES} values through YAML aliases (&/*); write the "
                "values out without aliases")


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Values `node` stands for once aliases are expanded; `sizes` memoises shared (aliased) nodes."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 1  # a recursive alias counts once instead of looping
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    sizes[id(node)] = size
    return size

"""What a task's input is made of: one column, a template over columns, or a pair of them (e.g. NLI).

A source's `text` option takes one of three forms:

- a column name: ``text: review``;
- a template with ``{column}`` placeholders: ``text: "{title} {content}"`` (``{{`` and ``}}`` for braces);
- a list of two of the above, a text pair: ``text: [premise, hypothesis]``; the model reads it as the
  tokenizer's pair, ``[CLS] premise [SEP] hypothesis [SEP]`` (`clbench.data.tokenize`).

A pair travels through splitting, deduplication and caching as one string whose parts are joined by
`PAIR_SEPARATOR`, a private-use character that rendering removes from the data itself, so two pairs are the same
example exactly when both parts are.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clbench.errors import StreamError, suggest

PAIR_SEPARATOR = "\ue000"


def join_pair(first: str, second: str) -> str:
    """One string holding a text pair (see the module docstring)."""
    return f"{first}{PAIR_SEPARATOR}{second}"


PREFERENCE_SEPARATOR = "\ue001"


def join_preference(prompt: str, chosen: str, rejected: str) -> str:
    """One string holding a preference example (prompt, chosen response, rejected response).

    Like a pair, it travels through splitting, deduplication and caching as one text; `split_preference`
    takes it apart again when it is tokenised for a causal language model.
    """
    parts = [text.replace(PREFERENCE_SEPARATOR, " ").replace(PAIR_SEPARATOR, " ")
             for text in (prompt, chosen, rejected)]
    return PREFERENCE_SEPARATOR.join(parts)


def split_preference(text: str) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) of a text made by `join_preference`."""
    parts = text.split(PREFERENCE_SEPARATOR)
    if len(parts) != 3:
        raise ValueError(f"not a preference example (expected 3 parts, got {len(parts)}): {text[:60]!r}")
    return parts[0], parts[1], parts[2]


def split_pair(text: str) -> list[str]:
    """A rendered input's parts: [text] for a single text, [first, second] for a pair."""
    return [part.strip() for part in text.split(PAIR_SEPARATOR)] if PAIR_SEPARATOR in text else [text]


@dataclass(frozen=True)
class Part:
    """One side of an input: a column, or a template over columns."""

    source: str
    columns: tuple[str, ...]
    is_template: bool

    def render(self, row: Mapping[str, Any]) -> str | None:
        if not self.is_template:
            value = row.get(self.source)
            return None if value is None else str(value).replace(PAIR_SEPARATOR, " ")
        values = {c: "" if row.get(c) is None else str(row[c]).replace(PAIR_SEPARATOR, " ") for c in self.columns}
        return " ".join(self.source.format_map(values).split())


@dataclass(frozen=True)
class TextSpec:
    """A task's `text` option, parsed: one part, or two for a pair."""

    parts: tuple[Part, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the input reads, in order of first use."""
        return tuple(dict.fromkeys(c for part in self.parts for c in part.columns))

    def render(self, row: Mapping[str, Any]) -> str | None:
        """The input of one row; None when a part is missing or empty (the row is skipped)."""
        rendered = [part.render(row) for part in self.parts]
        if any(text is None or not text.strip() for text in rendered):
            return None
        texts = [str(text) for text in rendered]
        return texts[0] if len(texts) == 1 else join_pair(texts[0], texts[1])

    def check_columns(self, task: str, available: Sequence[str], where: str) -> None:
        """Raise a one-line StreamError if a column the input needs is not in `available`."""
        for column in self.columns:
            if column not in available:
                raise StreamError(f"task '{task}': text column '{column}' is not in {where}"
                                  f"{suggest(column, available)}; set 'text' to its columns")


def _part(task: str, value: Any) -> Part:
    if not isinstance(value, str) or not value.strip():
        raise StreamError(f"task '{task}': 'text' must name a column, a template such as \"{{title}} {{body}}\", "
                          f"or a pair [first, second]; got {value!r}")
    if "{" not in value and "}" not in value:
        return Part(value, (value,), False)
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
    except ValueError as exc:
        raise StreamError(f"task '{task}': text template {value!r} is malformed ({exc}); write columns as "
                          "{column} and literal braces as {{ }}") from None
    if not fields or any(not name or name.isdigit() or any(c in name for c in ".[]") for name in fields):
        raise StreamError(f"task '{task}': text template {value!r} needs {{column}} placeholders naming columns")
    return Part(value, tuple(dict.fromkeys(fields)), True)


def parse_text(task: str, value: Any, default: str = "text") -> TextSpec:
    """A source's `text` option -> TextSpec; one-line StreamError for anything else.

    Args:
        task: The task's name, for messages.
        value: The option's value (None: `default`).
        default: The column read when `text` is not given.
    """
    if value is None:
        value = default
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise StreamError(f"task '{task}': a text pair lists two parts, e.g. text: [premise, hypothesis]; got "
                              f"{len(value)}")
        return TextSpec((_part(task, value[0]), _part(task, value[1])))
    return TextSpec((_part(task, value),))

"""The exception hierarchy. The CLI turns any ClbenchError into one line on stderr and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ClbenchError(Exception):
    """Base class: a message that says what went wrong, which value caused it and what to do."""


class ConfigError(ClbenchError):
    """A run configuration, override or command-line value is invalid."""


class RegistryError(ClbenchError):
    """A method, stream or model name is unknown, duplicated or breaks the protocol."""


class StreamError(ClbenchError):
    """A stream definition or its data cannot be loaded."""


class FetchError(ClbenchError):
    """A pinned archive could not be fetched or failed verification."""


class RunDirError(ClbenchError):
    """The run directory is locked, unwritable or inconsistent with the requested run."""


class UnitFailed(ClbenchError):
    """One unit (method × seed) cannot go on; it is recorded as failed and the other units go on."""


def shown(value: object, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters, so a huge value (a YAML alias bomb, a long field) cannot
    swamp a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def suggest(value: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest choice, or a list of valid choices when none is close."""
    options = sorted(set(choices))
    close = difflib.get_close_matches(value, options, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    if len(options) <= 12:
        return f" (choose from: {', '.join(options)})"
    return ""

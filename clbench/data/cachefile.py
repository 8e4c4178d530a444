"""Cache entries written whole or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_entry(path: Path, write: Callable[[str], object]) -> None:
    """Write `path` by calling `write` on a temporary file in its folder, then rename that into place, readable
    by the group (0644). Best effort: an OSError leaves no entry and goes no further, since an entry that
    cannot be written only costs building it again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError:
        return
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError:
        return
    finally:
        Path(tmp).unlink(missing_ok=True)

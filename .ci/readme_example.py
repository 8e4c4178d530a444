"""Print the README's Python API example: the first ```python block under the '## Python API' heading."""

from __future__ import annotations

import re
import sys
from pathlib import Path


def example(readme: str) -> str:
    section = readme.split("## Python API", 1)
    if len(section) < 2:
        raise SystemExit("README has no '## Python API' section")
    match = re.search(r"```python\n(.*?)```", section[1], re.DOTALL)
    if match is None:
        raise SystemExit("the README's '## Python API' section has no ```python block")
    return match.group(1)


if __name__ == "__main__":
    sys.stdout.write(example(Path(sys.argv[1]).read_text(encoding="utf-8")))

"""clbench: does my fine-tuning method make the model forget?

A benchmark harness for continual learning on NLP task streams. Importing the package is cheap: torch,
transformers and pandas are imported only by the functions that need them.

The Python API (`clbench.api` documents it)::

    import clbench

    run = clbench.run(methods=["naive", "ewc"], stream="synthetic", model="tiny", out="runs/api")
    run.summary()                 # pandas DataFrame, one row per method × seed
    clbench.load("runs/api").records
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clbench.api import Run

__version__ = "0.1.0"
__all__ = ["__version__", "load", "run"]


def run(config: Any = None, /, **settings: Any) -> Run:
    """Run an experiment and return it read back; see `clbench.api.run` for the arguments."""
    from clbench.api import run as run_api

    return run_api(config, **settings)


def load(path: str | Path) -> Run:
    """Read a run directory back as a `clbench.api.Run`."""
    from clbench.api import load as load_api

    return load_api(path)

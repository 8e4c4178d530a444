"""Shared fixtures: a private cache per test session, tiny models and small synthetic runs (no downloads)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

NETWORK_CACHE = Path(os.environ.get("CLBENCH_TEST_CACHE", Path.home() / ".cache" / "clbench-test"))


def pytest_configure(config: pytest.Config) -> None:
    """One intra-op thread: the tiny models gain nothing from more, and on a busy 2-core machine a second
    thread made them up to 50x slower through oversubscription. Results do not depend on it."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
                    request: pytest.FixtureRequest) -> None:
    """Unit tests get a fresh cache; network tests share one persistent cache so archives download once."""
    if request.node.get_closest_marker("network"):
        monkeypatch.setenv("CLBENCH_CACHE", str(NETWORK_CACHE))
    else:
        monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty clbench cache for this test alone (the session cache may already hold the stream under test,
    built or tokenised)."""
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def tiny_config(tmp_path: Path, methods: tuple[str, ...] = ("naive",), **overrides: Any) -> Any:
    """A RunConfig for the synthetic stream and the tiny model, small enough to run in about a second."""
    from clbench.config import build_config

    values: dict[str, Any] = {"methods": list(methods), "stream": "synthetic", "model": "tiny",
                              "out": str(tmp_path / "run"), "train_size": 48, "test_size": 24, "epochs": 1,
                              "batch_size": 8, "eval_batch_size": 32, "buffer_size": 16}
    method_options = overrides.pop("method_options", {})
    values.update(overrides)
    return build_config(values, {f"{m}.{k}": v for m, opts in method_options.items() for k, v in opts.items()})


@pytest.fixture
def run_tiny(tmp_path: Path) -> Callable[..., tuple[Path, list[dict[str, Any]]]]:
    """Run methods on the tiny synthetic setup; returns (run dir, result records)."""
    from clbench.results import read_records
    from clbench.training.progress import Progress
    from clbench.training.run import run

    def _run(methods: tuple[str, ...] = ("naive",), plugins: tuple[str, ...] = (), **overrides: Any,
             ) -> tuple[Path, list[dict[str, Any]]]:
        from clbench.registry import MethodRegistry

        config = tiny_config(tmp_path, methods, plugins=list(plugins), **overrides)
        out = run(config, registry=MethodRegistry.default(plugins), progress=Progress("quiet"))
        return out, read_records(out)

    return _run

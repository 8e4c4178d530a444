"""`--executor ray`: one Ray task per unit on a local cluster started by the test; the same results as local."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from runs_util import comparable, tiny_run

ray = pytest.importorskip("ray")


@pytest.fixture
def local_cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_ray_executor_gives_the_local_results(tmp_path: Path, local_cluster: None) -> None:
    local = tiny_run(tmp_path / "local", ("naive", "ewc"), seeds=[0, 1])
    distributed = tiny_run(tmp_path / "ray", ("naive", "ewc"), seeds=[0, 1], executor="ray")
    assert comparable(distributed) == comparable(local)
    done = {r["unit"] for r in distributed if r["type"] == "unit" and r["value"] == "done"}
    assert done == {"naive/seed0", "ewc/seed0", "naive/seed1", "ewc/seed1"}
    assert not (tmp_path / "ray" / ".lock").exists()

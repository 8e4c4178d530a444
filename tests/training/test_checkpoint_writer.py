"""Checkpoints written in the background hold the state at the moment of `save`, file for file what a
synchronous save writes, and a failed write surfaces at `wait` with the previous checkpoint still in force."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clbench.models import build_model
from clbench.training.checkpoint import CheckpointStore

RNG = {"runner": torch.Generator().manual_seed(1).get_state(), "method": torch.Generator().get_state(),
       "torch": torch.get_rng_state()}


def state(model: torch.nn.Module) -> dict[str, object]:
    return {"fisher": {n: p.detach().square() for n, p in model.named_parameters()}, "count": 3}


def save(store: CheckpointStore, model: torch.nn.Module, method: dict[str, object], row: int = 1) -> None:
    store.save("ewc@a", 0, row, f"t{row}", model, method, RNG, [torch.randn(4, 3), torch.randn(2, 3)])


def test_background_save_writes_the_state_at_save_time_file_for_file(tmp_path: Path) -> None:
    model = build_model("tiny", 3, 0)
    method = state(model)
    torch.manual_seed(0)
    sync = CheckpointStore(tmp_path / "sync", background=False)
    save(sync, model, method)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    background = CheckpointStore(tmp_path / "background")
    torch.manual_seed(0)
    save(background, model, method)
    with torch.no_grad():  # training goes on while the files are written
        for p in model.parameters():
            p.add_(1.0)
        for t in method["fisher"].values():  # type: ignore[attr-defined]
            t.mul_(-1.0)
    background.wait()
    folder = Path("checkpoints") / "ewc%40a" / "seed0"
    for name in ("checkpoint.json", "task1/model.safetensors", "task1/method.safetensors", "task1/method.json",
                 "task1/rng.safetensors", "task1/runner.safetensors"):
        written = (tmp_path / "background" / folder / name).read_bytes()
        assert written == (tmp_path / "sync" / folder / name).read_bytes(), name
    loaded = background.load("ewc@a", 0, torch.device("cpu"))
    assert loaded is not None and loaded.row == 1
    assert loaded.model.keys() == expected.keys()
    assert all(torch.equal(loaded.model[k], v) for k, v in expected.items())


def test_a_failed_write_surfaces_at_wait_and_leaves_the_previous_checkpoint(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model("tiny", 3, 0)
    store = CheckpointStore(tmp_path)
    save(store, model, state(model), row=1)
    store.wait()

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("clbench.training.checkpoint.save_file", full)
    save(store, model, state(model), row=2)
    with pytest.raises(OSError, match="No space left"):
        store.wait()
    store.wait()  # reported once
    assert store.marker("ewc@a", 0)["row"] == 1  # type: ignore[index]
    assert store.load("ewc@a", 0, torch.device("cpu")) is not None


def test_a_packed_snapshot_writes_the_bytes_of_separate_copies(tmp_path: Path) -> None:
    """The snapshot's tensors are views of one buffer; the files must not show it (no shared storage written
    twice, no tensor written with its neighbours)."""
    from safetensors.torch import save

    model = build_model("tiny", 3, 0)
    store = CheckpointStore(tmp_path, background=False)
    for row in (1, 2):  # the second save reuses the buffer
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.5)
        expected = save({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()})
        store.save("naive", 0, row, f"t{row}", model, {}, RNG, [torch.randn(4, 3)])
        written = (tmp_path / "checkpoints" / "naive" / "seed0" / f"task{row}" / "model.safetensors").read_bytes()
        assert written == expected, row

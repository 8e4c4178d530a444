"""Checkpoint folders: one per method name, never shared by two names and never outside `checkpoints/`."""

from __future__ import annotations

from clbench.training.checkpoint import folder_name


def test_checkpoint_folder_names_are_one_to_one() -> None:
    names = ["naive@a", "naive_a", "naive%40a", "avalanche:ewc", "..", ".", "a/b", "lora@frozen-head"]
    folders = [folder_name(n) for n in names]
    assert len(set(folders)) == len(names)
    assert folder_name("naive_a") == "naive_a" and folder_name("lora@frozen-head") == "lora%40frozen-head"
    assert all("/" not in f and f not in (".", "..") for f in folders)

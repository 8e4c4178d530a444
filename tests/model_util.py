"""Helpers for tests on the tiny model, whose dropout (0.1) is on in train mode as in a real run."""

from __future__ import annotations

from torch import nn


def without_dropout(model: nn.Module) -> nn.Module:
    """`model` with every dropout probability set to 0, for tests that need the same numbers from two passes
    while the model stays in train mode (e.g. when a third-party hook calls `model.train()`)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0  # BERT's attention reads its probability from this module too
    return model

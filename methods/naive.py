"""Naive fine-tuning: train every task in turn with plain cross-entropy, no protection against forgetting.

The lower bound every continual-learning method is compared against (e.g. Lopez-Paz & Ranzato, "Gradient
Episodic Memory for Continual Learning", NeurIPS 2017, where it is called "single"). It uses no hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from clbench.methods import Hooks, MethodConfig


@dataclass(frozen=True)
class NaiveConfig(MethodConfig):
    """Naive fine-tuning has no hyperparameters of its own."""


class Naive(Hooks):
    """Plain sequential fine-tuning with cross-entropy; the forgetting baseline."""

    name: ClassVar[str] = "naive"
    config_cls: ClassVar[type[MethodConfig]] = NaiveConfig
    first_task_is_finetuning = True  # task 1 is plain fine-tuning: the runner may share it
    task_kinds: ClassVar[tuple[str, ...]] = ("classification", "preference", "generation")  # CE, DPO or target NLL
    citation: ClassVar[str] = "Lopez-Paz & Ranzato 2017 (baseline 'single')"

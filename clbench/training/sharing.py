"""Shared work between the units of one seed: row-0 evaluation and first-task training.

Methods whose first task is plain fine-tuning (`first_task_is_finetuning`) start from the same model, so the
runner trains task 1 once per seed and hands the trained weights to the others. Sharing is decided from facts,
not names; a unit reuses another's first task only when, right before training it,

- the method declares `first_task_is_finetuning` (its class or `__init__` sets it True; `Hooks`' default is
  False) and it has no `external_loop`;
- both evaluate along training at the same `eval_every` (the producer's curve logits are replayed as the
  reusing unit's curve records), and the stream has no general text (whose records need the model itself);
- `setup` returned the model the runner built (no wrapper such as PEFT's LoRA model);
- `train_data` returned the task's own training split, the optimiser has the same type and defaults, and the
  schedule is the same (steps, warm-up, clipping, batch size: a method may set its own lr or budget);
- the trainable parameters (names, in order), the model's whole state (compared exactly, tensor by tensor),
  the runner's data-order generator and torch's global RNG states are identical to the first unit's.

Each unit still runs its own `setup`, `before_task` and `after_task` (e.g. EWC's Fisher on task 1's data) and
its own evaluations. The step hooks (`extra_inputs`, `loss`, `after_backward`, `after_step`) of the reusing
unit are not called on task 1: a method that declares `first_task_is_finetuning` promises they leave training
unchanged there (SI's path integral, which needs them, must not declare it). Row 0 is shared likewise
whenever two units' models are identical after `setup`. Only the latest seeds' entries are kept (a few
model copies in memory), and within one run a unit keeps no copy that no later unit of its seed could reuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from clbench.data import AnySplit
from clbench.results import unit_id


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(model: nn.Module, state: dict[str, Tensor]) -> bool:
    now = model.state_dict()
    if now.keys() != state.keys():
        return False
    return all(now[k].shape == v.shape and now[k].dtype == v.dtype and torch.equal(now[k], v)
               for k, v in state.items())


@dataclass
class TrainedFirstTask:
    """Task 1 trained by `producer`: weights and RNG states right after its last optimiser step."""

    producer: str
    key: tuple[Any, ...]
    before: dict[str, Tensor]
    after: dict[str, Tensor] | None = None
    generator: Tensor | None = None  # the runner's data-order generator after training
    rng: Tensor | None = None  # torch's global CPU RNG state after training
    cuda_rng: Tensor | None = None
    steps: int = 0
    optimizer_state_mb: float = 0.0
    curves: list[tuple[int, list[Tensor]]] = field(default_factory=list)  # (step, logits) of each curve evaluation


class SharedStart:
    """Cache of row-0 logits and first-task training, shared by identical units.

    Entries are kept for the `max_seeds` most recent seeds (a run trains its seeds one after another, so 1;
    a tuning search revisits seeds trial after trial and keeps more). Within a seed, one trained first task
    is kept per key (e.g. one per learning rate).
    """

    def __init__(self, max_seeds: int = 1, units: Sequence[tuple[str, int]] | None = None) -> None:
        """`units`: the (method, seed) units of the one run this cache serves, in training order; a unit then
        stores nothing (no copy of the model's state) when no later unit of its seed could reuse it. None: store
        everything (a caller that reuses the cache across runs, e.g. a tuning search)."""
        self.max_seeds = max_seeds
        self.units = [unit_id(name, seed) for name, seed in units] if units is not None else None
        self.seeds = [seed for _, seed in units] if units is not None else []
        self.row0: dict[int, list[tuple[dict[str, Tensor], list[Tensor]]]] = {}
        self.firsts: dict[int, dict[tuple[Any, ...], TrainedFirstTask]] = {}

    def _reusable_later(self, seed: int, producer: str) -> bool:
        """Whether a unit trained after `producer` could reuse what it stores for `seed`."""
        if self.units is None:
            return True
        later = self.units.index(producer) + 1 if producer in self.units else 0
        return seed in self.seeds[later:]

    def _for_seed(self, seed: int) -> None:
        """Make `seed` the most recent seed, dropping the oldest beyond `max_seeds`."""
        self.row0[seed] = self.row0.pop(seed, [])
        self.firsts[seed] = self.firsts.pop(seed, {})
        for cache in (self.row0, self.firsts):
            while len(cache) > self.max_seeds:
                del cache[next(iter(cache))]

    def row0_logits(self, seed: int, model: nn.Module) -> list[Tensor] | None:
        """Row-0 logits of an identical model evaluated before, or None."""
        self._for_seed(seed)
        for state, logits in self.row0[seed]:
            if _same_state(model, state):
                return logits
        return None

    def add_row0(self, seed: int, producer: str, model: nn.Module, logits: list[Tensor]) -> None:
        """Keep the row-0 logits of `producer`'s model for identical models of later units."""
        self._for_seed(seed)
        if self._reusable_later(seed, producer):
            self.row0[seed].append((_state(model), logits))

    @staticmethod
    def key(method: Any, built: nn.Module, model: nn.Module, data: AnySplit, base: AnySplit,
            params: list[nn.Parameter], optimizer: torch.optim.Optimizer, generator: torch.Generator,
            eval_every: int, schedule: tuple[Any, ...] = (), general_text: bool = False) -> tuple[Any, ...] | None:
        """What must match for two units to share task 1's training, or None when this unit cannot share."""
        if (not method.first_task_is_finetuning or method.external_loop or (eval_every and general_text)
                or model is not built or data is not base):
            return None
        names = {id(p): n for n, p in model.named_parameters()}
        if any(id(p) not in names for p in params):
            return None
        defaults = tuple(sorted((k, repr(v)) for k, v in optimizer.defaults.items()))
        return (type(optimizer).__name__, defaults, schedule, eval_every, tuple(names[id(p)] for p in params),
                bytes(generator.get_state().numpy()), bytes(torch.get_rng_state().numpy()))

    def reusable(self, seed: int, key: tuple[Any, ...] | None, model: nn.Module) -> TrainedFirstTask | None:
        """The trained first task this unit may start from, or None (then it trains task 1 itself)."""
        self._for_seed(seed)
        first = self.firsts[seed].get(key) if key is not None else None
        if first is None or first.after is None:
            return None
        return first if _same_state(model, first.before) else None

    def begin(self, seed: int, key: tuple[Any, ...] | None, producer: str, model: nn.Module) -> None:
        """Called before a unit trains task 1 itself: remember its starting point if it could be shared."""
        self._for_seed(seed)
        if key is not None and key not in self.firsts[seed] and self._reusable_later(seed, producer):
            self.firsts[seed][key] = TrainedFirstTask(producer, key, _state(model))

    def end(self, seed: int, producer: str, model: nn.Module, generator: torch.Generator, steps: int,
            optimizer_state_mb: float, curves: Sequence[tuple[int, list[Tensor]]] = ()) -> None:
        """Called after that unit trained task 1 without diverging: keep its trained weights and RNG states, and
        the logits of its evaluations along training (`curves`)."""
        first = next((f for f in self.firsts.get(seed, {}).values() if f.producer == producer and f.after is None),
                     None)
        if first is None:
            return
        first.after = _state(model)
        first.generator = generator.get_state()
        first.rng = torch.get_rng_state()
        device = next((t.device for t in first.after.values() if t.is_cuda), None)
        first.cuda_rng = torch.cuda.get_rng_state(device) if device is not None else None
        first.steps = steps
        first.optimizer_state_mb = optimizer_state_mb
        first.curves = list(curves)

    @staticmethod
    def apply(first: TrainedFirstTask, model: nn.Module, generator: torch.Generator) -> int:
        """Start a unit from the shared first task: weights and RNG states as if it had trained it."""
        assert first.after is not None and first.generator is not None and first.rng is not None
        model.load_state_dict(first.after)
        generator.set_state(first.generator)
        torch.set_rng_state(first.rng)
        if first.cuda_rng is not None:
            device = next(t.device for t in first.after.values() if t.is_cuda)
            torch.cuda.set_rng_state(first.cuda_rng, device)
        return first.steps

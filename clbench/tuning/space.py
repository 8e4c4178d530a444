"""What a search varies for one method: the run's shared training fields and the method's own options, each
with the space declared beside it (`option(..., search=...)`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from clbench.config import RUN_FIELDS, TRAINING_FIELDS
from clbench.errors import ConfigError, suggest
from clbench.search import Space, Trial


@dataclass(frozen=True)
class Param:
    """One searched value: `name` is a training field (`lr`, `epochs`) or a method option (`penalty_weight`)."""

    name: str
    space: Space

    def sample(self, trial: Trial) -> Any:
        return self.space.sample(trial, self.name)


def method_space(method: str, cls: Any, only: tuple[str, ...] = (), fixed_steps: bool = False) -> list[Param]:
    """The searched parameters of `method`: training fields first, then its options, in declaration order.

    Args:
        method: the method's name in the run (a variant `lora@frozen-head` has its base's options).
        cls: its method class.
        only: names to keep (`lr`, `epochs`, `METHOD.OPTION` or `OPTION`); empty keeps every declared space.
        fixed_steps: the run sets `max_steps`, so `epochs` changes nothing and is not searched.

    Raises:
        ConfigError: a name in `only` has no search space for this method.
    """
    params = [Param(name, RUN_FIELDS[name].metadata["search"]) for name in TRAINING_FIELDS
              if "search" in RUN_FIELDS[name].metadata and not (fixed_steps and name == "epochs")]
    params += [Param(f.name, f.metadata["search"]) for f in fields(cls.config_cls) if "search" in f.metadata]
    if not only:
        return params
    wanted = {name.removeprefix(f"{method}.") for name in only if "." not in name or name.startswith(f"{method}.")}
    known = {p.name for p in params}
    unknown = sorted(wanted - known - {f.name for f in fields(cls.config_cls)} - set(TRAINING_FIELDS))
    if unknown:
        raise ConfigError(f"--params names '{unknown[0]}', which {method} does not have{suggest(unknown[0], known)}")
    missing = sorted(wanted & (set(TRAINING_FIELDS) | {f.name for f in fields(cls.config_cls)}) - known)
    if missing:
        raise ConfigError(f"--params names '{missing[0]}', which has no search space for {method}; declare one "
                          "with option(..., search=...) or drop it")
    return [p for p in params if p.name in wanted]

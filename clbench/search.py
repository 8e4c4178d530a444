"""Search spaces: which option `clbench tune` may vary, and over which range, declared beside the option.

A config field declares its space with `option(default, help, search=...)`::

    penalty_weight: float = option(1000.0, "λ in Eq. 3 ...", search=LogUniform(1.0, 1e6))

`LogUniform` and `Uniform` draw floats, `IntRange` integers, `Choice` one of a few values. A space only
describes; `clbench.tuning` hands it an Optuna trial to draw from, so importing this module costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol


class Trial(Protocol):
    """The part of `optuna.Trial` a space uses."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class LogUniform:
    """A float drawn uniformly in log space from [low, high] (learning rates, penalty weights)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high or not math.isfinite(self.high):
            raise ValueError(f"LogUniform({self.low}, {self.high}) needs 0 < low < high < inf")

    def sample(self, trial: Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=True)

    def describe(self) -> str:
        return f"log-uniform [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Uniform:
    """A float drawn uniformly from [low, high]."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low < self.high or not math.isfinite(self.low) or not math.isfinite(self.high):
            raise ValueError(f"Uniform({self.low}, {self.high}) needs finite low < high")

    def sample(self, trial: Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high)

    def describe(self) -> str:
        return f"uniform [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class IntRange:
    """An integer drawn from [low, high] (both included), uniformly or in log space."""

    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low < self.high or (self.log and self.low < 1):
            raise ValueError(f"IntRange({self.low}, {self.high}) needs low < high (and low >= 1 when log)")

    def sample(self, trial: Trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log)

    def describe(self) -> str:
        return f"integer{' log' if self.log else ''} [{self.low}, {self.high}]"

    def grid(self) -> tuple[int, ...]:
        """Every value the space can draw."""
        return tuple(range(self.low, self.high + 1))


@dataclass(frozen=True)
class Choice:
    """One of a few values (a grid: trials that draw the same value can share work)."""

    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        if len(self.values) < 2 or len(set(self.values)) != len(self.values):
            raise ValueError(f"Choice{self.values} needs at least two distinct values")

    def sample(self, trial: Trial, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.values))

    def describe(self) -> str:
        return "one of " + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in self.values)

    def grid(self) -> tuple[Any, ...]:
        """Every value the space can draw."""
        return self.values


Space = LogUniform | Uniform | IntRange | Choice

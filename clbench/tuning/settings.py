"""How a search runs (`TuneSettings`) and the files it writes in its directory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STUDY = "study.journal"
SETTINGS = "tune.yaml"
TUNED = "tuned.yaml"
OBJECTIVES = ("acc_cil", "acc_til")
PRUNERS = ("percentile", "median", "halving", "none")


@dataclass(frozen=True)
class TuneSettings:
    """How to search, beside the run configuration that says what to train."""

    trials: int  # per method: every method gets the same budget
    objective: str = "acc_cil"  # accuracy matrix whose ACC after the whole stream is maximised
    tune_stream: str | None = None  # tune here, apply to the run's stream (Cha & Cho's GTEP); same task count
    eval_seeds: tuple[int, ...] = (0, 1, 2)  # seeds the tuned config runs on test
    params: tuple[str, ...] = ()  # restrict the search to these names (default: every declared space)
    pruner: str = "percentile"
    sampler_seed: int = 0
    prune_every: int = 0  # also report to the pruner every N training steps within a task (0: after tasks only)

    def to_dict(self) -> dict[str, Any]:
        return {"trials": self.trials, "objective": self.objective, "tune_stream": self.tune_stream,
                "eval_seeds": list(self.eval_seeds), "params": list(self.params), "pruner": self.pruner,
                "sampler_seed": self.sampler_seed, "prune_every": self.prune_every}


# Settings added after searches were committed: a saved search without them ran with these values.
SETTING_DEFAULTS = {"prune_every": 0}

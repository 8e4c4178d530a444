"""Progress output: where a run is (unit i/N, task t/T, the run's ETA), accuracy as each task finishes, and
tqdm step bars with ETA on a terminal (plain lines otherwise); nothing but errors with --quiet.

`Progress` is also a record sink (`clbench.results.RecordSink`): the run directory forwards every record batch
to it, so accuracy is printed from the records themselves, as soon as they are written, whichever executor
trained the unit.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any


def duration(seconds: float) -> str:
    """12 -> '12s', 95 -> '1m35s', 4000 -> '1h06m'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# Libraries whose warnings and logs are meant for their developers, not for a clbench user.
LIBRARIES = r"(torch|transformers|peft|datasets|huggingface_hub|accelerate|tokenizers|ray|avalanche|sklearn)(\.|$)"


@contextlib.contextmanager
def quiet_libraries(verbose: bool = False) -> Iterator[None]:
    """Keep library warnings (FutureWarning and deprecations from anywhere, any warning raised inside the
    libraries), transformers'/datasets' info logs and their download bars out of the user's output; `verbose`
    leaves everything as it is. Filters and verbosity are restored on exit."""
    if verbose:
        yield
        return
    import logging

    loggers = [logging.getLogger(name) for name in ("transformers", "datasets", "huggingface_hub", "peft")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("ignore", module=LIBRARIES)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


class Progress:
    """Reports units, tasks, steps and finished tasks' accuracy. `mode` is "bar", "lines" or "quiet"; default
    picks by TTY."""

    def __init__(self, mode: str | None = None, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        if mode is None:
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode = mode
        self._bar: Any = None
        self._last_line = 0.0
        self._units = 0  # units this process runs, and the tasks each trains (for the run's ETA)
        self._tasks = 0
        self._unit = 0
        self._done = 0  # tasks finished (trained and evaluated) in this process
        self._run_t0 = time.perf_counter()

    def message(self, text: str) -> None:
        if self.mode == "quiet":
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def start_run(self, units: int, tasks: int) -> None:
        """The run will train `units` units of `tasks` tasks each (in this process)."""
        self._units, self._tasks, self._done, self._run_t0 = units, tasks, 0, time.perf_counter()

    def start_unit(self, index: int) -> None:
        """Unit `index` (0-based) of those announced by `start_run` begins."""
        self._unit = index + 1

    def eta(self) -> str:
        """The run's remaining time from the mean time per finished task so far, or '' before the first."""
        total = self._units * self._tasks
        if not self._done or not total:
            return ""
        left = (time.perf_counter() - self._run_t0) / self._done * max(total - self._done, 0)
        return f"run eta {duration(left)}"

    def begin_task(self, unit: str, index: int, tasks: int, name: str) -> None:
        """Task `index` (0-based) of `tasks` begins in `unit`: where the run is, and how long it has left."""
        where = f" [unit {self._unit}/{self._units}]" if self._units else ""
        eta = self.eta()
        self.message(f"{unit}{where}: task {index + 1}/{tasks} '{name}'" + (f" ({eta})" if eta else ""))

    def reused(self, unit: str, task: str, producer: str, steps: int) -> None:
        """`unit` starts from the first task `producer` trained instead of training it again."""
        self.message(f"{unit} {task}: reusing the first task as trained by {producer} ({steps} steps), not "
                     "training it again")

    def start_task(self, label: str, total: int) -> None:
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, file=self.stream, leave=False, dynamic_ncols=True)
        elif self.mode == "lines":
            self._label, self._total, self._t0 = label, total, time.perf_counter()
            self.message(f"{label}: {total} steps")

    def step(self, done: int, loss: float) -> None:
        if self.mode == "bar" and self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        elif self.mode == "lines":
            now = time.perf_counter()
            if now - self._last_line > 10 or done == self._total:
                elapsed = now - self._t0
                eta = elapsed / max(done, 1) * (self._total - done)
                self.message(f"{self._label}: step {done}/{self._total} loss {loss:.3f} "
                             f"elapsed {elapsed:.0f}s eta {eta:.0f}s")
                self._last_line = now

    def end_task(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        """A record batch was written: after a task's evaluation, print each task's accuracy. The records of a
        causal LM's evaluation name what their `acc_cil` measures (`measure`: preference or answer accuracy)."""
        rows: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
        for r in records:
            if r.get("type") == "accuracy" and r.get("row", 0) >= 1 and r.get("metric") == "acc_cil":
                rows.setdefault((str(r["unit"]), int(r["row"])), []).append(r)
        for (unit, row), evaluated in rows.items():
            self._done += 1
            seen = sorted((r for r in evaluated if int(r.get("eval_index", 0)) < row),
                          key=lambda r: int(r.get("eval_index", 0)))
            cells = ", ".join(f"{r['eval_task']} {float(r['value']):.3f}" for r in seen)
            mean = sum(float(r["value"]) for r in seen) / max(len(seen), 1)
            measure = evaluated[0].get("measure")
            label = f"{measure} on the tasks so far" if measure else "accuracy on the tasks so far (class-incremental)"
            self.message(f"{unit}: after '{evaluated[0].get('task')}', {label}: {cells}; mean {mean:.3f}")

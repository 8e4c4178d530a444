"""Progress output: tqdm bars with ETA on a terminal, plain lines otherwise, nothing with --quiet."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """Reports units, tasks and steps. `mode` is "bar", "lines" or "quiet"; default picks by TTY."""

    def __init__(self, mode: str | None = None, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        if mode is None:
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode = mode
        self._bar: Any = None
        self._last_line = 0.0

    def message(self, text: str) -> None:
        if self.mode == "quiet":
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

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

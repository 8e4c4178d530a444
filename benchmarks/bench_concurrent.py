"""Units per minute with several units on one device at once vs one at a time (issue #14: a MiniLM unit on a
GPU is bound by kernel launches, so a card should train several at once).

Runs `--units` units (naive, one seed each) as separate `clbench run` processes, first one after another, then
all at the same time, on the same device, and reports units per minute for both and their ratio
(concurrent / sequential throughput; above 1 means running them together pays). Each process tokenises from
the warm cache and loads the model itself, as concurrent units of a search or a grid would.

    python -m clbench.benchmarks.bench_concurrent [--units 4] [--model minilm] [--stream reviews]
        [--steps 40] [--train-size 320] [--test-size 100] [--json PATH]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clbench.benchmarks._timing import machine
from clbench.benchmarks.bench_fip import write_json


def command(args: argparse.Namespace, seed: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "clbench.cli", "run", "--methods", "naive", "--seeds", str(seed),
            "--stream", args.stream, "--model", args.model, "--max-steps", str(args.steps),
            "--train-size", str(args.train_size), "--test-size", str(args.test_size), "--quiet",
            "--out", str(out)]


def launch(commands: list[list[str]], together: bool) -> float:
    """Wall seconds to run every command, all at once or one after another; raises if one fails."""
    start = time.perf_counter()
    if together:
        processes = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for c in commands]
        outputs = [p.communicate()[0] for p in processes]
        codes = [p.returncode for p in processes]
    else:
        done = [subprocess.run(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False) for c in commands]
        outputs, codes = [d.stdout for d in done], [d.returncode for d in done]
    seconds = time.perf_counter() - start
    for code, output in zip(codes, outputs):
        if code != 0:
            raise RuntimeError(f"a unit failed (exit {code}):\n{output.decode(errors='replace')[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=4)
    parser.add_argument("--model", default="minilm", help="minilm, tiny or a local model folder")
    parser.add_argument("--stream", default="reviews")
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps per task")
    parser.add_argument("--train-size", type=int, default=320)
    parser.add_argument("--test-size", type=int, default=100)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    root = Path(tempfile.mkdtemp(prefix="bench_concurrent-"))
    try:
        launch([command(args, 0, root / "warm")], together=False)  # caches and model files warm
        sequential = launch([command(args, s, root / f"seq{s}") for s in range(args.units)], together=False)
        concurrent = launch([command(args, s, root / f"con{s}") for s in range(args.units)], together=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    per_minute = {"sequential": 60 * args.units / sequential, "concurrent": 60 * args.units / concurrent}
    ratio = per_minute["concurrent"] / per_minute["sequential"]
    print(f"{args.units} naive units on {args.stream} with {args.model}, {args.steps} steps per task: "
          f"one at a time {sequential:.1f} s ({per_minute['sequential']:.2f} units/min), all at once "
          f"{concurrent:.1f} s ({per_minute['concurrent']:.2f} units/min): throughput x{ratio:.2f}")
    if args.json:
        write_json(args.json, {"machine": machine(), "args": vars(args), "sequential_s": sequential,
                               "concurrent_s": concurrent, "units_per_minute": per_minute, "throughput_ratio": ratio})


if __name__ == "__main__":
    main()

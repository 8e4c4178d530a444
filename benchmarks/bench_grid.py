"""A grid in one run vs one run per method (target <= 0.75x).

Wall time of one `clbench run` of several methods together (default naive, ewc, gem, lora, fip) versus the
sum of the same methods run one at a time, each a full `clbench.training.run.run` into its own directory. In the
grid the runner tokenises once and lets the units of a seed share work: row 0 when the models are identical
after `setup`, and task 1's training for the methods that declare their first task plain fine-tuning (LoRA
wraps the model and trains its own). Both sides run in this process, interleaved, and the figure is the median
of paired ratios (see `_timing.py`). The script also checks that the grid's results equal the single runs'.

    python benchmarks/bench_grid.py [--methods naive,ewc,gem,lora,fip] [--model minilm] [--stream reviews]
                                    [--steps 8] [--train-size 64] [--test-size 32] [--repeats 1]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from clbench.benchmarks._timing import machine, median_ratio, timed, verdict
from clbench.config import build_config
from clbench.registry import MethodRegistry
from clbench.results import read_records
from clbench.training.progress import Progress
from clbench.training.run import run

NOT_COMPARED = {"profile", "note", "resume"}


def add_size_options(parser: argparse.ArgumentParser) -> None:
    """The model, stream and reduced sizes of a benchmark made of whole runs (also bench_tune's)."""
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--stream", default="reviews")
    parser.add_argument("--steps", type=int, default=8, help="optimiser steps per task")
    parser.add_argument("--train-size", type=int, default=64)
    parser.add_argument("--test-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)


def raw_config(args: argparse.Namespace, methods: list[str], out: Path) -> dict[str, Any]:
    """A run of `methods` at the sizes of `add_size_options`, seed 0, into `out`."""
    return {"methods": methods, "stream": args.stream, "model": args.model, "out": str(out),
            "max_steps": args.steps, "train_size": args.train_size, "test_size": args.test_size,
            "batch_size": args.batch_size, "seeds": [0]}


def one_run(out: Path, methods: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    run(build_config(raw_config(args, methods, out)), registry=MethodRegistry.default(), progress=Progress("quiet"))
    return read_records(out)


def learnt(records: list[dict[str, Any]]) -> dict[tuple[Any, ...], Any]:
    return {(r["unit"], r["type"], r["row"], r["metric"], r.get("eval_index"), r.get("param")): r["value"]
            for r in records if r["type"] not in NOT_COMPARED}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="naive,ewc,gem,lora,fip",
                        help="comma-separated methods (see `clbench list methods`)")
    add_size_options(parser)
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    registry = MethodRegistry.default()
    missing = [m for m in methods if m not in registry.names()]
    if missing:
        parser.error(f"unknown methods {missing}; available: {', '.join(registry.names())}")

    print(f"machine: {machine()}")
    print(f"grid of {', '.join(methods)} on {args.stream} with {args.model}: {args.steps} steps per task, "
          f"train {args.train_size} / test {args.test_size} per task")
    root = Path(tempfile.mkdtemp(prefix="bench_grid-"))
    try:
        one_run(root / "warm", ["naive"], args)  # tokenisation cache and model files warm for both sides
        grid_times: list[float] = []
        single_times: list[float] = []
        for repeat in range(args.repeats):
            grid_out = root / f"grid{repeat}"

            def singles(repeat: int = repeat) -> list[dict[str, Any]]:
                records: list[dict[str, Any]] = []
                for m in methods:
                    records += one_run(root / f"{m}{repeat}", [m], args)
                return records

            order = ("grid", "singles") if repeat % 2 == 0 else ("singles", "grid")
            for side in order:
                if side == "grid":
                    seconds, grid_records = timed(lambda out=grid_out: one_run(out, methods, args))
                    grid_times.append(seconds)
                else:
                    seconds, single_records = timed(singles)
                    single_times.append(seconds)
            same = learnt(grid_records) == learnt(single_records)
            shared = sorted(r["unit"] for r in grid_records if r["type"] == "note")
            print(f"repeat {repeat + 1}: grid {grid_times[-1]:.1f} s, sum of singles {single_times[-1]:.1f} s, "
                  f"units starting from the shared task 1: {', '.join(shared) or 'none'}; "
                  f"results {'identical' if same else 'DIFFER'}")
        ratio = median_ratio(grid_times, single_times)
        print(f"grid / sum of singles: {ratio:.3f}x  {verdict(ratio, 0.75)}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

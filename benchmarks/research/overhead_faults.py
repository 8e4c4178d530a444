"""Where `bench_overhead`'s default-size gap goes (issue #17): page faults and time of every training step.

Runs one side of `benchmarks/bench_overhead.py` (the full `clbench run` of naive, or the hand-written loop) in
a fresh process per run, sides alternating, and reads `getrusage` at each gradient clip (once per step on both
sides): per task the median step time and the median number of minor page faults a step, and per run the
system time. A process of its own per run keeps one side's heap from shaping the other's.

    python benchmarks/research/overhead_faults.py [--steps N] [--repeats 2]    # default sizes without --steps

Set glibc's `MALLOC_*` variables in the environment to see how the allocator changes the picture. Findings:
benchmarks/README.md, "Notes behind the table", `bench_overhead.py`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIDES = ("clbench", "bare")


def one_side(side: str, steps: int | None) -> dict[str, object]:
    """Run `side` once in this process; per-step (seconds, minor faults) between successive gradient clips."""
    import torch

    from clbench.benchmarks import bench_overhead as bench
    from clbench.benchmarks._timing import encoded_stream
    from clbench.models import model_spec

    test_size = None if steps is None else 48
    stream, splits = encoded_stream("reviews", test_size=test_size)
    marks: list[tuple[float, int]] = []
    clip = torch.nn.utils.clip_grad_norm_

    def marked(*args: object, **kwargs: object) -> object:
        marks.append((time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt))
        return clip(*args, **kwargs)  # type: ignore[arg-type]

    torch.nn.utils.clip_grad_norm_ = marked  # both sides clip once per step, through this name
    start = time.perf_counter()
    if side == "clbench":
        with tempfile.TemporaryDirectory() as tmp:
            bench.clbench_run(steps, test_size, Path(tmp), 0)
    else:
        bench.bare_loop(splits, stream.num_labels, steps, model_spec("minilm").default_lr)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    per_task = [bench.task_steps(train, steps) for train, _, _ in splits]
    seconds = [b[0] - a[0] for a, b in itertools.pairwise(marks)]
    faults = [b[1] - a[1] for a, b in itertools.pairwise(marks)]
    tasks, first = [], 0
    for n in per_task:  # the interval that crosses a task boundary is left out
        last = first + n - 1
        tasks.append({"step_s": statistics.median(seconds[first:last]),
                      "faults_per_step": statistics.median(faults[first:last])})
        first = last + 1
    return {"side": side, "wall_s": wall, "system_s": usage.ru_stime, "minor_faults": usage.ru_minflt,
            "tasks": tasks}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="steps per task (default: the run's default sizes)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternating")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one run, in a child process
    args = parser.parse_args(argv)
    if args.side:
        print(json.dumps(one_side(args.side, args.steps)))
        return
    extra = ["--steps", str(args.steps)] if args.steps else []
    for r in range(args.repeats):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            out = subprocess.run([sys.executable, __file__, "--side", side, *extra], check=True,
                                 capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            tasks = "; ".join(f"task {i + 1}: step {t['step_s']:.3f} s, {t['faults_per_step']:.0f} faults/step"
                              for i, t in enumerate(result["tasks"]))
            print(f"{side:8s} {result['wall_s']:6.1f} s, system {result['system_s']:5.1f} s, "
                  f"{result['minor_faults']} minor faults; {tasks}", flush=True)


if __name__ == "__main__":
    main()

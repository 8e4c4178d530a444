"""Cold start of the CLI: `clbench --help` (target <= 1 s) and `clbench list methods` (target <= 2 s).

Each command runs in a fresh interpreter, interleaved with `import torch` alone and a bare `python -c pass`
for comparison. On a loaded machine wall time says little, so the script also reports the children's CPU time
(user + sys, from `getrusage`), which load inflates far less, and the ratio of `list methods` to a bare
`import torch` (describing methods imports the method modules, which import torch; nothing heavier).

    python benchmarks/bench_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import time

from clbench.benchmarks._timing import machine, median_ratio, verdict


def _clbench() -> list[str]:
    script = shutil.which("clbench")
    return [script] if script else [sys.executable, "-m", "clbench.cli"]


def run_once(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "import torch": [sys.executable, "-c", "import torch"],
        "clbench --help": [*_clbench(), "--help"],
        "clbench list methods": [*_clbench(), "list", "methods"],
    }
    print(f"machine: {machine()}")
    for argv_ in commands.values():  # warm the page cache once; "cold" means a fresh interpreter
        run_once(argv_)
    wall: dict[str, list[float]] = {k: [] for k in commands}
    cpu: dict[str, list[float]] = {k: [] for k in commands}
    names = list(commands)
    for r in range(args.repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            w, c = run_once(commands[name])
            wall[name].append(w)
            cpu[name].append(c)
    print(f"{'command':<22} {'wall median s':>14} {'cpu median s':>13}")
    for name in names:
        print(f"{name:<22} {statistics.median(wall[name]):>14.2f} {statistics.median(cpu[name]):>13.2f}")
    for name, target in (("clbench --help", 1.0), ("clbench list methods", 2.0)):
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"{name}: wall {w:.2f} s {verdict(w, target, unit=' s')}; cpu {c:.2f} s {verdict(c, target, unit=' s')}")
    print(f"list methods / import torch (wall, median of paired ratios): "
          f"{median_ratio(wall['clbench list methods'], wall['import torch']):.2f}x")
    print(f"list methods / import torch (cpu): {median_ratio(cpu['clbench list methods'], cpu['import torch']):.2f}x")


if __name__ == "__main__":
    main()

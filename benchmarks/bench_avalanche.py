"""clbench's `naive` and `ewc` vs Avalanche 0.6's own Naive and EWC strategies (time targets <= 0.8x, <= 1.0x).

Both sides are trained by `clbench.training.run.run` on the same tasks (`reviews` unless `--stream`), MiniLM
weights, seed, batch size, epochs, AdamW, warm-up/decay schedule and clipping; the Avalanche side is the
`avalanche:<strategy>` reference adapter, which hands each task to Avalanche's `strategy.train()` (its data loader,
its training loop, its EWC importance pass) and keeps everything else (evaluation, records) identical. The time
compared is the runner's own measurement of training plus the method's before/after-task work (EWC's Fisher), and
the whole `run()` call. Each method runs in its own `run()` so no unit shares task 1 with another. Variants
alternate in one process and each figure is the median of paired ratios; final accuracies are printed side by side.

EWC's penalties are made equal: Avalanche adds λ·Σ F (θ − θ*)², clbench λ/2·Σ F (θ − θ*)², so clbench gets
`penalty_weight = 2 λ`.

    python benchmarks/bench_avalanche.py [--train-size 64] [--test-size 64] [--repeats 2] [--stream reviews]
        [--methods naive,ewc]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from clbench.benchmarks._timing import machine, median_ratio, timed, verdict

LAMBDA = 1000.0
PAIRS = (("naive", "avalanche:naive"), ("ewc", "avalanche:ewc"))
TARGETS = {"naive": 0.8, "ewc": 1.0}  # EWC's exact Fisher may cost what Avalanche's cruder one does, no more
TIMED_PHASES = ("train", "method_before", "method_after")


def one_run(method: str, out: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run `method` alone on the small setup of `args.stream`; returns its result records."""
    from clbench.config import build_config
    from clbench.results import read_records
    from clbench.training.progress import Progress
    from clbench.training.run import run

    config = build_config({"methods": [method], "stream": args.stream, "model": "minilm", "seeds": [0],
                           "train_size": args.train_size, "test_size": args.test_size, "epochs": 1,
                           "batch_size": 16, "eval_batch_size": 64, "precision": "fp32",
                           "device": "cuda" if torch.cuda.is_available() else "cpu", "out": str(out)},
                          {"ewc": {"ewc.penalty_weight": 2 * LAMBDA},
                           "avalanche:ewc": {"avalanche:ewc.ewc_lambda": LAMBDA}}.get(method, {}))
    return read_records(run(config, progress=Progress("quiet")))


def import_avalanche() -> None:
    """Import what the `avalanche:*` adapters import on first use, before anything is timed: otherwise the
    first Avalanche run counts the import (about 5 s on the 2-core CPU) as training, which flatters clbench."""
    import avalanche.benchmarks.scenarios.dataset_scenario
    import avalanche.core
    import avalanche.training.plugins
    import avalanche.training.supervised  # noqa: F401


def method_seconds(records: list[dict[str, Any]]) -> float:
    """Training plus before/after-task method work, as the runner measured it, summed over tasks."""
    return sum(r["value"] for r in records if r["type"] == "profile" and r["metric"] == "wall_s"
               and r.get("phase") in TIMED_PHASES)


def final_accuracy(records: list[dict[str, Any]]) -> dict[str, float]:
    """Class-incremental accuracy on every task after the last task, and their mean."""
    last = max(r["row"] for r in records if r["type"] == "accuracy")
    acc = {r["eval_task"]: r["value"] for r in records
           if r["type"] == "accuracy" and r["row"] == last and r["metric"] == "acc_cil"}
    return {**acc, "mean": statistics.mean(acc.values())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=64, help="training examples per task")
    parser.add_argument("--test-size", type=int, default=64, help="test examples per task")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--stream", default="reviews", help="an offline stream (`clbench list streams`)")
    parser.add_argument("--methods", default=",".join(ours for ours, _ in PAIRS),
                        help="which of clbench's methods to pair with Avalanche's: naive, ewc or both")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("avalanche") is None:
        print("skipped: avalanche-lib is not installed (pip install 'clbench[avalanche]')")
        return
    pairs = [pair for pair in PAIRS if pair[0] in args.methods.split(",")]
    if not pairs:
        parser.error(f"--methods {args.methods!r} names none of {', '.join(ours for ours, _ in PAIRS)}")
    print(f"machine: {machine()}")
    print(f"{args.stream}: train {args.train_size} / test {args.test_size} per task, 1 epoch, batch 16, fp32, "
          f"{args.repeats} paired repeats")
    import_avalanche()
    train_s: dict[str, list[float]] = {m: [] for pair in pairs for m in pair}
    total_s: dict[str, list[float]] = {m: [] for pair in pairs for m in pair}
    accuracy: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for pair in pairs:
                for method in pair if r % 2 == 0 else pair[::-1]:
                    out = Path(tmp) / f"{method.replace(':', '-')}-{r}"
                    seconds, records = timed(lambda m=method, o=out: one_run(m, o, args))
                    total_s[method].append(seconds)
                    train_s[method].append(method_seconds(records))
                    accuracy[method] = final_accuracy(records)
                    print(f"  repeat {r + 1}: {method} run {seconds:.1f} s, train+method "
                          f"{train_s[method][-1]:.1f} s", flush=True)
    for ours, theirs in pairs:
        train_ratio = median_ratio(train_s[ours], train_s[theirs])
        total_ratio = median_ratio(total_s[ours], total_s[theirs])
        print(f"{ours}: train+method {statistics.median(train_s[ours]):.1f} s vs {theirs} "
              f"{statistics.median(train_s[theirs]):.1f} s -> {train_ratio:.2f}x {verdict(train_ratio, TARGETS[ours])}; "
              f"whole run {total_ratio:.2f}x")
        tasks = [k for k in accuracy[ours] if k != "mean"]
        print("    final acc_cil " + ", ".join(
            f"{t}: {accuracy[ours][t]:.3f} vs {accuracy[theirs][t]:.3f}" for t in [*tasks, "mean"]))


if __name__ == "__main__":
    main()

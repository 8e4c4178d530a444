"""Harness overhead: a full `clbench run` of `naive` vs a minimal hand-written PyTorch loop (target <= 1.03x).

Both sides do exactly the same work on `reviews` with MiniLM: build the model from the same seed, evaluate
every test split (row 0), then per task train a fixed number of steps on the same batches in the same order
(the runner's seeded length-bucketed plan), with fused AdamW, the same learning rate, weight decay, linear warm-up
and decay, gradient clipping at 1.0 and fp32, and evaluate every test split again. The clbench side is the
real `clbench.training.run.run` (results file, drift and functional records, profiling, the checkpoint after each
non-final task); the bare side is ~40 lines of PyTorch. Variants alternate in one process; the figure is the
median of paired ratios. The bare loop also checks it saw the same losses, so the comparison is like for like.
With `--fresh`, every timed run starts a new Python process instead, as a user's run does, sides still
alternating: in one process each run inherits the heap the earlier runs of both sides left, and with it how
often glibc returns memory to the kernel and faults it back in (benchmarks/README.md, notes on this script).

    python benchmarks/bench_overhead.py [--steps 12] [--repeats 3] [--test-size 48] [--fresh]
    python benchmarks/bench_overhead.py --default-sizes     # the run's own epochs and full test sets
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from clbench.benchmarks._timing import encoded_stream, machine, median_ratio, timed, verdict
from clbench.config import RunConfig, build_config
from clbench.data import BatchPlan, EncodedSplit, TaskSplits
from clbench.models import build_model, model_spec
from clbench.training.progress import Progress
from clbench.training.run import run

BATCH, EVAL_BATCH, WEIGHT_DECAY, WARMUP, CLIP, SEED = 16, 64, 0.01, 0.1, 1.0, 0
EPOCHS = RunConfig().epochs  # the run's default, used with --default-sizes
SIDES = ("clbench", "bare")


def bare_evaluate(model: nn.Module, test: EncodedSplit) -> float:
    """Accuracy with length-sorted batches cut to their longest example (what the runner evaluates)."""
    model.eval()
    order = torch.argsort(test.lengths, stable=True)
    correct = 0
    with torch.inference_mode():
        for index in torch.split(order, EVAL_BATCH):
            width = int(test.lengths[index].max())
            mask = (torch.arange(width) < test.lengths[index, None]).long()
            logits = model(input_ids=test.ids[index, :width], attention_mask=mask).logits
            correct += int((logits.argmax(1) == test.labels[index]).sum())
    return correct / len(test)


def task_steps(train: EncodedSplit, steps: int | None) -> int:
    """Optimiser steps on one task: `steps`, or None for the runner's default of EPOCHS passes over `train`."""
    return steps if steps is not None else EPOCHS * len(BatchPlan(train, BATCH, shuffle=False))


def bare_loop(splits: list[TaskSplits], num_labels: int, steps: int | None, lr: float
              ) -> list[float]:
    """The hand-written loop; returns every training loss. `steps` per task, or None for the runner's default
    of EPOCHS passes over each task's training data."""
    model = build_model("minilm", num_labels, SEED)
    generator = torch.Generator().manual_seed(SEED)
    losses = []
    for _, _, test in splits:
        bare_evaluate(model, test)
    for train, _, _ in splits:
        n = task_steps(train, steps)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY, fused=True)  # as the runner
        warmup = int(WARMUP * n)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s, w=warmup, n=n: (s + 1) / w if s < w else max(0.0, (n - s) / max(1, n - w)))
        batches: list[Tensor] = []
        while len(batches) < n:
            batches += BatchPlan(train, BATCH, shuffle=True, generator=generator).indices()
        model.train()
        for index in batches[:n]:
            width = int(train.lengths[index].max())
            mask = (torch.arange(width) < train.lengths[index, None]).long()
            logits = model(input_ids=train.ids[index, :width], attention_mask=mask).logits
            loss = nn.functional.cross_entropy(logits, train.labels[index])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            losses.append(loss.item())
        for _, _, test in splits:
            bare_evaluate(model, test)
    return losses


def clbench_run(steps: int | None, test_size: int | None, root: Path, repeat: int) -> Path:
    config = build_config({"methods": ["naive"], "stream": "reviews", "model": "minilm", "seeds": [SEED],
                           "max_steps": steps, "epochs": EPOCHS, "test_size": test_size, "batch_size": BATCH,
                           "eval_batch_size": EVAL_BATCH, "weight_decay": WEIGHT_DECAY, "warmup_ratio": WARMUP,
                           "grad_clip": CLIP, "precision": "fp32", "device": "cpu" if not torch.cuda.is_available()
                           else "cuda", "out": str(root / f"run{repeat}")})
    return run(config, progress=Progress("quiet"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="optimiser steps per task")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--test-size", type=int, default=48, help="test examples per task")
    parser.add_argument("--default-sizes", action="store_true",
                        help="the run's defaults instead: EPOCHS passes over each task, full test sets")
    parser.add_argument("--fresh", action="store_true", help="time every run in a new Python process")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one timed run, in a child process
    args = parser.parse_args(argv)
    sizes = ["--default-sizes"] if args.default_sizes else ["--steps", str(args.steps), "--test-size",
                                                             str(args.test_size)]
    if args.default_sizes:
        args.steps, args.test_size = None, None
    stream, splits = encoded_stream("reviews", test_size=args.test_size)  # warm the tokenisation cache
    lr = model_spec("minilm").default_lr
    if args.side:
        with tempfile.TemporaryDirectory() as tmp:
            seconds, _ = timed(lambda: one_run(args.side, splits, stream.num_labels, args.steps, args.test_size,
                                                lr, Path(tmp), 0))
        print(json.dumps({"seconds": seconds}))
        return
    print(f"machine: {machine()}")
    steps = [task_steps(train, args.steps) for train, _, _ in splits]
    print(f"reviews: {len(splits)} tasks, {steps} steps x batch {BATCH} per task, "
          f"test {[len(s.test) for s in splits]}, fp32, {args.repeats} paired repeats")
    same = _same_losses(splits, stream.num_labels, lr, args.test_size)
    print(f"bare loop reproduces the runner's training losses exactly: {same}")
    print("each run in a new process" if args.fresh else "all runs in this process")
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name in SIDES if r % 2 == 0 else SIDES[::-1]:
                if args.fresh:
                    out = subprocess.run([sys.executable, "-m", "clbench.benchmarks.bench_overhead", "--side", name, *sizes],
                                         check=True, capture_output=True, text=True).stdout
                    seconds = json.loads(out.strip().splitlines()[-1])["seconds"]
                else:
                    seconds, _ = timed(lambda name=name, r=r: one_run(
                        name, splits, stream.num_labels, args.steps, args.test_size, lr, Path(tmp), r))
                times[name].append(seconds)
                print(f"  repeat {r + 1}: {name} {seconds:.1f} s", flush=True)
    ratio = median_ratio(times["clbench"], times["bare"])
    print(f"clbench median {statistics.median(times['clbench']):.1f} s, bare median "
          f"{statistics.median(times['bare']):.1f} s; per repeat "
          + ", ".join(f"{a / b:.3f}" for a, b in zip(times["clbench"], times["bare"])))
    target = 1.01 if args.default_sizes else 1.03
    print(f"overhead (clbench / bare, median of paired ratios): {ratio:.3f}x {verdict(ratio, target)}")


def one_run(side: str, splits: list[TaskSplits], num_labels: int, steps: int | None, test_size: int | None,
            lr: float, root: Path, repeat: int) -> None:
    if side == "clbench":
        clbench_run(steps, test_size, root, repeat)
    else:
        bare_loop(splits, num_labels, steps, lr)


def _same_losses(splits: list[TaskSplits], num_labels: int, lr: float,
                 test_size: int | None) -> bool:
    """Run 3 steps per task through the runner's train_step and the bare loop; compare the losses."""
    from clbench.training import runner

    seen: list[float] = []
    original = runner.train_step

    def spy(*a: Any, **k: Any) -> float:
        value = original(*a, **k)
        seen.append(value)
        return value

    runner.train_step = spy  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            clbench_run(3, test_size, Path(tmp), 0)
    finally:
        runner.train_step = original  # type: ignore[assignment]
    bare = bare_loop(splits, num_labels, 3, lr)
    return len(seen) == len(bare) and all(abs(a - b) <= 1e-5 * max(1.0, abs(b)) for a, b in zip(seen, bare))


if __name__ == "__main__":
    main()

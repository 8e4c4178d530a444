"""Cost of FIP and its variants per training step, relative to naive fine-tuning, on MiniLM.

Every variant trains the second task of a two-task setup (5 + 2 classes, as Yelp → IMDB) on the same batches,
through the runner's own `train_step`: naive, fip (joint backward), fip in memory-saving mode
(`separate_backward`), fip with one fused forward over the new and the replay batch (`fused_forward`), fip with
half the replay batch (`replay_batch_size` = batch / 2), fip-geometric and fip-lora. Before the timed steps each
variant goes through the hooks of a finished first task (buffer filled with `--buffer` old inputs, anchor
softmax cached), so the steps are steady-state task-2 steps.

Inputs (`--data`):
- `fixed` (default): random token ids, every old and new input `--seq-len` tokens long. The worst case for FIP:
  a replay batch costs as much as a new one.
- `reviews`: the `reviews` stream's own training texts, tokenised for the model (the pinned archives must be
  in the cache: `clbench fetch reviews`). Old inputs are the stars task's (short: 22 tokens on average, at most
  64), new batches the movie task's (128), drawn as the runner draws them (length-bucketed). This is the seed
  comparison's workload; `--seq-len` does not apply.

- Step time: all variants are built first and timed interleaved (A B C …, then reversed) for `--repeats`
  repeats of `--steps` steps; the figure is the median over repeats of the paired ratio to naive
  (`benchmarks/_timing.py`), which cancels load shared by all variants.
- Peak memory: each variant alone in memory (built, two steps, freed). On CUDA, `torch.cuda.max_memory_allocated`
  over the steps (model, gradients, optimiser state and activations); on CPU, peak RSS during the steps above
  the RSS before the variant was built (`clbench.evaluators.profile`, freed memory returned to the OS with
  `malloc_trim` between variants, after one discarded warm-up variant so one-time allocations are not
  charged to the first). RSS counts what the allocator holds, so CPU figures are coarser than CUDA's.

Targets (issue 5): fip ≤ 1.6× naive step time; fip in memory-saving mode ≤ 1.3× naive peak memory.

Options for the GPU check (`benchmarks/gpu_check.sh`): `--precision bf16` runs every step under the runner's
bf16 autocast (CUDA only); `--compile` adds naive, fip and fip (fused forward) rows whose training forward
(and its backward) runs through torch.compile (`--compile-mode reduce-overhead` replays CUDA graphs), each
printed with its first step's time (the compilation) and its first loss against the eager row's; `--skip`
leaves rows out.
`--model tiny` (a small random BERT, no download) gives a quick run and a step with little arithmetic per
operation; `fused_forward` targets steps bound by kernel launches (small models on a GPU), which a CPU run,
tiny or not, does not reproduce.

    python -m clbench.benchmarks.bench_fip [--data fixed|reviews] [--model minilm|tiny|FOLDER] [--steps 2]
        [--repeats 3] [--batch 16] [--seq-len 128] [--buffer 200] [--precision fp32|bf16]
        [--compile [--compile-mode default|reduce-overhead]] [--skip ROW,...] [--json PATH]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
from collections.abc import Callable
from typing import Any

import torch

from clbench.benchmarks._timing import interleaved, machine, median_ratio, timed, verdict
from clbench.config import build_config
from clbench.data import Batch, BatchPlan, EncodedSplit, TaskInfo
from clbench.data.prepare import prepare
from clbench.evaluators.profile import profile
from clbench.models import build_model, model_spec
from clbench.protocol import RunContext
from clbench.registry import MethodRegistry
from clbench.training.runner import train_step

TASKS = (TaskInfo(0, "yelp", tuple("12345"), 0), TaskInfo(1, "imdb", ("neg", "pos"), 5))


def variants(batch: int, compiled: bool = False) -> dict[str, tuple[str, dict[str, Any]]]:
    """Row label -> (method, options); with `compiled`, also rows whose step runs through torch.compile."""
    rows = {
        "naive": ("naive", {}),
        "fip": ("fip", {}),
        "fip (memory-saving)": ("fip", {"separate_backward": True}),
        "fip (fused forward)": ("fip", {"fused_forward": True}),
        f"fip (replay {max(batch // 2, 1)})": ("fip", {"replay_batch_size": max(batch // 2, 1)}),
        "fip-geometric": ("fip-geometric", {}),
        "fip-lora": ("fip-lora", {}),
    }
    if compiled:
        rows.update({f"{label}{COMPILED}": rows[label] for label in ("naive", "fip", "fip (fused forward)")})
    return rows


COMPILED = " +compile"  # suffix of the rows whose training forward runs through torch.compile


def random_split(n: int, seq_len: int, task: TaskInfo, vocab: int, seed: int) -> EncodedSplit:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(1000, vocab // 2), vocab, (n, seq_len), generator=g)  # [n, seq], no special ids
    labels = task.label_offset + torch.randint(0, task.num_classes, (n,), generator=g)
    return EncodedSplit(ids, torch.full((n,), seq_len), labels, torch.full((n,), task.index))


def reviews_data(args: argparse.Namespace) -> tuple[tuple[TaskInfo, ...], EncodedSplit, list[Batch]]:
    """The `reviews` stream's tasks, its stars training split and the runner's first movie batches."""
    config = build_config({"methods": ["naive"], "model": args.model, "stream": "reviews"})
    prepared = prepare(config)
    infos = tuple(prepared.infos)
    old, new = prepared.train[:2]
    plan = BatchPlan(new, args.batch, shuffle=True, generator=torch.Generator().manual_seed(2))
    return infos, old, [new.batch(index) for index in plan.indices()[:args.steps]]


def build_variant(name: str, options: dict[str, Any], args: argparse.Namespace, device: torch.device,
                  tasks: tuple[TaskInfo, ...], old: EncodedSplit, compiled: bool = False) -> Callable[[Any], float]:
    """A closure doing one task-2 training step of `name` with `options` on a given batch (its forward through
    torch.compile with `compiled`, in `--compile-mode`)."""
    registry = MethodRegistry.default()
    cls = registry.get(name)
    method = cls(cls.config_cls(**options))
    num_labels = sum(info.num_classes for info in tasks)
    ctx = RunContext(tasks=tasks, num_labels=num_labels, device=device, seed=0,
                     generator=torch.Generator().manual_seed(1), buffer_size=args.buffer, batch_size=args.batch,
                     lr=model_spec(args.model).default_lr)
    model = method.setup(build_model(args.model, num_labels, 0).to(device), ctx)
    method.before_task(tasks[0], model)
    method.after_task(tasks[0], model, old)
    method.before_task(tasks[1], model)
    params = list(method.trainable_parameters(model))
    optimizer = method.configure_optimizer(tasks[1], params) or ctx.adamw(params)  # the runner's optimiser
    config = build_config({"methods": [name], "model": args.model, "stream": "synthetic",
                           "precision": args.precision})
    forward = torch.compile(model, mode=None if args.compile_mode == "default" else args.compile_mode) \
        if compiled else None
    return lambda batch: train_step(model, method, ctx, batch, params, optimizer, config, forward=forward)


def write_json(path: str, figures: dict[str, Any]) -> None:
    import json
    from pathlib import Path

    Path(path).write_text(json.dumps(figures, indent=1, default=str), encoding="utf-8")


def old_lengths(split: EncodedSplit) -> str:
    lengths = split.lengths.float()
    return f"old inputs {lengths.mean():.0f} tokens on average (max {int(lengths.max())})"


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back so the next RSS baseline is honest
    except (OSError, AttributeError):
        pass


def rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / (1 << 20)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--buffer", type=int, default=200, help="old-task inputs in the FIP buffers")
    parser.add_argument("--data", choices=("fixed", "reviews"), default="fixed",
                        help="fixed: random ids of --seq-len tokens; reviews: the reviews stream's own texts")
    parser.add_argument("--model", default="minilm", help="minilm, tiny or a local model folder")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="the run's precision (bf16: autocast on CUDA; the CPU stays fp32)")
    parser.add_argument("--compile", action="store_true",
                        help="add naive, fip and fip (fused forward) rows with the step through torch.compile")
    parser.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune"), default="default",
                        help="torch.compile mode; reduce-overhead replays CUDA graphs")
    parser.add_argument("--skip", default="", help="comma-separated rows to leave out, e.g. fip-geometric")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.data == "reviews":
        tasks, old, cpu_batches = reviews_data(args)
        shape = f"reviews stream: {args.steps} movie batches of {args.batch}, {old_lengths(old)}"
    else:
        tasks = TASKS
        model_config: Any = build_model(args.model, 7, 0).config
        vocab = int(model_config.vocab_size)
        old = random_split(args.buffer, args.seq_len, TASKS[0], vocab, 1)
        new = random_split(args.batch * args.steps, args.seq_len, TASKS[1], vocab, 2)
        cpu_batches = [new.batch(torch.arange(i * args.batch, (i + 1) * args.batch)) for i in range(args.steps)]
        shape = f"batch {args.batch} × {args.seq_len} tokens (old and new inputs alike)"
    batches = [batch.to(device) for batch in cpu_batches]
    skip = {label.strip() for label in args.skip.split(",") if label.strip()}
    rows = {label: row for label, row in variants(args.batch, args.compile).items() if label not in skip}
    print(f"machine: {machine()}")
    print(f"{args.model}, {shape}, buffer {args.buffer}, {args.steps} steps × {args.repeats} repeats, "
          f"{args.precision}{f', compile mode {args.compile_mode}' if args.compile else ''}, "
          f"torch threads {torch.get_num_threads()}")

    warm = build_variant("naive", {}, args, device, tasks, old)
    warm(batches[0])  # one-time allocations (library caches, thread pools) before any baseline is taken
    del warm
    peaks: dict[str, float] = {}
    for label, (name, options) in rows.items():
        if label.endswith(COMPILED):
            continue  # a fresh model would compile again; its memory is not the question
        release_memory()
        baseline = rss_mb()
        step = build_variant(name, options, args, device, tasks, old)
        step(batches[0])  # optimiser state is allocated on the first step
        with profile(device) as rec:
            for batch in batches:
                step(batch)
        peaks[label] = rec.peak_cuda_mb if rec.peak_cuda_mb is not None else (rec.peak_rss_mb or 0.0) - baseline
        del step
    release_memory()

    steps = {label: build_variant(name, options, args, device, tasks, old, label.endswith(COMPILED))
             for label, (name, options) in rows.items()}
    first: dict[str, tuple[float, float]] = {}  # label -> (first-step loss, seconds): warm-up, compilation
    for label, step in steps.items():
        seconds, loss = timed(lambda s=step: s(batches[0]))
        first[label] = (loss, seconds)
    runs = {label: (lambda s=step: [s(b) for b in batches]) for label, step in steps.items()}
    times = interleaved(runs, args.repeats)

    unit = "CUDA max_memory_allocated" if device.type == "cuda" else "peak RSS above the pre-build baseline"
    print(f"\n{'variant':<28} {'s/step':>8} {'time ×':>7} {'peak MiB':>9} {'memory ×':>9}   ({unit})")
    for label in rows:
        time_ratio = median_ratio(times[label], times["naive"])
        peak = f"{peaks[label]:>9.0f} {peaks[label] / peaks['naive']:>9.2f}" if label in peaks else f"{'-':>9} {'-':>9}"
        print(f"{label:<28} {min(times[label]) / args.steps:>8.3f} {time_ratio:>7.2f} {peak}")
    table: dict[str, dict[str, Any]] = {}
    for label in rows:
        table[label] = {"s_per_step": min(times[label]) / args.steps,
                        "time_ratio": median_ratio(times[label], times["naive"]),
                        "time_ratios": [a / b for a, b in zip(times[label], times["naive"])],
                        "peak_mib": peaks.get(label), "first_step_s": first[label][1], "first_loss": first[label][0]}
        if label.endswith(COMPILED):
            eager_loss = first[label.removesuffix(COMPILED)][0]
            table[label]["first_loss_rel_diff"] = abs(first[label][0] - eager_loss) / abs(eager_loss)
            print(f"{label}: first step (compilation) {first[label][1]:.1f} s; its loss {first[label][0]:.6f} vs "
                  f"eager {eager_loss:.6f} (relative difference {table[label]['first_loss_rel_diff']:.1e})")
    if args.json:
        write_json(args.json, {"machine": machine(), "device": str(device), "args": vars(args), "unit": unit,
                               "rows": table})
    if "fip" in rows:
        print(f"\nfip step time: {median_ratio(times['fip'], times['naive']):.2f}× naive — "
              f"{verdict(median_ratio(times['fip'], times['naive']), 1.6)}")
    if "fip (memory-saving)" in peaks:
        memory = peaks["fip (memory-saving)"] / peaks["naive"]
        print(f"fip (memory-saving) peak memory: {memory:.2f}× naive — {verdict(memory, 1.3)}")
    for label in rows:
        if label.startswith("fip") and label != "fip":
            ratio = median_ratio(times[label], times["naive"])
            print(f"{label} step time: {ratio:.2f}× naive — {verdict(ratio, 1.6)}")


if __name__ == "__main__":
    main()

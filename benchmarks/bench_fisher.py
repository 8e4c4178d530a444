"""EWC's exact per-example Fisher vs one training epoch on the same examples (target: Fisher <= 1.5x an epoch).

Variants, on the same `--n` examples (MiniLM, 7 labels, one task):
- `epoch`: one epoch of the runner's own `train_step` (batch 16, the runner's fused AdamW, dropout on);
- `fisher (hooks)`: `clbench.per_example.diagonal_fisher` with the hook backend, chunks of `--chunk`, as EWC
  runs it after a task (`--estimator empirical|exact`);
- `fisher (torch.func)` with `--func`: the torch.func vmap path, the fallback for models the hooks do not
  cover (on a CPU, vmap loops over examples: minutes).

Times are interleaved in one process (`benchmarks/_timing.py`) and the figure is the median of paired ratios to
the epoch. Peak memory of each variant: `torch.cuda.max_memory_allocated` on CUDA, else peak RSS above the RSS
before the variant (coarse). The two Fisher backends are also compared value by value.

Inputs (`--data`): `fixed` (default) random ids, every example `--seq-len` tokens; `reviews` the `reviews`
stream's first task (star sentences, 22 tokens on average; needs the pinned archives in the cache).

    python -m clbench.benchmarks.bench_fisher [--n 320] [--seq-len 64] [--chunk 16] [--repeats 3]
        [--estimator empirical] [--data fixed|reviews] [--model minilm|tiny|FOLDER] [--func] [--json PATH]
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from collections.abc import Callable
from typing import Any

import torch

from clbench.benchmarks._timing import interleaved, machine, median_ratio, verdict
from clbench.benchmarks.bench_fip import release_memory, rss_mb, write_json
from clbench.config import build_config
from clbench.data import BatchPlan, EncodedSplit, TaskInfo
from clbench.evaluators.profile import profile
from clbench.models import build_model, model_spec
from clbench.per_example import diagonal_fisher
from clbench.protocol import Hooks, RunContext
from clbench.training.runner import train_step

TASK = TaskInfo(0, "task", tuple("abcdefg"), 0)


def fixed_split(n: int, seq_len: int, vocab: int) -> EncodedSplit:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(min(1000, vocab // 2), vocab, (n, seq_len), generator=g)  # [n, seq]
    return EncodedSplit(ids, torch.full((n,), seq_len), torch.randint(0, 7, (n,), generator=g),
                        torch.zeros(n, dtype=torch.long))


def reviews_split(n: int, model: str) -> tuple[TaskInfo, EncodedSplit]:
    from clbench.data.prepare import prepare

    prepared = prepare(build_config({"methods": ["naive"], "model": model, "stream": "reviews", "train_size": n}))
    return prepared.infos[0], prepared.train[0]


def variants(args: argparse.Namespace, task: TaskInfo, data: EncodedSplit, device: torch.device
             ) -> dict[str, Callable[[], Any]]:
    ctx = RunContext(tasks=(task,), num_labels=task.num_classes, device=device, seed=0,
                     generator=torch.Generator().manual_seed(1), buffer_size=0, batch_size=16,
                     lr=model_spec(args.model).default_lr)
    model = build_model(args.model, task.num_classes, 0).to(device)
    config = build_config({"methods": ["naive"], "model": args.model, "stream": "synthetic"})
    params = list(model.parameters())
    optimizer = ctx.adamw(params)
    method = Hooks()
    batches = [data.batch(i).to(device) for i in BatchPlan(data, 16, shuffle=True,
                                                           generator=torch.Generator().manual_seed(2)).indices()]
    chunks = [data.batch(i).to(device) for i in BatchPlan(data, args.chunk, shuffle=False).indices()]

    def epoch() -> None:
        for batch in batches:
            train_step(model, method, ctx, batch, params, optimizer, config)

    def fisher(backend: str) -> dict[str, torch.Tensor]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.func's batching-rule notes
            return diagonal_fisher(model, lambda: chunks, args.estimator, logits_fn=ctx.logits, chunk=args.chunk,
                                   backend=backend)

    out: dict[str, Callable[[], Any]] = {"epoch": epoch, "fisher (hooks)": lambda: fisher("hooks")}
    if args.func:
        out["fisher (torch.func)"] = lambda: fisher("torch.func")
    return out


def worst_relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max over parameters of max|a - b| / max|b|, skipping parameters whose Fisher is zero up to rounding."""
    top = max(float(t.abs().max()) for t in b.values())
    return max(float((a[n] - b[n]).abs().max()) / float(b[n].abs().max()) for n in b
               if float(b[n].abs().max()) > 1e-12 * top)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=320, help="examples (one epoch, and the Fisher's data)")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per example with --data fixed")
    parser.add_argument("--chunk", type=int, default=16, help="EWC's fisher_batch_size")
    parser.add_argument("--estimator", choices=("empirical", "exact"), default="empirical")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", choices=("fixed", "reviews"), default="fixed")
    parser.add_argument("--model", default="minilm", help="minilm, tiny or a local model folder")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--func", action="store_true", help="also time the torch.func fallback")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.data == "reviews":
        task, data = reviews_split(args.n, args.model)
        shape = f"reviews task 1: {len(data)} examples, {float(data.lengths.float().mean()):.0f} tokens on average"
    else:
        task = TASK
        data = fixed_split(args.n, args.seq_len, int(build_model(args.model, 7, 0).config.vocab_size))
        shape = f"{args.n} examples x {args.seq_len} tokens"
    print(f"machine: {machine()}")
    print(f"{args.model}, {shape}, estimator {args.estimator}, chunk {args.chunk}, {args.repeats} paired repeats, "
          f"torch threads {torch.get_num_threads()}")
    runs = variants(args, task, data, device)
    peaks: dict[str, float] = {}
    results: dict[str, Any] = {}
    for name, fn in runs.items():  # one untimed pass each: warm-up, peak memory and the values compared
        release_memory()
        baseline = rss_mb()
        with profile(device) as rec:
            results[name] = fn()
        peaks[name] = rec.peak_cuda_mb if rec.peak_cuda_mb is not None else (rec.peak_rss_mb or 0.0) - baseline
    times = interleaved(runs, args.repeats)
    print(f"\n{'variant':<22} {'median s':>9} {'x epoch':>8} {'peak MiB':>9}")
    for name in runs:
        print(f"{name:<22} {statistics.median(times[name]):>9.2f} {median_ratio(times[name], times['epoch']):>8.2f} "
              f"{peaks[name]:>9.0f}")
    print("per repeat (fisher hooks / epoch): "
          + ", ".join(f"{a / b:.3f}" for a, b in zip(times["fisher (hooks)"], times["epoch"])))
    ratio = median_ratio(times["fisher (hooks)"], times["epoch"])
    print(f"fisher (hooks): {ratio:.2f}x one epoch - {verdict(ratio, 1.5)}")
    agreement = worst_relative(results["fisher (hooks)"], results["fisher (torch.func)"]) if args.func else None
    if agreement is not None:
        print(f"hooks vs torch.func Fisher: worst max|diff|/max|F| over parameters {agreement:.1e}")
    if args.json:
        write_json(args.json, {"machine": machine(), "device": str(device), "args": vars(args),
                               "rows": {name: {"median_s": statistics.median(times[name]),
                                               "epoch_ratio": median_ratio(times[name], times["epoch"]),
                                               "epoch_ratios": [a / b for a, b in zip(times[name], times["epoch"])],
                                               "peak_mib": peaks[name]} for name in runs},
                               "hooks_vs_func_worst_rel": agreement})


if __name__ == "__main__":
    main()

"""Evaluation speed: the runner's `predict` (length-sorted batches, dynamic padding) vs padding to max length.

Both variants run MiniLM under `torch.inference_mode()` on every test split of `reviews`, with the same batch
size. The baseline is what a plain loop does: batches in split order, each padded to the task's `max_length`
(the Hugging Face `padding="max_length"` habit). The script asserts identical predictions (argmax equal,
logits close) and prints the median paired speed ratio (target >= 1.5x).

    python benchmarks/bench_eval.py [--repeats 5] [--test-size N] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import Tensor, nn

from clbench.benchmarks._timing import (
    encoded_stream,
    interleaved,
    machine,
    median_ratio,
    run_context,
    verdict,
)
from clbench.data import EncodedSplit
from clbench.models import build_model
from clbench.training.evaluation import predict


def predict_padded(model: nn.Module, split: EncodedSplit, num_labels: int, batch_size: int, width: int,
                   device: torch.device) -> Tensor:
    """Logits [n, num_labels] with batches in split order, every one padded to `width` tokens."""
    model.eval()
    n = len(split)
    ids = torch.full((n, width), split.pad_id, dtype=torch.long)
    keep = min(width, split.ids.shape[1])
    ids[:, :keep] = split.ids[:, :keep]
    mask = (torch.arange(width).unsqueeze(0) < split.lengths.unsqueeze(1)).long()
    logits = torch.empty(n, num_labels)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            out = model(input_ids=ids[rows].to(device), attention_mask=mask[rows].to(device)).logits
            logits[rows] = out.float().cpu()
    return logits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--test-size", type=int, default=None, help="examples per test split (default: stream's)")
    parser.add_argument("--batch-size", type=int, default=64, help="evaluation batch size (the runner's default)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    stream, splits = encoded_stream("reviews", test_size=args.test_size)
    ctx = run_context(stream)
    model = build_model("minilm", stream.num_labels, 0).to(ctx.device)
    tests = [test for _, _, test in splits]
    widths = [task.max_length for task in stream.tasks]
    print(f"machine: {machine()}")
    print("test splits: " + ", ".join(
        f"{t.name} n={len(s)} max_length={w} mean_len={float(s.lengths.float().mean()):.1f}"
        for t, s, w in zip(stream.tasks, tests, widths)))

    for test, width, task in zip(tests, widths, stream.tasks):  # also warms up both paths
        a = predict(model, test, ctx, args.batch_size)
        b = predict_padded(model, test, ctx.num_labels, args.batch_size, width, ctx.device)
        assert torch.equal(a.argmax(1), b.argmax(1)), f"{task.name}: predictions differ"
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), f"{task.name}: max |diff| {(a - b).abs().max():.2e}"
        print(f"{task.name}: argmax identical, max |logit diff| {(a - b).abs().max():.1e}")
    # Pairs are timed per task (short, adjacent calls), so load swings hit both sides of a pair alike.
    per_task: dict[str, dict[str, list[float]]] = {}
    for test, width, task in zip(tests, widths, stream.tasks):
        def bucketed(test: EncodedSplit = test) -> Tensor:
            return predict(model, test, ctx, args.batch_size)

        def padded(test: EncodedSplit = test, width: int = width) -> Tensor:
            return predict_padded(model, test, ctx.num_labels, args.batch_size, width, ctx.device)

        per_task[task.name] = interleaved({"bucketed": bucketed, "padded": padded}, args.repeats)
    for task, test, width in zip(stream.tasks, tests, widths):
        times = per_task[task.name]
        work = len(test) * width / float(sum(int(test.lengths[i].max()) * len(i)
                                             for i in torch.split(torch.argsort(test.lengths), args.batch_size)))
        print(f"{task.name}: speed-up {median_ratio(times['padded'], times['bucketed']):.2f}x "
              f"(padded tokens / bucketed tokens {work:.2f}); per repeat "
              + ", ".join(f"{a / b:.2f}" for a, b in zip(times["padded"], times["bucketed"])))
    total = {k: [sum(per_task[t][k][r] for t in per_task) for r in range(args.repeats)]
             for k in ("bucketed", "padded")}
    ratio = median_ratio(total["padded"], total["bucketed"])
    print(f"all test sets: bucketed median {statistics.median(total['bucketed']):.2f} s, padded median "
          f"{statistics.median(total['padded']):.2f} s over {args.repeats} paired repeats")
    print(f"speed-up (padded / bucketed, median of paired ratios): {ratio:.2f}x "
          f"{verdict(ratio, 1.5, lower_is_better=False)}")
    if ctx.device.type == "cuda":
        print(f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()

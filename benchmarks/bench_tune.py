"""A search by `clbench tune` vs the same trials as separate runs (target <= 0.5x).

Wall time of one `clbench.tuning.tune` over several methods (default fip and naive, `--trials` each) versus the
sum of its trials run again one at a time, each a full `clbench.training.run.run` on the validation split into
its own directory, with the values the search chose for that trial: what a user searching by hand with
`clbench run` would pay for the same trials. The search prepares the stream once, reuses row 0 and the first
task's training across trials of a method whose first task is plain fine-tuning (same seed, learning rate and
budget), and prunes hopeless trials (pruned trials are re-run in full on the separate side, as a hand search
would not know to stop them). Both sides run in this process, the tokenisation cache warm, the search first
(its trials define the other side); with `--repeats` > 1 the figure is the median of paired ratios.

    python benchmarks/bench_tune.py [--methods fip,naive] [--params fip.ce_weight,naive.lr] [--trials 6]
        [--model minilm] [--stream reviews] [--steps 8] [--train-size 64] [--test-size 32] [--repeats 1]
"""

from __future__ import annotations

import argparse
import ast
import csv
import shutil
import tempfile
from pathlib import Path
from typing import Any

from clbench.benchmarks._timing import machine, median_ratio, timed, verdict
from clbench.benchmarks.bench_grid import add_size_options, raw_config
from clbench.config import build_config
from clbench.registry import MethodRegistry
from clbench.training.progress import Progress
from clbench.training.run import run
from clbench.tuning.search import tune
from clbench.tuning.settings import TuneSettings


def search(args: argparse.Namespace, methods: list[str], out: Path) -> list[tuple[str, dict[str, Any]]]:
    """Run the search; return every trial it ran (finished or pruned) as (method, values), in order."""
    settings = TuneSettings(trials=args.trials, params=tuple(args.params.split(",")) if args.params else ())
    tune(build_config(raw_config(args, methods, out)), settings, registry=MethodRegistry.default(),
         progress=Progress("quiet"))
    trials = []
    with (out / "trials.csv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["state"] in ("complete", "pruned") and not row["repeat_of"]:  # a repeat ran nothing
                values = dict(pair.split("=", 1) for pair in row["values"].split("; ") if pair)
                trials.append((row["method"], {k: literal(v) for k, v in values.items()}))
    return trials


def literal(text: str) -> Any:
    """A value as trials.csv writes it (Python's repr) back to its type; strings stay strings."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def separately(args: argparse.Namespace, trials: list[tuple[str, dict[str, Any]]], root: Path) -> None:
    """Each trial as its own run on the validation split, as a search by hand would run it."""
    for number, (method, values) in enumerate(trials):
        raw = {**raw_config(args, [method], root / f"{number:03d}-{method}"), "eval_split": "val", method: values}
        run(build_config(raw), registry=MethodRegistry.default(), progress=Progress("quiet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="fip,naive", help="comma-separated methods to search")
    parser.add_argument("--params", default="fip.ce_weight,naive.lr",
                        help="what to search (clbench tune --params); empty: every declared space")
    parser.add_argument("--trials", type=int, default=6, help="trials per method")
    add_size_options(parser)
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]

    print(f"machine: {machine()}")
    print(f"search of {', '.join(methods)} ({args.params or 'every declared space'}), {args.trials} trials each, "
          f"on {args.stream} with {args.model}: {args.steps} steps per task, train {args.train_size} per task")
    root = Path(tempfile.mkdtemp(prefix="bench_tune-"))
    try:
        run(build_config(raw_config(args, ["naive"], root / "warm")), progress=Progress("quiet"))  # caches warm
        search_times: list[float] = []
        separate_times: list[float] = []
        for repeat in range(args.repeats):
            seconds, trials = timed(lambda r=repeat: search(args, methods, root / f"search{r}"))
            search_times.append(seconds)
            seconds, _ = timed(lambda r=repeat, t=trials: separately(args, t, root / f"separate{r}"))
            separate_times.append(seconds)
            print(f"repeat {repeat + 1}: search {search_times[-1]:.1f} s, the same {len(trials)} trials as "
                  f"separate runs {separate_times[-1]:.1f} s")
        ratio = median_ratio(search_times, separate_times)
        print(f"search / separate runs: {ratio:.3f}x  {verdict(ratio, 0.5)}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

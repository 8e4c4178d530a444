"""A search by `clbench tune` vs the same trials as separate runs (target <= 0.5x).

Wall time of one `clbench.tuning.tune` over several methods (default fip and naive, `--trials` each) versus the
sum of its trials run again one at a time, each a full `clbench.training.run.run` on the validation split into
its own directory, with the values the search chose for that trial: what a user searching by hand with
`clbench run` would pay for the same trials. The search prepares the stream once, reuses row 0 and the first
task's training across trials of a method whose first task is plain fine-tuning (same seed, learning rate and
budget), and prunes hopeless trials (pruned trials are re-run in full on the separate side, as a hand search
would not know to stop them). Both sides run in this process, the tokenisation cache warm, the search first
(its trials define the other side); with `--repeats` > 1 the figure is the median of paired ratios. Since the
separate side runs every trial to the end, it also says where each method's chosen trial ranks among them: what
pruning cost in the quality of the choice.

    python benchmarks/bench_tune.py [--methods fip,naive] [--params fip.ce_weight,naive.lr] [--trials 6]
        [--pruner percentile|median|halving|none] [--prune-every 0] [--model minilm] [--stream reviews]
        [--steps 20] [--train-size 320] [--test-size 32] [--repeats 1]
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
from clbench.data.streams import load_stream_spec
from clbench.registry import MethodRegistry
from clbench.training.progress import Progress
from clbench.training.run import run
from clbench.tuning.search import seed_scores, tune
from clbench.tuning.settings import STUDY, TuneSettings
from clbench.tuning.summary import best_trial


def search(args: argparse.Namespace, methods: list[str], out: Path
           ) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, int], dict[str, int]]:
    """Run the search; return every trial it ran (finished or pruned) as (method, values), in order, the
    position in that list of each method's chosen trial (its best finished one), and how many trials of each
    method the pruner stopped."""
    settings = TuneSettings(trials=args.trials, params=tuple(args.params.split(",")) if args.params else (),
                            pruner=args.pruner, prune_every=args.prune_every)
    tune(build_config(raw_config(args, methods, out)), settings, registry=MethodRegistry.default(),
         progress=Progress("quiet"))
    trials: list[tuple[str, dict[str, Any]]] = []
    numbers: list[tuple[str, int]] = []
    pruned = dict.fromkeys(methods, 0)
    with (out / "trials.csv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["state"] in ("complete", "pruned") and not row["repeat_of"]:  # a repeat ran nothing
                values = dict(pair.split("=", 1) for pair in row["values"].split("; ") if pair)
                trials.append((row["method"], {k: literal(v) for k, v in values.items()}))
                numbers.append((row["method"], int(row["trial"])))
                pruned[row["method"]] += row["state"] == "pruned"
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(out / STUDY)))
    chosen = {}
    for method in methods:  # the trial tuned.yaml took, by the search's own rule
        best = best_trial(optuna.load_study(study_name=method, storage=storage))
        if best is not None:
            chosen[method] = numbers.index((method, best.number))
    return trials, chosen, pruned


def literal(text: str) -> Any:
    """A value as trials.csv writes it (Python's repr) back to its type; strings stay strings."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def separately(args: argparse.Namespace, trials: list[tuple[str, dict[str, Any]]], root: Path) -> list[float]:
    """Each trial as its own run on the validation split, as a search by hand would run it; returns each run's
    validation ACC after the last task (the objective the search maximises)."""
    scores = []
    tasks = len(load_stream_spec(args.stream).tasks)
    for number, (method, values) in enumerate(trials):
        raw = {**raw_config(args, [method], root / f"{number:03d}-{method}"), "eval_split": "val", method: values}
        out = run(build_config(raw), registry=MethodRegistry.default(), progress=Progress("quiet"))
        scores.append(seed_scores(out, "acc_cil", [0], tasks)[0])
    return scores


def choice_quality(trials: list[tuple[str, dict[str, Any]]], chosen: dict[str, int], scores: list[float]) -> str:
    """Per method: where the search's choice ranks among the same trials run to the end (1 = the best of them)."""
    parts = []
    for method, position in chosen.items():
        mine = [scores[i] for i, (m, _) in enumerate(trials) if m == method]
        rank = 1 + sum(score > scores[position] for score in mine)
        parts.append(f"{method}: chose {trials[position][1]} at {scores[position]:.3f}, rank {rank} of {len(mine)} "
                     f"run to the end (best {max(mine):.3f})")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="fip,naive", help="comma-separated methods to search")
    parser.add_argument("--params", default="fip.ce_weight,naive.lr",
                        help="what to search (clbench tune --params); empty: every declared space")
    parser.add_argument("--trials", type=int, default=6, help="trials per method")
    parser.add_argument("--pruner", default="percentile", help="clbench tune --pruner")
    parser.add_argument("--prune-every", type=int, default=0, help="clbench tune --prune-every (steps)")
    add_size_options(parser)
    # bench_grid's 64 examples leave about 6 validation examples per task: every trial would tie on noise
    parser.set_defaults(train_size=320, steps=20)
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]

    print(f"machine: {machine()}")
    print(f"search of {', '.join(methods)} ({args.params or 'every declared space'}), {args.trials} trials each, "
          f"on {args.stream} with {args.model}: {args.steps} steps per task, train {args.train_size} per task; "
          f"pruner {args.pruner}, reports "
          + (f"every {args.prune_every} steps and after each task" if args.prune_every else "after each task"))
    root = Path(tempfile.mkdtemp(prefix="bench_tune-"))
    try:
        run(build_config(raw_config(args, ["naive"], root / "warm")), progress=Progress("quiet"))  # caches warm
        search_times: list[float] = []
        separate_times: list[float] = []
        for repeat in range(args.repeats):
            seconds, (trials, chosen, pruned) = timed(lambda r=repeat: search(args, methods, root / f"search{r}"))
            search_times.append(seconds)
            seconds, scores = timed(lambda r=repeat, t=trials: separately(args, t, root / f"separate{r}"))
            separate_times.append(seconds)
            print(f"repeat {repeat + 1}: search {search_times[-1]:.1f} s, the same {len(trials)} trials as "
                  f"separate runs {separate_times[-1]:.1f} s")
            print("  pruned: " + ", ".join(f"{method} {count} of {sum(m == method for m, _ in trials)}"
                                           for method, count in pruned.items()))
            print(f"  the search's choices among the trials run to the end: {choice_quality(trials, chosen, scores)}")
        ratio = median_ratio(search_times, separate_times)
        print(f"search / separate runs: {ratio:.3f}x  {verdict(ratio, 0.5)}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The line printed after each task names what a causal LM's accuracy measures (preference or answer accuracy),
told by the `measure` its evaluation records carry, whichever executor trained the unit."""

from __future__ import annotations

import io
import re
from pathlib import Path

from clbench.training.progress import Progress

FIXTURES = Path(__file__).parents[1] / "fixtures"


def evaluation(unit: str, metrics: tuple[str, ...], measure: str | None = None) -> list[dict[str, object]]:
    """The accuracy records of one evaluation after task 't2' of three."""
    extra = {"measure": measure} if measure else {}
    return [{"type": "accuracy", "unit": unit, "row": 2, "task": "t2", "eval_task": name, "eval_index": i,
             "metric": metric, "value": value, **extra}
            for i, (name, value) in enumerate((("t1", 0.5), ("t2", 0.25), ("t3", 0.0))) for metric in metrics]


def test_a_preference_evaluation_prints_preference_accuracy() -> None:
    stream = io.StringIO()
    progress = Progress("lines", stream)
    progress.append(evaluation("p/seed0", ("acc_cil", "reward_margin", "acc_til"), "preference accuracy")
                    + evaluation("g/seed0", ("acc_cil", "acc_til"), "answer accuracy")
                    + evaluation("c/seed0", ("acc_cil", "acc_til")))
    assert stream.getvalue().splitlines() == [
        "p/seed0: after 't2', preference accuracy on the tasks so far: t1 0.500, t2 0.250; mean 0.375",
        "g/seed0: after 't2', answer accuracy on the tasks so far: t1 0.500, t2 0.250; mean 0.375",
        "c/seed0: after 't2', accuracy on the tasks so far (class-incremental): t1 0.500, t2 0.250; mean 0.375"]


def test_a_preference_run_prints_preference_accuracy_after_each_task(tmp_path: Path) -> None:
    from clbench.config import build_config
    from clbench.registry import MethodRegistry
    from clbench.training.run import run

    config = build_config({"methods": ["naive"], "stream": str(FIXTURES / "preference_synthetic.yaml"),
                           "model": "tiny-lm", "out": str(tmp_path / "run"), "train_size": 16, "test_size": 8,
                           "batch_size": 4, "max_steps": 1})
    stream = io.StringIO()
    run(config, registry=MethodRegistry.default(()), progress=Progress("lines", stream))
    after = [line for line in stream.getvalue().splitlines() if "on the tasks so far" in line]
    assert len(after) == 2 and "class-incremental" not in stream.getvalue()
    assert re.fullmatch(r"naive/seed0: after 'shapes', preference accuracy on the tasks so far: "
                        r"colours \d\.\d{3}, shapes \d\.\d{3}; mean \d\.\d{3}", after[1])

"""Preference streams end to end on `tiny-lm`: every method that declares the kind runs, DPO learns a month,
the reference is the model at the task's start, and what cannot apply is refused before training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from runs_util import FAULTS, FIXTURES, comparable, tiny_run

from clbench.errors import ConfigError

STREAM = str(FIXTURES / "preference_synthetic.yaml")
PROBE = str(FIXTURES / "plugin_reference_probe.py")
PREFERENCE_METHODS = ("naive", "replay", "ewc", "lora", "fip", "fip-lora", "o-lora")


def preference_run(out: Path, methods: tuple[str, ...], **overrides: Any) -> list[dict[str, Any]]:
    values: dict[str, Any] = {"stream": STREAM, "model": "tiny-lm", "train_size": 24, "test_size": 16,
                              "batch_size": 4, "max_steps": 4, "buffer_size": 8}
    values.update(overrides)
    return tiny_run(out, methods, **values)


def accuracy(records: list[dict[str, Any]], unit: str, row: int, task: int) -> float:
    return next(r["value"] for r in records if r["type"] == "accuracy" and r["unit"] == unit and r["row"] == row
                and r["eval_index"] == task and r["metric"] == "acc_cil")


def test_every_preference_method_runs_through_the_stream(tmp_path):
    records = preference_run(tmp_path / "run", PREFERENCE_METHODS)
    done = {r["unit"] for r in records if r["metric"] == "status" and r["value"] == "done"}
    assert done == {f"{m}/seed0" for m in PREFERENCE_METHODS}
    for method in PREFERENCE_METHODS:
        unit = f"{method}/seed0"
        assert accuracy(records, unit, 0, 0) == accuracy(records, unit, 0, 1) == 0.5  # the base model: chance
        margins = [r for r in records if r["unit"] == unit and r["metric"] == "reward_margin" and r["row"] == 2]
        assert len(margins) == 2 and all(abs(r["value"]) < 1e3 for r in margins)
        assert not [r for r in records if r["unit"] == unit and r["type"] == "functional"]


def test_naive_dpo_learns_its_month_and_forgets_under_the_next(tmp_path):
    records = preference_run(tmp_path / "run", ("naive",), train_size=48, test_size=24, max_steps=None, epochs=3,
                             batch_size=8)
    learnt = accuracy(records, "naive/seed0", 1, 0)
    assert learnt >= 0.8  # 24 held-out pairs: the keywords of the preferred class are learnt
    margin = next(r["value"] for r in records if r["unit"] == "naive/seed0" and r["metric"] == "reward_margin"
                  and r["row"] == 1 and r["eval_index"] == 0)
    assert margin > 0


def test_the_reference_is_the_model_at_the_start_of_each_task(tmp_path):
    """The probe plugin compares every batch's reference log-probs with a copy frozen in `before_task`; a
    reference computed at any other time (or not per task) fails its unit."""
    records = preference_run(tmp_path / "run", ("reference-probe",), plugins=(PROBE,))
    status = [r for r in records if r["metric"] == "status"]
    assert [r["value"] for r in status] == ["done"], status


def test_methods_and_models_of_the_other_kind_are_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match="method 'si' does not apply to preference streams"):
        preference_run(tmp_path / "a", ("naive", "si"))
    with pytest.raises(ConfigError, match="model 'tiny' is a classifier but stream kind is preference"):
        preference_run(tmp_path / "b", ("naive",), model="tiny")
    with pytest.raises(ConfigError, match="model 'tiny-lm' is a causal-lm but stream kind is classification"):
        tiny_run(tmp_path / "c", ("naive",), model="tiny-lm")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_a_resumed_preference_run_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    """A run stopped in the second month resumes from its checkpoint; rewards are still measured against the
    model before the stream (built again), so every record equals the uninterrupted run's."""
    methods = ("naive", "fip", "interrupt")
    whole = preference_run(tmp_path / "whole", methods, plugins=(FAULTS,))
    monkeypatch.setenv("CLBENCH_TEST_INTERRUPT", "1")  # `interrupt` stops the run at step 3 of task 2
    with pytest.raises(KeyboardInterrupt):
        preference_run(tmp_path / "part", methods, plugins=(FAULTS,))
    monkeypatch.delenv("CLBENCH_TEST_INTERRUPT")
    resumed = preference_run(tmp_path / "part", methods, plugins=(FAULTS,), resume=True)
    assert [r["value"] for r in resumed if r["type"] == "resume"] == [1]
    assert comparable(resumed) == pytest.approx(comparable(whole), abs=1e-6)


def test_gradient_checkpointing_changes_memory_not_results(tmp_path):
    plain = preference_run(tmp_path / "plain", ("naive", "lora"))
    checkpointed = preference_run(tmp_path / "gc", ("naive", "lora"), gradient_checkpointing=True)
    assert comparable(checkpointed) == pytest.approx(comparable(plain), abs=1e-5)


GENERATION = str(FIXTURES / "generation_synthetic.yaml")


def test_every_method_runs_on_a_generation_stream_and_naive_learns_then_forgets(tmp_path):
    """Generation tasks train on the target answer's tokens and are scored, lm-eval style, by whether the
    target is likelier than the alternative: the keyword → class name mapping is learnt, and the next task's
    names overwrite it."""
    records = preference_run(tmp_path / "all", PREFERENCE_METHODS, stream=GENERATION)
    done = {r["unit"] for r in records if r["metric"] == "status" and r["value"] == "done"}
    assert done == {f"{m}/seed0" for m in PREFERENCE_METHODS}
    records = preference_run(tmp_path / "naive", ("naive",), stream=GENERATION, train_size=96, max_steps=None,
                             epochs=10, batch_size=8)
    assert accuracy(records, "naive/seed0", 1, 0) >= 0.9
    assert accuracy(records, "naive/seed0", 2, 1) >= 0.9
    assert accuracy(records, "naive/seed0", 2, 0) <= 0.75  # forgotten
    assert not [r for r in records if r["metric"] == "reward_margin"]


def test_a_resumed_generation_run_measures_general_text_against_the_base_model(tmp_path, monkeypatch):
    methods = ("naive", "interrupt")
    whole = preference_run(tmp_path / "whole", methods, plugins=(FAULTS,), stream=GENERATION)
    monkeypatch.setenv("CLBENCH_TEST_INTERRUPT", "1")
    with pytest.raises(KeyboardInterrupt):
        preference_run(tmp_path / "part", methods, plugins=(FAULTS,), stream=GENERATION)
    monkeypatch.delenv("CLBENCH_TEST_INTERRUPT")
    resumed = preference_run(tmp_path / "part", methods, plugins=(FAULTS,), stream=GENERATION, resume=True)
    assert any(r["type"] == "general" and r["metric"] == "kl_base" and r["row"] == 2 for r in resumed)
    assert comparable(resumed) == pytest.approx(comparable(whole), abs=1e-6)

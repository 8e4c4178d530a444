"""What a report calls its scores, by the kind of stream the run trained on (env.json's ``stream.kind``).

On a classification stream ``acc_cil`` is class-incremental accuracy (argmax over every class of the shared
head) and ``acc_til`` task-aware accuracy, a score of its own. On a preference stream (`clbench.preference`)
``acc_cil`` is preference accuracy and ``acc_til`` repeats it (one model scores every pair: there is no task
identity to use), no functional drift is recorded, and the mean reward margin is recorded beside it. On a
generation stream ``acc_cil`` is answer accuracy (the target likelier than the alternative answer). Runs
written before env.json named the kind are classification runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from clbench.errors import RunDirError


@dataclass(frozen=True)
class Scenario:
    """The names and sections a report gives one kind of stream.

    Attributes:
        kind: env.json's ``stream.kind``.
        label: What ``acc_cil`` measures, as a heading or in parentheses ("Summary: class-incremental").
        accuracy: The same inside a sentence ("class-incremental accuracy on each task").
        short: The same in the console summary's narrow header.
        chance: What a task's chance level is, for the findings' "learned above chance".
        chance_row: The label of the chance row under the learning table, when env.json recorded it.
        layers: The transformer layers Δθ is also reported for alone ("encoder", "decoder").
        task_aware: Whether ``acc_til`` is a score of its own, worth its own table and figure.
        functional_drift: Whether the run records functional drift.
        reward_margin: Whether the run records the mean reward margin.
    """

    kind: str
    label: str
    accuracy: str
    short: str
    chance: str
    chance_row: str
    layers: str
    task_aware: bool
    functional_drift: bool
    reward_margin: bool


SCENARIOS = {
    "classification": Scenario("classification", "class-incremental", "class-incremental accuracy", "CIL",
                               "the share of the task's largest class", "largest class", "encoder",
                               task_aware=True, functional_drift=True, reward_margin=False),
    "preference": Scenario("preference", "preference accuracy", "preference accuracy", "preference",
                           "0.5, the base model's preference accuracy", "base model", "decoder",
                           task_aware=False, functional_drift=False, reward_margin=True),
    "generation": Scenario("generation", "answer accuracy", "answer accuracy", "answer",
                           "0.5, a random choice between the target and the alternative answer", "random choice",
                           "decoder", task_aware=False, functional_drift=False, reward_margin=False),
}


def scenario(kind: str) -> Scenario:
    """The report's names for a stream of `kind` ("classification", "preference" or "generation").

    Raises:
        RunDirError: If `kind` is none of them (a run written by a newer clbench).
    """
    if kind not in SCENARIOS:
        raise RunDirError(f"env.json gives stream kind '{kind}', which this clbench cannot report (it knows "
                          f"{', '.join(SCENARIOS)}); report the run with the clbench version that wrote it")
    return SCENARIOS[kind]

"""Preference examples for the `pypi` and `hf` sources' `kind: preference` tasks (not a source of its own).

A preference example is a prompt, a chosen response and a rejected one, stored as one text
(`clbench.data.render.join_preference`) with label 0 ("the chosen response is preferred") and classes
`PREFERENCE_CLASSES`, so validation splitting, deduplication and caching treat it like any other example.

**Rated texts (`pypi`).** A VADER ground-truth file rates every text with the crowd's mean sentiment in
[-4, 4]. With `prefer: positive` a text rated >= `threshold` is a chosen response and one rated <= -`threshold`
a rejected one; `prefer: negative` swaps the two sides; texts in between are not used. `pair_records` splits
the two sides into train and test by group, as `clbench.data.splits.split_records` does, and zips each
side's seeded order into pairs, so every text is used at most once.

**Hub rows (`hf`).** `preference_parts` reads one row's prompt, chosen and rejected values: strings, or lists
of chat messages ``{role, content}`` (UltraFeedback binarized). A list's response is its last assistant
message; without a prompt column the prompt is the content of the user messages before it (in the chosen
list), or, when both responses are strings (Anthropic/hh-rlhf's whole conversations), the longest common
prefix of the two that ends at whitespace, the responses being what follows it. Tokens shared by both
responses would cancel in the DPO loss, so moving a shared word into the prompt changes nothing there.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clbench.data import PREFERENCE_CLASSES, Task
from clbench.data.render import join_preference
from clbench.data.splits import Record, deduplicate, normalise, task_rng
from clbench.data.streams import TaskSpec
from clbench.errors import StreamError, shown

PREFERS = ("positive", "negative")
DEFAULT_THRESHOLD = 1.5  # |crowd mean| on VADER's [-4, 4] scale (docs/data.md gives the counts it leaves)
RATED_OPTIONS = ("prefer", "threshold", "prompt")
CHOSEN, REJECTED = 0, 1  # sides of a rated text (Record.label while pairing)


@dataclass(frozen=True)
class RatedPairing:
    """A `pypi` preference task's options: which pole is preferred, how extreme a text must be, the prompt."""

    prefer: str
    threshold: float
    prompt: str

    def side(self, mean: float) -> int | None:
        """CHOSEN or REJECTED for a text with crowd mean `mean`; None for a text between the thresholds."""
        if mean >= self.threshold:
            return CHOSEN if self.prefer == "positive" else REJECTED
        if mean <= -self.threshold:
            return REJECTED if self.prefer == "positive" else CHOSEN
        return None


def check_classes(spec: TaskSpec) -> None:
    """A preference task's classes are fixed; `classes` may only repeat them."""
    if spec.classes is not None and tuple(spec.classes) != PREFERENCE_CLASSES:
        raise StreamError(f"task '{spec.name}': a preference task's classes are fixed "
                          f"({', '.join(PREFERENCE_CLASSES)}), got {list(spec.classes)}; remove 'classes'")


def no_label_options(spec: TaskSpec, options: Sequence[str]) -> None:
    """Refuse classification options in a preference task: every pair's label is 0 (chosen preferred)."""
    for key in options:
        if key in spec.options:
            raise StreamError(f"task '{spec.name}': '{key}' does not apply to a preference task (every pair's "
                              "label is 'chosen preferred'); remove it")


def rated_pairing(spec: TaskSpec) -> RatedPairing:
    """Validate a `pypi` preference task's `prefer`, `threshold` and `prompt` options."""
    no_label_options(spec, ("labels", "label"))
    check_classes(spec)
    prefer = spec.options.get("prefer")
    if prefer not in PREFERS:
        raise StreamError(f"task '{spec.name}': prefer {shown(prefer)} must be 'positive' (chosen = rated >= "
                          "threshold) or 'negative' (chosen = rated <= -threshold); set prefer")
    threshold = spec.options.get("threshold", DEFAULT_THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 4:
        raise StreamError(f"task '{spec.name}': threshold {shown(threshold)} must be a number in (0, 4) on "
                          f"the crowd-mean scale [-4, 4], e.g. {DEFAULT_THRESHOLD}")
    prompt = spec.options.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise StreamError(f"task '{spec.name}': a preference task needs 'prompt', the instruction shown before "
                          "both responses, e.g. prompt: \"Write one sentence from a movie review.\"")
    return RatedPairing(str(prefer), float(threshold), normalise(prompt))


def pair_records(records: Sequence[Record], *, train_size: int, test_size: int, seed: int,
                 task_name: str) -> tuple[list[tuple[Record, Record]], list[tuple[Record, Record]]]:
    """(train, test) lists of (chosen, rejected) records; at most `train_size` / `test_size` pairs.

    Args:
        records: rated texts with `label` CHOSEN or REJECTED and their group, in file order.
        train_size: maximum number of training pairs.
        test_size: maximum number of test pairs.
        seed: the stream seed.
        task_name: mixed into the seed so tasks draw independently.

    Texts are deduplicated (`clbench.data.splits.deduplicate`) and their groups shuffled with the task's
    generator. Walking the groups, a group joins the test side while a side still lacks `test_size` texts; it
    gives only texts of sides still short, and its other texts are discarded, so no group straddles train and
    test. The other groups form the train pool, shuffled. Pairs zip each side's order, so the test pairs do not
    depend on `train_size` and fewer training pairs are a prefix of more.
    """
    rng = task_rng(seed, task_name)
    groups: dict[str, list[Record]] = defaultdict(list)
    for record in deduplicate(records):
        groups[record.group].append(record)
    order = list(groups)
    rng.shuffle(order)
    for key in order:
        rng.shuffle(groups[key])
    test: dict[int, list[Record]] = {CHOSEN: [], REJECTED: []}
    used: set[str] = set()
    for key in order:
        if min(len(side) for side in test.values()) >= test_size:
            break
        for record in groups[key]:
            if len(test[record.label]) < test_size:
                test[record.label].append(record)
                used.add(key)
    train: dict[int, list[Record]] = {CHOSEN: [], REJECTED: []}
    for key in order:
        if key not in used:
            for record in groups[key]:
                train[record.label].append(record)
    for side in (*test.values(), *train.values()):
        rng.shuffle(side)
    return (list(zip(train[CHOSEN][:train_size], train[REJECTED][:train_size])),
            list(zip(test[CHOSEN], test[REJECTED])))


def rated_task(spec: TaskSpec, seed: int, records: Sequence[Record], prompt: str, source: str) -> Task:
    """A preference Task from rated texts (see `pair_records`); a pair's group is its chosen text's group."""
    train, test = pair_records(records, train_size=spec.train_size, test_size=spec.test_size, seed=seed,
                               task_name=spec.name)

    def texts(pairs: list[tuple[Record, Record]]) -> tuple[str, ...]:
        return tuple(join_preference(prompt, chosen.text, rejected.text) for chosen, rejected in pairs)

    return Task(name=spec.name, classes=PREFERENCE_CLASSES, train_texts=texts(train), train_labels=(0,) * len(train),
                test_texts=texts(test), test_labels=(0,) * len(test), max_length=spec.max_length,
                truncation=spec.truncation, source=source, description=spec.description,
                train_groups=tuple(chosen.group for chosen, _ in train), kind="preference")


def is_chat(value: Any) -> bool:
    """Whether `value` is a list of chat messages (mappings with `role` and `content`)."""
    return isinstance(value, (list, tuple)) and all(isinstance(m, Mapping) for m in value)


def message_text(messages: Sequence[Mapping[str, Any]], role: str) -> str:
    """The contents of the messages with `role`, one per line."""
    return "\n".join(str(m.get("content") or "") for m in messages if m.get("role") == role)


def prompt_of(value: Any) -> str:
    """A prompt column's value as text: a string, or the user messages of a list of chat messages."""
    if isinstance(value, str):
        return value
    if not is_chat(value):
        raise ValueError(f"{shown(value, 60)} is neither a string nor a list of {{role, content}} messages")
    return message_text(value, "user")


def response_of(value: Any) -> tuple[str, str] | None:
    """(prompt it carries, response) of a chosen or rejected value; None when it holds no response.

    A string is a response with no prompt. A list of chat messages gives its last assistant message as the
    response and the user messages before it as the prompt. Raises ValueError for any other value.
    """
    if isinstance(value, str):
        return "", value
    if not is_chat(value):
        raise ValueError(f"{shown(value, 60)} is neither a string nor a list of {{role, content}} messages")
    last = max((i for i, m in enumerate(value) if m.get("role") == "assistant"), default=None)
    if last is None:
        return None
    return message_text(value[:last], "user"), str(value[last].get("content") or "")


def split_shared_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) of two whole conversations: the prompt is their longest
    common prefix that ends at whitespace, so no word is cut; the responses are the rest."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    cut = max((i + 1 for i in range(shared) if chosen[i].isspace()), default=0)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def preference_parts(prompt: Any, chosen: Any, rejected: Any, has_prompt: bool) -> tuple[str, str, str] | None:
    """(prompt, chosen, rejected) texts of one Hub row, whitespace-normalised; None when the row holds no
    usable pair (a missing value, an empty response, or the same response twice).

    Args:
        prompt: the prompt column's value (a string or chat messages); ignored unless `has_prompt`.
        chosen: the chosen column's value (a string or chat messages).
        rejected: the rejected column's value.
        has_prompt: whether the task reads a prompt column; without one the prompt is derived (module docstring).

    Raises:
        ValueError: a value is neither a string nor a list of chat messages.
    """
    if chosen is None or rejected is None or (has_prompt and prompt is None):
        return None
    if not has_prompt and isinstance(chosen, str) and isinstance(rejected, str):
        parts = split_shared_prefix(chosen, rejected)
    else:
        first, second = response_of(chosen), response_of(rejected)
        if first is None or second is None:
            return None
        parts = (prompt_of(prompt) if has_prompt else first[0], first[1], second[1])
    prompt_text, chosen_text, rejected_text = (normalise(part) for part in parts)
    if not chosen_text or not rejected_text or chosen_text == rejected_text:
        return None
    return prompt_text, chosen_text, rejected_text

"""The `synthetic` source: keyword-classification texts generated in memory, for tests and smoke runs.

Each class of each task owns a few keywords that appear nowhere else in the stream; a text is a run of
shared filler words with two keywords of its class inserted at random places. With probability
`label_noise` one of the keywords comes from another class of the same task, so accuracy stays below 100%.
Everything is drawn from a generator seeded by the stream seed and the task's position, so a stream is
identical on every machine. Options: `keywords_per_class` (4), `min_words` (6), `max_words` (14),
`label_noise` (0.1).

With `kind: preference` the task is a preference task instead (for tests and smoke runs of causal LMs): the
prompt is the task's name and a colon, the chosen response a text with keywords of the first class and the
rejected one a text with keywords of the second, so the preferred style is learnable from the keywords alone.
"""

from __future__ import annotations

import random
import zlib

from clbench.data import PREFERENCE_CLASSES, Task
from clbench.data.render import join_preference
from clbench.data.streams import SourceContext, TaskSpec
from clbench.errors import StreamError

FILLER = ("the", "a", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on", "with", "as", "this",
          "at", "by", "from", "or", "an", "but", "not", "what", "all", "were", "when", "we", "there", "can",
          "one", "out", "so", "up", "if", "about", "who", "get", "which", "go", "me", "very", "just", "some",
          "time", "could", "them", "see", "other", "than", "then", "now", "look", "only", "come", "over")
SYLLABLES = ("ka", "lo", "mi", "ne", "pu", "ra", "si", "to", "vu", "ze", "bo", "da", "fi", "gu", "hy", "jo")
OPTIONS = {"keywords_per_class": 4, "min_words": 6, "max_words": 14, "label_noise": 0.1, "kind": "classification"}
KINDS = ("classification", "preference")


def keyword(task_name: str, label: int, k: int) -> str:
    """A made-up word unique to (task, class, k): syllables picked from a CRC of those three."""
    code = zlib.crc32(f"{task_name}/{label}/{k}".encode())
    parts = [SYLLABLES[(code >> (4 * i)) & 15] for i in range(3)]
    return "".join(parts) + "xyz"[label % 3] + str(k)


def build_task(spec: TaskSpec, ctx: SourceContext) -> Task:
    unknown = set(spec.options) - set(OPTIONS)
    if unknown:
        raise StreamError(f"task '{spec.name}': unknown synthetic option(s) {sorted(unknown)}; "
                          f"valid: {', '.join(OPTIONS)}")
    opts = {**OPTIONS, **spec.options}
    if opts["kind"] not in KINDS:
        raise StreamError(f"task '{spec.name}': kind '{opts['kind']}' must be one of {', '.join(KINDS)}")
    if spec.classes is None:
        raise StreamError(f"task '{spec.name}': a synthetic task needs 'classes'")
    num_classes = len(spec.classes)
    rng = random.Random(zlib.crc32(f"{ctx.seed}/{spec.name}".encode()))
    words = {c: [keyword(spec.name, c, k) for k in range(int(opts["keywords_per_class"]))]
             for c in range(num_classes)}

    def sample(label: int) -> str:
        text = [rng.choice(FILLER) for _ in range(rng.randint(int(opts["min_words"]), int(opts["max_words"])))]
        marks = [rng.choice(words[label]), rng.choice(words[label])]
        if rng.random() < float(opts["label_noise"]):
            marks[0] = rng.choice(words[rng.choice([c for c in range(num_classes) if c != label])])
        for mark in marks:
            text.insert(rng.randint(0, len(text)), mark)
        return " ".join(text)

    def split(size: int, seen: set[str]) -> tuple[tuple[str, ...], tuple[int, ...]]:
        texts: list[str] = []
        labels: list[int] = []
        while len(texts) < size:
            label = len(texts) % num_classes  # balanced classes
            text = sample(label)
            if text not in seen:
                seen.add(text)
                texts.append(text)
                labels.append(label)
        return tuple(texts), tuple(labels)

    seen: set[str] = set()
    if opts["kind"] == "preference":
        train, test = (tuple(join_preference(f"{spec.name}:", sample(0), sample(1)) for _ in range(size))
                       for size in (spec.train_size, spec.test_size))
        return Task(name=spec.name, classes=PREFERENCE_CLASSES, train_texts=train, train_labels=(0,) * len(train),
                    test_texts=test, test_labels=(0,) * len(test), max_length=spec.max_length,
                    truncation=spec.truncation, source="synthetic", description=spec.description,
                    kind="preference")
    train_texts, train_labels = split(spec.train_size, seen)
    test_texts, test_labels = split(spec.test_size, seen)
    return Task(name=spec.name, classes=spec.classes, train_texts=train_texts, train_labels=train_labels,
                test_texts=test_texts, test_labels=test_labels, max_length=spec.max_length,
                truncation=spec.truncation, source="synthetic", description=spec.description)

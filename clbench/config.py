"""Run configuration: one frozen dataclass, filled from a YAML file, CLI flags and `--set key=value`.

Precedence: dataclass defaults < `--config` YAML < CLI flags < `--set` overrides. A YAML file holds run fields
at the top level and one mapping per method for its config, e.g.::

    methods: [naive, ewc]
    stream: reviews
    epochs: 1
    ewc: {penalty_weight: 1000}

`--set ewc.penalty_weight=1000` and `--set batch_size=8` use the same keys. Values are parsed as YAML
scalars and checked against the dataclass field types. `validate()` collects every problem and raises one
ConfigError, before any data is read or any model trained.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from clbench.errors import ClbenchError, ConfigError, shown, suggest
from clbench.hints import option_hint, run_key_hint
from clbench.search import Choice, IntRange
from clbench.yamlio import read_yaml


def option(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING, **metadata: Any) -> Any:
    """A config field with its help text, written once and reused by the CLI, `clbench list` and the docs.

    Extra keyword arguments go into the field's metadata, e.g. `flag=True` gives a run field its own
    `clbench run --field-name` option.
    """
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run. Method hyperparameters live in `method_options` (name -> mapping)."""

    methods: tuple[str, ...] = option(("naive",), "comma-separated methods to compare, e.g. naive,ewc,lora "
                                      "(`clbench list methods`)", flag=True)
    stream: str = option("reviews", "built-in stream name or a stream YAML file (`clbench list streams`)",
                         flag=True)
    model: str = option("minilm", "model alias (tiny, minilm, bert-base), HF model id or local directory",
                        flag=True)
    model_args: str | None = option(None, "from_pretrained arguments of a Hub or local model, comma-separated: "
                                    "revision=BRANCH|TAG|COMMIT, dtype=float32|bfloat16|float16", flag=True)
    seeds: tuple[int, ...] = option((0,), "comma-separated random seeds, e.g. 0,1,2; one unit per method and "
                                    "seed", flag=True)
    out: str | None = option(None, "run directory (default runs/<stream>-<model>-<time>)", flag=True)
    epochs: int = option(3, "passes over each task's training data", flag=True, search=IntRange(1, 5))
    max_steps: int | None = option(None, "optimiser steps per task; overrides epochs when set", flag=True)
    batch_size: int = option(16, "training batch size", flag=True)
    eval_batch_size: int = option(64, "evaluation batch size")
    lr: float | None = option(None, "AdamW learning rate (default: the model's; `clbench list models`)", flag=True,
                              search=Choice((1e-5, 3e-5, 1e-4, 3e-4, 1e-3)))
    weight_decay: float = option(0.01, "AdamW weight decay")
    warmup_ratio: float = option(0.1, "fraction of each task's steps with linear warm-up")
    grad_clip: float = option(1.0, "max gradient norm (0 disables clipping)")
    head: str | None = option(None, "shared (argmax over all classes) or per-task; default: the stream's",
                              flag=True)
    pooling: str | None = option(None, "readout the head sees: cls (transformers' pooler on the first token) or "
                                 "mean (masked mean of the token states); default: the model's own "
                                 "(`clbench list models`)", flag=True)
    active_classes: str = option("all", "outputs the training loss sees: all (every class of the shared head), "
                                 "seen (classes of tasks trained so far) or current (the example's own task's "
                                 "classes, the labels trick); evaluation always uses every class", flag=True)
    buffer_size: int = option(200, "examples of old tasks that any method keeping old data may store (the same "
                              "budget for every method)", flag=True)
    train_size: int | None = option(None, "override every task's training-set size", flag=True)
    test_size: int | None = option(None, "override every task's test-set size", flag=True)
    val_fraction: float | None = option(None, "share of each task's training data held out for validation "
                                        "(default: the stream's, 0.1 unless it sets one)", flag=True)
    eval_split: str = option("test", "what every evaluation reads: test (verdicts) or val (choices: `clbench "
                             "tune` sets it, and test data are then never read)")
    max_length: int | None = option(None, "override every task's max tokens per example", flag=True)
    data_dir: str | None = option(None, "local copies of Hub datasets for hf streams (save_to_disk folders or "
                                  "parquet)", flag=True)
    device: str = option("auto", "auto, cpu, cuda or cuda:N", flag=True)
    precision: str = option("fp32", "fp32, bf16 or fp16 (autocast on CUDA; fp32 on CPU)")
    dpo_beta: float = option(0.1, "β of the DPO loss on preference streams (Rafailov et al. 2023 use 0.1): how far "
                             "the policy may move from the reference model of each task")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass instead of storing "
                                          "them (transformers' gradient checkpointing): less memory, slower steps")
    compile: bool = option(False, "compile the model's training forward and backward with torch.compile; every "
                           "new input shape pays a compilation first (evaluation and method hooks stay eager)",
                           flag=True)
    eval_every: int = option(0, "also evaluate every task every N training steps (0: only after tasks)",
                             flag=True)
    plugins: tuple[str, ...] = option((), "extra method files to register")
    executor: str = option("local", "local (in process) or ray (one Ray task per unit)", flag=True)
    ray_address: str | None = option(None, "address of a Ray cluster for --executor ray (default: start a local "
                                     "one)", flag=True)
    log: tuple[str, ...] = option((), "experiment trackers that also receive every record, comma-separated: "
                                  "tensorboard, wandb (offline unless WANDB_MODE=online), mlflow (a file store in "
                                  "the run directory unless MLFLOW_TRACKING_URI is set)", flag=True)
    gpus_per_unit: float = option(1.0, "share of a GPU each Ray unit asks for on a CUDA run; 0.25 runs four units "
                                  "on one card at once (small models are bound by kernel launches)", flag=True)
    keep_checkpoints: bool = option(False, "keep each unit's checkpoint after it finishes (default: delete it)",
                                    flag=True)
    provenance: Mapping[str, Any] | None = option(None, "where the hyper-parameters came from (written by "
                                                  "`clbench tune` into tuned.yaml; shown in the report)")
    method_options: Mapping[str, Mapping[str, Any]] = option(
        default_factory=dict, help="per-method config values, e.g. {ewc: {penalty_weight: 1000}}; a method section "
        "may also set the training fields in TRAINING_FIELDS for that method only, e.g. {lora: {lr: 3e-4}}")

    def for_method(self, name: str) -> RunConfig:
        """This config with `name`'s training overrides (e.g. `--set lora.lr=3e-4`) applied to the run fields."""
        _, training = split_options(self.method_options.get(name, {}))
        if not training:
            return self
        types = field_types(RunConfig)
        return replace(self, **{k: coerce(v, types[k], f"{name}.{k}") for k, v in training.items()})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            if f.name == "method_options":
                value = {k: {name: list(v) if isinstance(v, tuple) else v for name, v in opts.items()}
                         for k, opts in (value or {}).items()}
            out[f.name] = value
        return out


RUN_FIELDS = {f.name: f for f in fields(RunConfig)}
# Run fields a method section may override for that method alone (each method's own learning rate and budget).
TRAINING_FIELDS = ("lr", "epochs", "max_steps", "warmup_ratio", "weight_decay", "grad_clip")


def split_options(raw: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A method section -> (the method's own config values, its training overrides of run fields)."""
    own = {k: v for k, v in raw.items() if k not in TRAINING_FIELDS}
    return own, {k: v for k, v in raw.items() if k in TRAINING_FIELDS}


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a config dataclass (its module uses `from __future__ import annotations`)."""
    return typing.get_type_hints(cls)
CHOICES = {"head": (None, "shared", "per-task"), "pooling": (None, "cls", "mean"),
           "active_classes": ("all", "seen", "current"),
           "eval_split": ("test", "val"), "device": None, "precision": ("fp32", "bf16", "fp16"),
           "executor": ("local", "ray")}


def field_help() -> dict[str, str]:
    return {name: f.metadata.get("help", "") for name, f in RUN_FIELDS.items()}


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert `value` (from YAML or a `--set` string) to the field type `annotation`, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {shown(value)}")
    if origin in (tuple, Sequence, list) or annotation in (tuple, list):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            items = [items]
        inner = args[0] if args else str
        return tuple(coerce(_scalar(v) if isinstance(v, str) else v, inner, where) for v in items)
    if origin in (Mapping, dict) or annotation in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {shown(value)}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {shown(value)}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {shown(value)}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {shown(value)}")
        return float(value)
    if annotation is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{where}: expected a string, got {shown(value)}")
        return str(value)
    if annotation is Any:
        return value
    return value


def _scalar(text: str) -> Any:
    """Parse a `--set` value like YAML does: 1 -> int, 1e-3 -> float, true -> bool, else string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string; accept it as a float
        try:
            return float(value) if any(c in value for c in ".eE") and value.strip() else value
        except ValueError:
            return value
    return value


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """`["ewc.penalty_weight=1000", "epochs=2"]` -> {"ewc.penalty_weight": 1000, "epochs": 2}."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set '{item}' is not KEY=VALUE; write e.g. --set ewc.penalty_weight=1000")
        out[key.strip()] = _scalar(text.strip())
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{path}' does not exist; pass an existing YAML file to --config")
    raw = read_yaml(p, "config file", ConfigError)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must be a mapping of run fields and method sections")
    return raw


def build_config(*layers: Mapping[str, Any], method_names: Sequence[str] = (),
                 sources: Sequence[str | None] = ()) -> RunConfig:
    """Merge layers of {key: value} (YAML, CLI flags, --set) into a RunConfig; every error is reported at once.

    Keys are run fields, `method.field` (dotted) or a method name holding a mapping. `method_names` are the
    names a method section may use (registered methods); other unknown keys get suggestions. `sources` name
    the layers (e.g. a YAML file) in errors, in layer order; None leaves a layer unnamed.
    """
    config, errors = collect_config(*layers, method_names=method_names, sources=sources)
    if errors:
        raise ConfigError("; ".join(errors))
    return config


def collect_config(*layers: Mapping[str, Any], method_names: Sequence[str] = (),
                   sources: Sequence[str | None] = ()) -> tuple[RunConfig, list[str]]:
    """`build_config` without raising: the config of every valid value (a bad one keeps its default) and the
    errors, so `validate` can report them together with the problems of the rest."""
    errors: list[str] = []
    values: dict[str, Any] = {}
    options: dict[str, dict[str, Any]] = {}
    for layer, source in zip(layers, [*sources, *[None] * len(layers)]):
        where = f" (in {source})" if source else ""
        for key, value in layer.items():
            key = str(key)
            try:
                _merge(key, value, values, options, method_names)
            except ConfigError as exc:
                errors.append(f"{exc}{where}")
    return RunConfig(**values, method_options=options), errors


def _merge(key: str, value: Any, values: dict[str, Any], options: dict[str, dict[str, Any]],
           method_names: Sequence[str]) -> None:
    """Put one `key: value` of a layer into the run fields or the method sections, or raise ConfigError."""
    if key in RUN_FIELDS and key != "method_options":
        coerced = coerce(value, field_types(RunConfig)[key], key)
        problems = field_problems(key, coerced)  # a layer's bad value counts even when a later layer overrides it
        if problems:
            raise ConfigError("; ".join(problems))
        values[key] = coerced
    elif "." in key:
        method, _, name = key.partition(".")
        options.setdefault(method, {})[name] = value
    elif isinstance(value, Mapping):
        options.setdefault(key, {}).update(value)
    elif key == "method_options":
        raise ConfigError("method_options: write one mapping per method instead (e.g. `ewc: {...}`)")
    elif key.partition("@")[0] in method_names:
        raise ConfigError(f"method section '{key}' needs a mapping of its options, not {shown(value)}; set one "
                          f"with --set {key}.OPTION=VALUE or write `{key}: {{OPTION: VALUE}}` in YAML")
    else:
        raise ConfigError(f"unknown config key '{key}'{run_key_hint(key, list(RUN_FIELDS) + list(method_names))}")


def method_config(cls_config: type, name: str, raw: Mapping[str, Any]) -> Any:
    """Instantiate a method's frozen config from raw values, typed by its dataclass fields."""
    known = {f.name: f for f in fields(cls_config)}
    errors = []
    kwargs = {}
    for key, value in raw.items():
        if key not in known:
            hint = option_hint(name.partition("@")[0], key, {k: f.metadata.get("help", "") for k, f in known.items()})
            errors.append(f"unknown option '{name}.{key}'{hint}")
            continue
        try:
            kwargs[key] = coerce(value, field_types(cls_config)[key], f"{name}.{key}")
        except ConfigError as exc:
            errors.append(str(exc))
            continue
        if not finite(kwargs[key]):  # a method's range checks cannot see NaN (every comparison is false)
            errors.append(f"{name}.{key}={shown(kwargs[key])} must be a finite number")
    if errors:
        raise ConfigError("; ".join(errors))
    try:
        return cls_config(**kwargs)
    except (ValueError, TypeError) as exc:  # __post_init__ range checks raise ValueError
        raise ConfigError(f"{name}: {exc}") from None


def finite(value: Any) -> bool:
    """False when `value` is, or holds (in a tuple, list or mapping), a NaN or infinite float."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (tuple, list)):
        return all(finite(v) for v in value)
    if isinstance(value, Mapping):
        return all(finite(v) for v in value.values())
    return True


MAX_SEED = 2 ** 63  # torch's manual_seed takes a signed 64-bit integer, and the runner adds offsets to seeds


def validate(config: RunConfig, registry: Any, earlier: Sequence[str] = ()) -> dict[str, Any]:
    """Check the whole config; return {method name: config instance}. Raises one ConfigError listing all,
    `earlier` problems (e.g. from `collect_config`) first."""
    from clbench.data.streams import cache_dir, load_stream_spec
    from clbench.models import check_model, parse_model_args
    from clbench.trackers import tracker_errors

    errors: list[str] = list(earlier)

    def check(fn: Any) -> Any:
        try:
            return fn()
        except ClbenchError as exc:
            errors.append(str(exc))
            return None

    if not config.methods:
        errors.append("no methods given; pass e.g. --methods naive,ewc")
    if len(set(config.methods)) != len(config.methods):
        errors.append(f"methods {list(config.methods)} name a method twice; list each once")
    classes = {m: check(lambda m=m: registry.get(m)) for m in config.methods}
    configs: dict[str, Any] = {}
    for name in config.method_options:
        if name not in classes:
            known = registry.names()
            if name in known:
                errors.append(f"options given for '{name}', which is not in --methods {list(config.methods)}; "
                              f"add it or drop its options")
            else:
                errors.append(f"unknown config section or method '{name}'"
                              f"{suggest(name, list(known) + list(RUN_FIELDS))}")
    for name, cls in classes.items():
        if cls is not None:
            configs[name] = check(lambda c=cls, n=name: method_config(c.config_cls, n, method_own_options(config, n)))
            errors += method_requirements(name, cls, config)
    for name in RUN_FIELDS:  # each value on its own; a problem a layer already reported (with its source) once
        errors += [p for p in field_problems(name, getattr(config, name)) if not any(e.startswith(p) for e in earlier)]
    for name in config.methods:  # a method section's own training fields, e.g. lora.lr
        training = split_options(config.method_options.get(name, {}))[1]
        unit_config = check(lambda n=name: config.for_method(n)) if training else None
        if unit_config is not None:
            errors += [f"{name}.{p}" for key in training for p in field_problems(key, getattr(unit_config, key))]
    if config.eval_split == "val" and config.val_fraction == 0:
        errors.append("eval_split=val needs validation data but val_fraction=0; set val_fraction > 0")
    if config.device.startswith("cuda") and not field_problems("device", config.device):
        import torch

        if not torch.cuda.is_available():
            errors.append(f"device='{config.device}' but CUDA is not available; use --device cpu or auto")
    errors += tracker_errors(config.log)
    if config.executor == "ray" and importlib.util.find_spec("ray") is None:
        errors.append("executor='ray' needs Ray; install the extra: pip install 'clbench[ray]'")
    if config.out is not None and Path(config.out).exists() and not Path(config.out).is_dir():
        errors.append(f"--out '{config.out}' is a file, not a directory; choose another --out")
    elif config.out is not None and any(p.exists() and not p.is_dir() for p in Path(config.out).parents):
        errors.append(f"--out '{config.out}' lies under a file, not a folder; choose another --out")
    if config.model in registry.names() and not Path(config.model).is_dir():
        errors.append(f"'{config.model}' is a method, not a model; pass it to --methods (e.g. --methods "
                      f"{config.model}) and a model to --model (tiny, minilm, a Hub id or a folder)")
    elif check(lambda: check_model(config.model)) is not None:
        check(lambda: parse_model_args(config.model_args, config.model))
    cache = cache_dir()
    if any(p.exists() and not p.is_dir() for p in (cache, *cache.parents)):
        errors.append(f"cache folder '{cache}' ($CLBENCH_CACHE) is a file or lies under one; point "
                      "CLBENCH_CACHE at a folder")
    spec = check(lambda: load_stream_spec(config.stream, train_size=config.train_size, test_size=config.test_size,
                                          max_length=config.max_length, val_fraction=config.val_fraction))
    if spec is not None:
        errors += kind_problems(spec.kind, config.model, classes)
    if config.data_dir is not None and not Path(config.data_dir).is_dir():
        errors.append(f"data_dir '{config.data_dir}' is not a directory; point it at local dataset copies")
    if config.out is not None:
        # One missing level is created (e.g. `runs/` in a fresh clone); a deeper missing path is a typo.
        parent = Path(config.out).resolve().parent
        if not parent.is_dir() and not parent.parent.is_dir():
            errors.append(f"--out '{config.out}': folder '{parent.parent}' does not exist; create it first "
                          "or fix the path")
    if errors:
        raise ConfigError("; ".join(errors))
    return configs


# Range checks of single run fields: name -> (test the value passes, what it must be). Written so that NaN
# fails them (every comparison with NaN is false).
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{name: (lambda v: v > 0, "must be a positive integer")
       for name in ("epochs", "max_steps", "batch_size", "eval_batch_size", "train_size", "test_size")},
    "max_length": (lambda v: v >= 8, "is too short; use at least 8 tokens"),
    "lr": (lambda v: 0 < v < 1, "must be in (0, 1), e.g. 5e-5"),
    "dpo_beta": (lambda v: 0 < v <= 100, "must be in (0, 100], e.g. 0.1"),
    "weight_decay": (lambda v: math.isfinite(v) and v >= 0, "must be a finite non-negative number"),
    "grad_clip": (lambda v: math.isfinite(v) and v >= 0, "must be a finite non-negative number (0: no clipping)"),
    "warmup_ratio": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "val_fraction": (lambda v: 0 <= v < 1, "must be in [0, 1), e.g. 0.1"),
    "buffer_size": (lambda v: v >= 0, "must be non-negative"),
    "eval_every": (lambda v: v >= 0, "must be 0 (off) or a positive number of steps"),
    "gpus_per_unit": (lambda v: 0 < v <= 1, "must be in (0, 1], e.g. 0.25 for four units per GPU"),
}


def field_problems(name: str, value: Any) -> list[str]:
    """What is wrong with `value` for run field `name` on its own (checks that need several fields, files or
    the machine are in `validate`)."""
    if name == "seeds":
        return seed_problems(value)
    if value is None or name == "method_options":  # method options: checked through their dataclasses
        return []
    if name in RANGES:
        test, must = RANGES[name]
        return [] if test(value) else [f"{name}={shown(value)} {must}"]
    choices = CHOICES.get(name)
    if choices is not None and value not in choices:
        return [f"{name}='{value}' must be one of {', '.join(str(c) for c in choices if c)}"]
    if name == "device" and not (value in ("auto", "cpu", "cuda") or str(value).startswith("cuda:")):
        return [f"device='{value}' must be auto, cpu, cuda or cuda:N"]
    return [] if finite(value) else [f"{name}={shown(value)} must be a finite number"]


def seed_problems(seeds: Sequence[int]) -> list[str]:
    if not seeds:
        return ["no seeds given; pass e.g. --seeds 0,1,2"]
    problems = []
    if any(s < 0 for s in seeds):
        problems.append(f"seeds {list(seeds)} must be non-negative")
    if any(s >= MAX_SEED for s in seeds):
        problems.append(f"seeds {list(seeds)} must be below 2**63 = {MAX_SEED} (torch's manual_seed takes a 64-bit "
                        "integer); use smaller seeds")
    if len(set(seeds)) != len(seeds):
        problems.append(f"seeds {list(seeds)} repeat a seed; list each once")
    return problems


def method_own_options(config: RunConfig, name: str) -> dict[str, Any]:
    """The values of method `name`'s own config dataclass (its section without training overrides)."""
    return split_options(config.method_options.get(name, {}))[0]


def kind_problems(kind: str, model: str, classes: Mapping[str, Any]) -> list[str]:
    """What does not fit the stream's task kind: a method not defined for it, or a model of the other kind
    (a classifier for preference pairs, a causal LM for classification)."""
    from clbench.data import LM_KINDS
    from clbench.models import model_kind

    errors = []
    fitting = [name for name, cls in classes.items() if cls is not None and kind in cls.task_kinds]
    for name, cls in classes.items():
        if cls is not None and kind not in cls.task_kinds:
            errors.append(f"method '{name}' does not apply to {kind} streams (it handles "
                          f"{' and '.join(cls.task_kinds)}); drop it"
                          + (f" and keep {', '.join(fitting)}" if fitting else ""))
    wanted = "causal-lm" if kind in LM_KINDS else "classifier"
    found = model_kind(model)
    if found not in (wanted, "unknown"):
        fix = "tiny-lm, smollm2 or a Hub causal LM" if kind in LM_KINDS else "tiny, minilm or a Hub encoder"
        errors.append(f"model '{model}' is a {found} but stream kind is {kind}; use {fix}")
    return errors


def method_requirements(name: str, cls: Any, config: RunConfig) -> list[str]:
    """What method class `cls` declares it needs (`requires_buffer`, `requires_packages`) and the run lacks."""
    errors = []
    if getattr(cls, "requires_buffer", False) and config.buffer_size <= 0:
        errors.append(f"{name} needs an episodic memory but buffer_size={config.buffer_size}; set --buffer-size "
                      "to a positive number of examples or drop the method")
    for package, install in getattr(cls, "requires_packages", ()):
        if importlib.util.find_spec(package) is None:
            errors.append(f"{name} needs the package '{package}', which is not installed; {install}")
    return errors


def resolve_defaults(config: RunConfig, method_configs: Mapping[str, Any]) -> RunConfig:
    """`config` with every default that depends on the model, the stream or a method written out: the values a
    run actually uses, so config.yaml shows them (lr, head, pooling, val_fraction and every method option)."""
    from dataclasses import asdict

    from clbench.data.streams import load_stream_spec
    from clbench.models import model_pooling, model_spec

    spec = load_stream_spec(config.stream, val_fraction=config.val_fraction)
    options = {name: {**asdict(method_configs[name]), **split_options(config.method_options.get(name, {}))[1]}
               for name in config.methods}
    return replace(config, lr=config.lr if config.lr is not None else model_spec(config.model).default_lr,
                   head=config.head or spec.head, pooling=config.pooling or model_pooling(config.model),
                   val_fraction=spec.val_fraction, method_options=options)


def config_file_yaml(config: RunConfig, changed_only: bool = True) -> str:
    """`config` as a `--config` file: run fields (only those that differ from the defaults, besides methods,
    stream, model and seeds, unless `changed_only` is False), then one section per method with its values."""
    defaults = RunConfig().to_dict()
    values = config.to_dict()
    always = ("methods", "stream", "model", "seeds")
    out = {k: v for k, v in values.items()
           if k != "method_options" and (not changed_only or k in always or v != defaults[k])}
    out.update(values["method_options"])
    return str(yaml.safe_dump(out, sort_keys=False))


def dump_yaml(config: RunConfig) -> str:
    """Every run field and method section: config.yaml of a run directory, re-runnable with `--config`."""
    return config_file_yaml(config, changed_only=False)


# Run fields that never change results: a resumed run may set them differently.
NOT_RESULTS = ("out", "plugins", "executor", "ray_address", "gpus_per_unit", "keep_checkpoints", "provenance", "log")


def saved_layer(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config.yaml as one `build_config` layer (method options as dotted keys; files written before
    method sections moved to the top level hold them under `method_options`)."""
    raw = dict(raw)
    options = raw.pop("method_options", {}) or {}
    if not isinstance(options, Mapping):
        raise ConfigError("method_options in the saved config.yaml is not a mapping; restore the file")
    raw.update({f"{m}.{k}": v for m, opts in options.items() for k, v in (opts or {}).items()})
    return raw


def differences(saved: RunConfig, new: RunConfig, registry: Any) -> list[str]:
    """Keys whose values differ between two configs in a way that changes results (method options resolved
    through their dataclasses, so `1000` and `1000.0` are the same)."""
    keys = [f.name for f in fields(RunConfig) if f.name not in NOT_RESULTS and f.name != "method_options"
            and getattr(saved, f.name) != getattr(new, f.name)]
    if keys or saved.methods != new.methods:
        return keys
    for name in new.methods:
        cls = registry.get(name).config_cls
        old = method_config(cls, name, method_own_options(saved, name))
        now = method_config(cls, name, method_own_options(new, name))
        keys += [f"{name}.{f.name}" for f in fields(cls) if getattr(old, f.name) != getattr(now, f.name)]
        old_run, new_run = saved.for_method(name), new.for_method(name)
        keys += [f"{name}.{k}" for k in TRAINING_FIELDS if getattr(old_run, k) != getattr(new_run, k)]
    return keys


def from_saved(raw: Mapping[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from a saved config.yaml (used by --resume)."""
    return build_config(saved_layer(raw))

"""Suggestions for habits from other tools: their names for our options, and paper symbols for method fields.

A newcomer from Avalanche, Mammoth or a paper writes `--set ewc.lambda=10`, `ewc_lambda`, `mem_size` or
`n_epochs`. clbench keeps descriptive names (`penalty_weight`, with "λ in Eq. 3" in its help), so an unknown
key is matched four ways before the plain closest-spelling suggestion: an exact field after dropping the
method's or a tool's prefix (`lora_alpha` -> `alpha`), a Greek letter's name against the symbol that opens a
field's help (`lambda` -> the field whose help starts with λ), a field whose help names that other tool's
option (GEM's `memory_strength`), and a table of other tools' run options.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from clbench.errors import suggest

# Greek letters (and the Latin letters papers use for the same role) as a user types them -> symbols that open
# a field's help. SI's c is Avalanche's si_lambda, so "lambda" also finds it.
SYMBOLS: dict[str, tuple[str, ...]] = {
    "lambda": ("λ", "c"), "lamda": ("λ",), "lam": ("λ",), "alpha": ("α",), "beta": ("β",), "gamma": ("γ",),
    "epsilon": ("ε",), "eps": ("ε",), "mu": ("μ",), "xi": ("ξ",), "tau": ("τ",), "t": ("T",),
    "temperature": ("T",), "r": ("r",), "c": ("c",), "w": ("w",),
}
# Run options of other tools (Avalanche, Mammoth, Hugging Face Trainer, lm-eval) -> clbench's run field.
RUN_SYNONYMS = {
    "n_epochs": "epochs", "num_epochs": "epochs", "num_train_epochs": "epochs", "train_epochs": "epochs",
    "learning_rate": "lr", "mem_size": "buffer_size", "memory_size": "buffer_size", "buffer": "buffer_size",
    "minibatch_size": "batch_size", "train_mb_size": "batch_size", "per_device_train_batch_size": "batch_size",
    "eval_mb_size": "eval_batch_size", "per_device_eval_batch_size": "eval_batch_size", "seed": "seeds",
    "method": "methods", "strategy": "methods", "strategies": "methods", "dataset": "stream", "benchmark": "stream",
    "model_name": "model", "backbone": "model", "pretrained": "model", "model_name_or_path": "model",
    "output_dir": "out", "savecheck": "keep_checkpoints", "max_seq_length": "max_length",
    "max_len": "max_length", "n_steps": "max_steps", "num_steps": "max_steps", "warmup": "warmup_ratio",
    "clip_grad": "grad_clip", "max_grad_norm": "grad_clip", "revision": "model_args", "dtype": "model_args",
}
TOOL_PREFIXES = ("lora_", "ewc_", "si_", "lwf_", "gem_", "agem_", "e_")


def _opening_symbol(help_text: str) -> str:
    """The symbol a field's help opens with: "λ in Eq. 3: ..." -> "λ"; "λ_o in ..." -> "λ"; "" if none."""
    match = re.match(r"\s*([^\s:_,]+)(?:_\w+)?(?=[\s:,]| in )", help_text)
    return match.group(1) if match and len(match.group(1)) <= 2 else ""


def option_hint(method: str, key: str, fields: Mapping[str, str]) -> str:
    """The hint for unknown option `key` of `method`, whose fields (name -> help) are `fields`.

    Returns:
        " (did you mean 'penalty_weight', λ in the paper?)", another close match, the list of options, or "".
    """
    lowered = key.lower()
    stripped = lowered
    for prefix in (f"{method}_", *TOOL_PREFIXES):
        if stripped.startswith(prefix) and len(stripped) > len(prefix):
            stripped = stripped[len(prefix):]
            break
    if stripped != key and stripped in fields:
        return f" (did you mean '{stripped}'?)"
    symbols = SYMBOLS.get(stripped, ())
    for symbol in symbols:
        named = [name for name, text in fields.items() if _opening_symbol(text) == symbol]
        if named:
            return f" (did you mean '{named[0]}', {symbol} in the paper?)"
    named = [name for name, text in fields.items() if len(key) > 2 and re.search(rf"\b{re.escape(key)}\b", text)]
    if named:  # the help names another tool's option ("memory_strength in the authors' code")
        return f" (did you mean '{named[0]}'? its help mentions {key})"
    if not fields:
        return f" ({method} has no options)"
    return suggest(key, fields)


def run_key_hint(key: str, known: Iterable[str]) -> str:
    """The hint for an unknown run key: another tool's name for a run field, else the closest spelling."""
    target = RUN_SYNONYMS.get(key.lower().lstrip("-").replace("-", "_"))
    if target is not None:
        return f" (did you mean '{target}'?)"
    return suggest(key, known)

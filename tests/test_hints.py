"""Suggestions for other tools' habits: paper symbols and tool names for method options, tool names for run
options, and a method passed as the model."""

from __future__ import annotations

import pytest

from clbench.config import build_config, validate
from clbench.errors import ConfigError
from clbench.registry import MethodRegistry


def _error(*layers: dict[str, object]) -> str:
    registry = MethodRegistry.default(())
    with pytest.raises(ConfigError) as info:
        config = build_config({"stream": "synthetic", "model": "tiny"}, *layers, method_names=registry.names())
        validate(config, registry)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize(("method", "key", "field", "because"), [
    ("ewc", "lambda", "penalty_weight", "λ in the paper"), ("ewc", "ewc_lambda", "penalty_weight", "λ in the paper"),
    ("si", "lambda", "strength", "c in the paper"), ("si", "xi", "damping", "ξ in the paper"),
    ("lora", "r", "rank", "r in the paper"), ("lora", "lora_alpha", "alpha", ""), ("lora", "lora_dropout", "dropout", ""),
    ("lwf", "lambda", "distill_weight", "λ in the paper"), ("fip", "lambda", "ce_weight", "λ in the paper"),
    ("gem", "memory_strength", "margin", "its help mentions memory_strength"),
])
def test_method_option_synonyms(method: str, key: str, field: str, because: str) -> None:
    message = _error({"methods": [method]}, {f"{method}.{key}": 1})
    assert f"unknown option '{method}.{key}' (did you mean '{field}'" in message and because in message


def test_variant_names_use_their_method_fields() -> None:
    message = _error({"methods": ["ewc@strong"]}, {"ewc@strong.lambda": 1})
    assert "did you mean 'penalty_weight', λ in the paper?" in message


@pytest.mark.parametrize(("key", "field"), [("n_epochs", "epochs"), ("mem_size", "buffer_size"),
                                            ("learning_rate", "lr"), ("dataset", "stream"), ("train_mb_size",
                                            "batch_size"), ("epoch", "epochs")])
def test_run_option_synonyms(key: str, field: str) -> None:
    assert f"unknown config key '{key}' (did you mean '{field}'?)" in _error({"methods": ["naive"], key: 1})


def test_set_lambda_through_the_cli() -> None:
    from click.testing import CliRunner

    from clbench.cli import main

    result = CliRunner().invoke(main, ["run", "--methods", "ewc", "--stream", "synthetic", "--model", "tiny",
                                       "--set", "ewc.lambda=10"])
    assert result.exit_code == 2
    assert "unknown option 'ewc.lambda' (did you mean 'penalty_weight', λ in the paper?)" in result.stderr

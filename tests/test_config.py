"""Run configuration: layering, typed overrides, YAML files, all-errors-at-once validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from clbench.config import build_config, load_yaml, parse_set, validate
from clbench.errors import ConfigError
from clbench.registry import MethodRegistry


def test_layers_and_typed_overrides() -> None:
    config = build_config({"methods": ["naive"], "epochs": 3}, {"epochs": 2},
                          parse_set(["lr=1e-4", "seeds=0,1,2", "naive.x=1", "head=per-task"]))
    assert config.epochs == 2 and config.lr == 1e-4 and config.seeds == (0, 1, 2)
    assert config.head == "per-task" and config.method_options == {"naive": {"x": 1}}


def test_yaml_with_method_sections(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("methods: [naive]\nstream: synthetic\nmodel: tiny\nbatch_size: 4\nnaive: {}\n")
    config = build_config(load_yaml(path))
    assert config.batch_size == 4 and config.methods == ("naive",)


def test_unknown_keys_and_types_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"epoch": 2, "batch_size": "big", "lr": True})
    message = str(info.value)
    assert "epoch" in message and "did you mean 'epochs'" in message
    assert "batch_size" in message and "lr" in message


def test_validate_checks_method_options_with_their_types(tmp_path: Path) -> None:
    registry = MethodRegistry.default([Path(__file__).parent / "fixtures" / "plugin_method.py"])
    config = build_config({"methods": ["half-loss"], "stream": "synthetic", "model": "tiny",
                           "out": str(tmp_path / "r")}, parse_set(["half-loss.factor=abc"]))
    with pytest.raises(ConfigError, match="half-loss.factor"):
        validate(config, registry)
    good = build_config({"methods": ["half-loss"], "stream": "synthetic", "model": "tiny"},
                        parse_set(["half-loss.factor=2"]))
    assert validate(good, registry)["half-loss"].factor == 2.0


def test_malformed_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("methods: [naive\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(path)


def test_method_requirements_are_checked_with_the_config_before_any_unit(tmp_path: Path) -> None:
    registry = MethodRegistry.default([])
    config = build_config({"methods": ["naive", "gem", "agem"], "stream": "synthetic", "model": "tiny",
                           "buffer_size": 0, "out": str(tmp_path / "r")})
    with pytest.raises(ConfigError) as info:
        validate(config, registry)
    message = str(info.value)
    assert "gem needs an episodic memory but buffer_size=0" in message
    assert "agem needs an episodic memory" in message and "naive" not in message.replace("methods", "")


def test_a_missing_package_is_named_with_its_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "quadprog" else real(name, *a))
    config = build_config({"methods": ["gem"], "stream": "synthetic", "model": "tiny"})
    with pytest.raises(ConfigError, match="gem needs the package 'quadprog'.*pip install quadprog"):
        validate(config, MethodRegistry.default([]))


def test_a_method_section_may_set_its_own_training_fields() -> None:
    config = build_config({"methods": ["naive", "lora"], "stream": "synthetic", "model": "tiny", "lr": 1e-4},
                          parse_set(["lora.lr=3e-4", "lora.epochs=2", "lora.rank=4"]))
    configs = validate(config, MethodRegistry.default([]))
    assert configs["lora"].rank == 4  # the method's own option reaches its dataclass
    assert config.for_method("lora").lr == 3e-4 and config.for_method("lora").epochs == 2
    assert config.for_method("naive") is config  # no overrides: the run's values
    bad = build_config({"methods": ["lora"], "stream": "synthetic", "model": "tiny"}, parse_set(["lora.lr=2"]))
    with pytest.raises(ConfigError, match=r"lora\.lr=2\.0 must be in \(0, 1\)"):
        validate(bad, MethodRegistry.default([]))


def test_a_changed_training_override_is_a_difference_for_resume() -> None:
    from clbench.config import differences

    saved = build_config({"methods": ["naive", "ewc"]}, parse_set(["ewc.lr=1e-4"]))
    new = build_config({"methods": ["naive", "ewc"]}, parse_set(["ewc.lr=3e-4"]))
    assert differences(saved, new, MethodRegistry.default([])) == ["ewc.lr"]
    assert differences(saved, saved, MethodRegistry.default([])) == []

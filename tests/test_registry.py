"""Method registry: built-ins, plugin files, entry points from a separately installed package, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clbench.errors import RegistryError
from clbench.registry import MethodRegistry

FIXTURES = Path(__file__).parent / "fixtures"


def test_builtins_are_listed_lazily_and_resolve() -> None:
    registry = MethodRegistry.default()
    assert "naive" in registry.names()
    cls = registry.get("naive")
    assert cls.name == "naive" and registry.origin("naive").startswith("built-in")


def test_unknown_name_suggests_close_match() -> None:
    with pytest.raises(RegistryError, match="did you mean 'naive'"):
        MethodRegistry.default().get("naivee")


def test_plugin_file_registers_its_method() -> None:
    registry = MethodRegistry.default([FIXTURES / "plugin_method.py"])
    cls = registry.get("half-loss")
    assert cls().config.factor == 0.5
    assert "plugin_method.py" in registry.origin("half-loss")


def test_duplicate_name_names_both_origins() -> None:
    with pytest.raises(RegistryError) as info:
        MethodRegistry.default([FIXTURES / "plugin_duplicate.py"])
    message = str(info.value)
    assert "'naive'" in message and "built-in" in message and "plugin_duplicate.py" in message


@pytest.mark.parametrize("fixture, needle", [
    ("plugin_syntax_error.py", "syntax error at line 3"),
    ("plugin_not_frozen.py", "frozen dataclass"),
])
def test_broken_plugins_are_refused(fixture: str, needle: str) -> None:
    with pytest.raises(RegistryError, match=needle):
        registry = MethodRegistry.default([FIXTURES / fixture])
        for name in registry.names():
            registry.get(name)


@pytest.fixture(scope="module")
def installed_demo_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install tests/fixtures/demo_plugin_pkg into a private folder, as a user would install a plugin."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "--target", str(target), str(FIXTURES / "demo_plugin_pkg")],
                   check=True, cwd=build, env={**os.environ, "PIP_NO_INPUT": "1"})
    return target


def test_entry_point_package_registers_and_runs(installed_demo_package: Path, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(installed_demo_package))
    registry = MethodRegistry.default()
    assert "demo-ep" in registry.names()
    assert "clbench-demo-plugin" in registry.origin("demo-ep")
    # end to end through the real CLI in a fresh process, as a user with the package installed would
    env = {**os.environ, "PYTHONPATH": str(installed_demo_package)}
    out = tmp_path / "ep"
    proc = subprocess.run([sys.executable, "-m", "clbench.cli", "run", "--methods", "demo-ep", "--stream",
                           "synthetic", "--model", "tiny", "--train-size", "32", "--test-size", "16", "--quiet",
                           "--out", str(out), "--set", "demo-ep.scale=2.0"], env=env, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert '"method": "demo-ep"' in (out / "results.jsonl").read_text()


def test_variant_names_compare_two_configurations_of_one_method(run_tiny) -> None:
    registry = MethodRegistry.default()
    variant = registry.get("naive@second")
    assert variant.name == "naive@second" and issubclass(variant, registry.get("naive"))
    with pytest.raises(RegistryError, match="label after '@'"):
        registry.get("naive@bad label")
    with pytest.raises(RegistryError, match="did you mean 'naive'"):
        registry.get("naiv@x")
    _, records = run_tiny(("naive", "naive@second"))
    done = {r["method"] for r in records if r["type"] == "unit" and r["value"] == "done"}
    assert done == {"naive", "naive@second"}


def test_builtin_keys_follow_the_naming_rule_in_docs_protocol() -> None:
    """Key = file name with '_' as '-'; class = CamelCase of the key; config = class name + 'Config'."""
    from clbench.methods import BUILTIN

    for key, target in BUILTIN.items():
        module, cls_name = target.split(":")
        assert module == "clbench.methods." + key.replace("-", "_"), key
        assert cls_name.lower() == key.replace("-", ""), key
        cls = MethodRegistry.default().get(key)
        assert cls.name == key and cls.config_cls.__name__ == cls_name + "Config", key


def test_the_documented_example_plugin_is_one_short_file_that_pulls_towards_the_last_task(tmp_path: Path) -> None:
    import torch

    from clbench.data import TaskInfo
    from clbench.models import build_model

    example = Path(__file__).resolve().parents[1] / "docs" / "examples" / "l2_previous.py"
    assert len(example.read_text().splitlines()) <= 60
    cls = MethodRegistry.default([example]).get("l2-previous")
    method = cls(cls.config_cls(penalty_weight=2.0))
    model = build_model("tiny", 3, 0)
    task_loss = torch.tensor(1.0)
    assert method.loss(model, None, None, task_loss) is task_loss  # no penalty on the first task
    method.after_task(TaskInfo(0, "a", ("x",), 0), model, None)
    assert float(method.loss(model, None, None, task_loss)) == 1.0  # at the anchor
    weight = model.classifier.weight
    with torch.no_grad():
        weight.add_(0.5)
    expected = 1.0 + 0.5 * 2.0 * 0.25 * weight.numel()
    assert abs(float(method.loss(model, None, None, task_loss)) - expected) < 1e-4

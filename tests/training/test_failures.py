"""How a unit fails: a method's exception names the method and hook; clbench's own bugs keep their traceback;
checkpoint folders never collide; a dead Ray address is refused at once."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from clbench.config import build_config
from clbench.errors import UnitFailed
from clbench.protocol import Hooks
from clbench.training.checkpoint import folder_name
from clbench.training.executors import executor_errors, hook_failure


class Broken(Hooks):
    name = "broken"

    def after_task(self, task: Any, model: Any, data: Any) -> None:
        self._helper()

    def _helper(self) -> None:
        raise RuntimeError("boom\nsecond line")


def raised(fn: Callable[[], object]) -> Exception:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 -- the test inspects whatever was raised
        return exc
    raise AssertionError("nothing raised")


def runner_calls(method: Hooks) -> None:
    method.after_task(None, None, None)


def test_an_exception_in_a_hook_names_the_method_and_the_outermost_hook() -> None:
    method = Broken(Broken.config_cls())
    failure = hook_failure(raised(lambda: runner_calls(method)), method)
    assert isinstance(failure, UnitFailed)
    assert str(failure) == "method 'broken' failed in after_task() with RuntimeError: boom second line"


def test_an_exception_outside_the_method_is_not_blamed_on_it() -> None:
    method = Broken(Broken.config_cls())
    assert hook_failure(raised(lambda: 1 / 0), method) is None


def test_checkpoint_folder_names_are_one_to_one() -> None:
    names = ["naive@a", "naive_a", "naive%40a", "avalanche:ewc", "..", ".", "a/b", "lora@frozen-head"]
    folders = [folder_name(n) for n in names]
    assert len(set(folders)) == len(names)
    assert folder_name("naive_a") == "naive_a" and folder_name("lora@frozen-head") == "lora%40frozen-head"
    assert all("/" not in f and f not in (".", "..") for f in folders)


def test_a_ray_address_nobody_listens_on_is_refused_without_waiting() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    config = build_config({"executor": "ray", "ray_address": address})
    (error,) = executor_errors(config)
    assert f"cannot reach Ray at --ray-address '{address}'" in error
    assert executor_errors(build_config({"executor": "ray", "ray_address": "auto"})) == []
    (bad,) = executor_errors(build_config({"executor": "ray", "ray_address": "nohost"}))
    assert "is not HOST:PORT" in bad


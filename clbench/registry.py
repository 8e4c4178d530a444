"""The method registry: built-ins, the `clbench.methods` entry-point group and `--plugin` files, merged.

Built-ins come from the lazy table `clbench.methods.BUILTIN`, plus the `avalanche:<strategy>` reference
adapters when avalanche-lib is installed; entry points are read from installed distributions' metadata; a
plugin file is imported from its path. Only plugin files run code while the
registry is built (their names are known only after import); built-ins and entry points are imported on
lookup. A name defined twice is an error naming both origins. There is no global registry object: every run
builds its own, so tests need no snapshot/restore dance.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from clbench.errors import RegistryError, suggest
from clbench.protocol import Hooks, MethodConfig, config_fields

ENTRY_POINT_GROUP = "clbench.methods"
VARIANT_LABEL = re.compile(r"[A-Za-z0-9_-]+")
REQUIRED_HOOKS = ("setup", "before_task", "train_data", "extra_inputs", "loss", "after_backward", "after_step",
                  "after_task", "trainable_parameters", "state_dict", "load_state_dict")


@dataclass(frozen=True)
class Entry:
    """A registered method: where it comes from and how to import its class."""

    name: str
    origin: str  # human-readable, used in duplicate-name errors and `clbench list methods`
    load: Callable[[], Any]


class MethodRegistry:
    """Name -> method class, from built-ins, entry points and plugin files."""

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self._entries: dict[str, Entry] = {}
        self._classes: dict[str, type[Hooks]] = {}
        for entry in entries:
            self.add(entry)

    @classmethod
    def default(cls, plugins: Iterable[str | Path] = ()) -> MethodRegistry:
        """Built-ins, then installed entry points, then each plugin file in order."""
        registry = cls([*builtin_entries(), *avalanche_entries()])
        for entry in entry_point_entries():
            registry.add(entry)
        for path in plugins:
            for entry in plugin_entries(Path(path)):
                registry.add(entry)
        return registry

    def add(self, entry: Entry) -> None:
        if entry.name in self._entries:
            raise RegistryError(f"method name '{entry.name}' is defined twice: by {self._entries[entry.name].origin} "
                                f"and by {entry.origin}; rename one of them")
        self._entries[entry.name] = entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def origin(self, name: str) -> str:
        return self._entry(name).origin

    def _entry(self, name: str) -> Entry:
        if name not in self._entries:
            raise RegistryError(f"unknown method '{name}'{suggest(name, self._entries)}; "
                                "`clbench list methods` shows all")
        return self._entries[name]

    def get(self, name: str) -> type[Hooks]:
        """The method class registered as `name`, imported now and checked against the protocol.

        `METHOD@LABEL` names a variant: the same method under another name, so one run can compare two
        configurations of it (`--methods lora,lora@frozen-head --set lora@frozen-head.head=frozen`).
        """
        if name not in self._classes and "@" in name and name not in self._entries:
            self._classes[name] = self._variant(name)
        if name not in self._classes:
            entry = self._entry(name)
            try:
                obj = entry.load()
            except RegistryError:
                raise
            except (Exception, SystemExit) as exc:  # noqa: BLE001 -- a third-party import failure stays one line
                raise RegistryError(f"method '{name}' from {entry.origin} failed to import "
                                    f"({type(exc).__name__}: {exc}); fix or remove it") from None
            self._classes[name] = check_protocol(obj, name, entry.origin)
        return self._classes[name]

    def _variant(self, name: str) -> type[Hooks]:
        base, _, label = name.partition("@")
        if not VARIANT_LABEL.fullmatch(label):
            raise RegistryError(f"method variant '{name}': the label after '@' must be letters, digits, '-' or "
                                "'_', e.g. lora@frozen-head")
        cls = self.get(base)
        # A generated subclass that only renames: results, configs and checkpoints are keyed by the variant name.
        return type(f"{cls.__name__}_{label.replace('-', '_')}", (cls,),
                    {"name": name, "__doc__": cls.__doc__, "__module__": cls.__module__})

    def describe(self, name: str) -> dict[str, Any]:
        """Name, summary, citation, origin and config fields of one method (for `clbench list methods`)."""
        cls = self.get(name)
        doc = inspect.getdoc(cls) or ""
        return {"name": name, "summary": doc.splitlines()[0] if doc else "", "citation": cls.citation,
                "origin": self.origin(name), "uses_buffer": cls.uses_buffer,
                "config": config_fields(cls.config_cls)}


def check_protocol(obj: Any, name: str, origin: str) -> type[Hooks]:
    """Reject objects that are not Hooks subclasses with a matching name and a frozen config dataclass."""
    where = f"method '{name}' from {origin}"
    if not (inspect.isclass(obj) and issubclass(obj, Hooks)):
        raise RegistryError(f"{where} is {obj!r}, not a subclass of clbench.methods.Hooks; subclass Hooks")
    if obj.name != name:
        raise RegistryError(f"{where}: class attribute name={obj.name!r} differs from the registered name; "
                            "make them equal")
    config = obj.config_cls
    if not (inspect.isclass(config) and issubclass(config, MethodConfig) and dataclasses.is_dataclass(config)
            and config.__dataclass_params__.frozen):  # type: ignore[attr-defined]
        raise RegistryError(f"{where}: config_cls must be a frozen dataclass subclassing MethodConfig")
    for hook in REQUIRED_HOOKS:
        if not callable(getattr(obj, hook, None)):
            raise RegistryError(f"{where}: hook '{hook}' is not callable; inherit it from Hooks")
    return obj


def _import_attr(target: str) -> Any:
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


def avalanche_entries() -> list[Entry]:
    """Reference adapters `avalanche:<strategy>`, listed only when avalanche-lib is installed (not imported here)."""
    if importlib.util.find_spec("avalanche") is None:
        return []
    names = ("naive", "ewc", "si", "gem", "agem", "lwf", "replay")  # rows of avalanche_methods.ADAPTERS
    return [Entry(f"avalanche:{name}", f"avalanche adapter clbench.interop.avalanche_methods:ADAPTERS['{name}']",
                  functools.partial(_avalanche_adapter, f"avalanche:{name}")) for name in names]


def _avalanche_adapter(name: str) -> Any:
    from clbench.interop.avalanche_methods import adapter

    return adapter(name)


def builtin_entries() -> list[Entry]:
    table: dict[str, str] = importlib.import_module("clbench.methods").BUILTIN
    return [Entry(name, f"built-in {target}", functools.partial(_import_attr, target))
            for name, target in table.items()]


def entry_point_entries() -> list[Entry]:
    """Methods declared by installed packages under `[project.entry-points."clbench.methods"]`."""
    out = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        package = dist.metadata["Name"] if dist is not None else "an installed package"
        out.append(Entry(ep.name, f"entry point '{ep.value}' of package {package}", ep.load))
    return out


def plugin_entries(path: Path) -> list[Entry]:
    """Import a plugin file and register every Hooks subclass it defines (one with a non-empty `name`)."""
    if not path.is_file():
        raise RegistryError(f"plugin file '{path}' does not exist; pass the path to a .py file defining a method")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
    module_name = f"clbench_plugin_{path.stem}_{digest}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise RegistryError(f"plugin file '{path}' cannot be imported; pass a .py file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except SyntaxError as exc:
            del sys.modules[module_name]
            raise RegistryError(f"plugin file '{path}' has a syntax error at line {exc.lineno}: {exc.msg}; "
                                "fix the file") from None
        except (Exception, SystemExit) as exc:  # noqa: BLE001 -- any error in a user's plugin file becomes one line
            del sys.modules[module_name]
            what = f"called exit({exc.code!r})" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
            raise RegistryError(f"plugin file '{path}' failed to import ({what}); fix the file") from None
    classes = [obj for obj in vars(module).values()
               if inspect.isclass(obj) and issubclass(obj, Hooks) and obj.__module__ == module_name
               and bool(getattr(obj, "name", ""))]
    if not classes:
        raise RegistryError(f"plugin file '{path}' defines no method: subclass clbench.methods.Hooks and set a "
                            "non-empty class attribute `name`")
    return [Entry(cls.name, f"plugin file '{path}'", functools.partial(_identity, cls)) for cls in classes]


def _identity(obj: Any) -> Any:
    return obj

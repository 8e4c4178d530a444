"""The command line: `clbench run | list | fetch | report | compare`. Each command parses its input and calls
one library function; any ClbenchError becomes one line on stderr and exit code 2."""

from __future__ import annotations

import json
import sys
import typing
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from clbench import __version__
from clbench.errors import ClbenchError

F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Turn library errors into `clbench: error: <one line>` and exit code 2 (no traceback)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ClbenchError as exc:
            message = " ".join(str(exc).split())
            click.echo(f"clbench: error: {message}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def _csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="clbench")
def main() -> None:
    """clbench: compare continual-learning methods on NLP task streams with pretrained transformers."""


def run_field_options(fn: F) -> F:
    """One `--field-name` option per run field declared with `flag=True`, its help taken from `RunConfig`."""
    from clbench.config import CHOICES, RUN_FIELDS, RunConfig, field_types

    types = field_types(RunConfig)
    for name in reversed(list(RUN_FIELDS)):
        spec = RUN_FIELDS[name]
        if not spec.metadata.get("flag"):
            continue
        flag = "--" + name.replace("_", "-")
        helptext = spec.metadata["help"] + "."
        kind = types[name]
        if kind is bool:
            fn = click.option(flag, is_flag=True, default=None, help=helptext)(fn)
            continue
        if typing.get_origin(kind) is tuple:  # comma-separated; RunConfig's coercion splits it
            base: Any = str
        else:  # X | None -> X
            base = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        choices = CHOICES.get(name)
        click_type: Any = click.Choice([c for c in choices if c]) if choices else base
        fn = click.option(flag, type=click_type, help=helptext)(fn)
    return fn


@main.command()
@run_field_options
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML run configuration.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set epochs=2 --set ewc.penalty_weight=1000.")
@click.option("--plugin", "plugins", multiple=True, metavar="FILE.py", help="Register methods from a Python file.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out: skip finished units, restart others from their last checkpoint.")
@click.option("--quiet", is_flag=True, help="Print nothing but errors and the final summary.")
@click.option("--verbose", is_flag=True, help="Also show the libraries' own warnings and logs (hidden by default).")
@friendly
def run(**kwargs: Any) -> None:
    """Train each method through the stream's tasks and write results, summary and report to --out."""
    from clbench.training.progress import quiet_libraries

    with quiet_libraries(kwargs.pop("verbose")):
        _run(kwargs)


def _run(kwargs: dict[str, Any]) -> None:
    """The body of `clbench run`, inside `quiet_libraries`."""
    from clbench.config import build_config, load_yaml, parse_set
    from clbench.registry import MethodRegistry
    from clbench.reporting.summary import summary_table
    from clbench.training.progress import Progress
    from clbench.training.run import run as run_experiment

    quiet = kwargs.pop("quiet")
    resume = kwargs.pop("resume")
    file_layer = load_yaml(kwargs.pop("config_file")) if kwargs.get("config_file") else {}
    set_layer = parse_set(kwargs.pop("overrides"))
    # --resume: the saved config.yaml is the base layer, so `clbench run --out DIR --resume` needs no other flag
    saved_layer = _saved_run(kwargs.get("out") or file_layer.get("out")) if resume else {}
    plugins = (list(kwargs.pop("plugins")) or list(file_layer.get("plugins", []) or [])
               or list(saved_layer.get("plugins", []) or []))
    for key in ("methods", "seeds"):
        kwargs[key] = _csv(kwargs[key])
    flags = {k: v for k, v in kwargs.items() if v is not None}
    if plugins:
        flags["plugins"] = plugins
    registry = MethodRegistry.default(plugins)
    config = build_config(saved_layer, file_layer, flags, set_layer, method_names=registry.names())
    out = run_experiment(config, registry=registry, progress=Progress("quiet" if quiet else None),
                         command=" ".join(["clbench", *sys.argv[1:]]), resume=resume)
    click.echo(summary_table(out))
    from clbench.reporting.export import write_summary
    from clbench.reporting.report import write_report_or_warn

    write_summary(out)

    report_file = write_report_or_warn(out, lambda message: click.echo(message, err=True))
    if report_file is not None:
        click.echo(f"report: {report_file}")


def _saved_run(out: str | None) -> dict[str, Any]:
    """The config.yaml of the run to resume, as a config layer."""
    from pathlib import Path

    from clbench.config import load_yaml, saved_layer
    from clbench.errors import RunDirError

    if not out:
        raise RunDirError("--resume needs --out DIR, the run directory to continue")
    saved = Path(out) / "config.yaml"
    if not saved.is_file():
        raise RunDirError(f"nothing to resume in '{out}' (no config.yaml); run without --resume or fix --out")
    return saved_layer(load_yaml(saved))


@main.group(name="list")
def list_() -> None:
    """List methods, streams or models."""


@list_.command(name="methods")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--plugin", "plugins", multiple=True, metavar="FILE.py", help="Also list methods from a file.")
@friendly
def list_methods(as_json: bool, plugins: tuple[str, ...]) -> None:
    """Every registered method with its summary, citation and config fields."""
    from clbench.errors import RegistryError
    from clbench.registry import MethodRegistry

    registry = MethodRegistry.default(plugins)
    rows = []
    for name in registry.names():
        try:
            rows.append(registry.describe(name))
        except RegistryError as exc:  # one broken third-party method must not hide the others
            rows.append({"name": name, "summary": f"[unavailable] {exc}", "citation": "", "config": [],
                         "origin": registry.origin(name), "error": str(exc)})
    if as_json:
        click.echo(json.dumps(rows, indent=1, default=str))
        return
    for row in rows:
        click.echo(f"{row['name']:<16} {row['summary']}")
        if row["citation"]:
            click.echo(f"{'':<16} cite: {row['citation']}")
        options = [f"--set {row['name']}.{f['name']}={f['default']!s}" for f in row["config"]]
        width = max(map(len, options), default=0)  # one help column per method
        for option, f in zip(options, row["config"]):
            searched = f"  [tune: {f['search']}]" if f.get("search") else ""
            click.echo(f"{'':<16} {option:<{width}}  {f['help']}{searched}")


@list_.command(name="models")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_models(as_json: bool) -> None:
    """Model aliases; any HF model id or local directory works too."""
    from clbench.models import describe_models

    rows = describe_models()
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for row in rows:
        click.echo(f"{row['name']:<10} {'offline' if row['offline'] else 'needs Hub':<9} lr {row['default_lr']:<6g} "
                   f"{row['pooling']:<4} pooling  {row['summary']}")


@list_.command(name="streams")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly
def list_streams(as_json: bool) -> None:
    """Built-in streams: tasks, classes, sizes, source and whether they run offline."""
    from clbench.data.catalog import stream_summaries

    rows = stream_summaries()
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for row in rows:
        click.echo(f"{row['name']} (v{row['version']}, {'offline' if row['offline'] else 'needs Hub or --data-dir'})"
                   f": {row['description']}")
        for t in row["tasks"]:
            click.echo(f"    {t['name']:<22} {t['source']:<24} {len(t['classes'] or []):>2} classes  "
                       f"train {t['train_size']:>5}  test {t['test_size']:>5}  max_len {t['max_length']}")


@main.command()
@click.argument("streams", nargs=-1, required=True)
@friendly
def fetch(streams: tuple[str, ...]) -> None:
    """Pre-fetch the pinned archives of STREAMS (or `all`, the MiniLM weights included) into the cache."""
    from clbench.data.catalog import fetch_streams

    where = fetch_streams(list(streams))
    click.echo(f"cached under {where} (set CLBENCH_CACHE to this folder on an air-gapped machine)")


@main.command()
@click.argument("run_dir")
@friendly
def report(run_dir: str) -> None:
    """Regenerate RUN_DIR/report.md, RUN_DIR/plots/*.png and RUN_DIR/summary.{csv,json} from the results."""
    from pathlib import Path

    from clbench.reporting.export import write_summary
    from clbench.reporting.report import write_report

    write_summary(Path(run_dir))
    click.echo(write_report(Path(run_dir)))


@main.command()
@click.argument("run_dirs", nargs=-1, required=True)
@click.option("--out", help="Also write the comparison to OUT/compare.<format>.")
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True,
              help="md: the summary tables side by side; csv or json: one row per run, method and seed.")
@friendly
def compare(run_dirs: tuple[str, ...], out: str | None, fmt: str) -> None:
    """Put the summary tables of RUN_DIRS (runs of the same stream) side by side."""
    from pathlib import Path

    from clbench.reporting.export import export_comparison

    click.echo(export_comparison([Path(d) for d in run_dirs], fmt, Path(out) if out else None), nl=fmt == "md")


if __name__ == "__main__":
    main()

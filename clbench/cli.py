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
@click.option("--allow-config-plugins", is_flag=True,
              help="Import the plugin files listed under `plugins:` in --config (or in the config.yaml that --resume "
                   "reads); without it such a list is refused, since importing a file runs its code.")
@click.option("--quiet", is_flag=True, help="Print nothing but errors and the final summary.")
@click.option("--verbose", is_flag=True, help="Also show the libraries' own warnings and logs (hidden by default).")
@friendly
def run(**kwargs: Any) -> None:
    """Train each method through the stream's tasks and write results, summary and report to --out.

    Exit codes: 0 every unit done; 2 bad input (nothing written or changed); 3 some units failed (see the
    summary and results.jsonl); 1 interrupted or an internal error.
    """
    from clbench.training.progress import quiet_libraries

    with quiet_libraries(kwargs.pop("verbose")):
        _run(kwargs)


def _run(kwargs: dict[str, Any]) -> None:
    """The body of `clbench run`, inside `quiet_libraries`."""
    from clbench.reporting.summary import summary_table
    from clbench.results import failed_units
    from clbench.training.progress import Progress
    from clbench.training.run import run as run_experiment

    quiet = kwargs.pop("quiet")
    resume = kwargs.pop("resume")
    config, errors, registry = _config_from_flags(kwargs, resume)
    out = run_experiment(config, registry=registry, progress=Progress("quiet" if quiet else None),
                         command=" ".join(["clbench", *sys.argv[1:]]), resume=resume, earlier=errors)
    click.echo(summary_table(out))
    from clbench.reporting.export import write_summary
    from clbench.reporting.report import write_report_or_warn

    write_summary(out)

    report_file = write_report_or_warn(out, lambda message: click.echo(message, err=True))
    if report_file is not None:
        click.echo(f"report: {report_file}")
    failed = failed_units(out)
    if failed:
        click.echo(f"clbench: {len(failed)} unit(s) failed: {', '.join(failed)}", err=True)
        sys.exit(EXIT_UNITS_FAILED)


EXIT_UNITS_FAILED = 3  # documented in the README beside 0 (all done), 1 (interrupted) and 2 (bad input)


def _plugins(flagged: list[str], layers: dict[str | None, dict[str, Any]], allowed: bool) -> list[str]:
    """The plugin files to import: every `--plugin`, plus those a config file lists when `allowed`.

    A config file may come from someone else (or sit in a run directory anyone can write), and importing a
    plugin runs its code, so a listed file that was not also passed with --plugin needs --allow-config-plugins.
    """
    from pathlib import Path

    from clbench.errors import ConfigError

    plugins = list(flagged)
    given = {Path(p).resolve() for p in flagged}
    for source, layer in layers.items():
        listed = layer.get("plugins") or []
        if source is None or not listed:
            continue
        if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
            raise ConfigError(f"plugins in '{source}' must be a list of .py files")
        extra = [p for p in listed if Path(p).resolve() not in given]
        if extra and not allowed:
            raise ConfigError(f"'{source}' lists plugin files {extra}, which run code when imported; pass them with "
                              "--plugin FILE.py, or add --allow-config-plugins to trust the file's list")
        plugins += [p for p in extra if p not in plugins]
    return plugins


def _saved_run(out: str | None) -> str:
    """The config.yaml of the run to resume."""
    from pathlib import Path

    from clbench.errors import RunDirError

    if not out:
        raise RunDirError("--resume needs --out DIR, the run directory to continue")
    saved = Path(out) / "config.yaml"
    if not saved.is_file():
        raise RunDirError(f"nothing to resume in '{out}' (no config.yaml); run without --resume or fix --out")
    return str(saved)


def _saved_layer(saved: str) -> dict[str, Any]:
    """A saved config.yaml as a config layer."""
    from clbench.config import load_yaml, saved_layer

    return saved_layer(load_yaml(saved))


def _config_from_flags(kwargs: dict[str, Any], resume: bool) -> tuple[Any, list[str], Any]:
    """The RunConfig of `run` or `tune` from their flags, `--config` and `--set` (and with `resume` the saved
    config.yaml as the base layer); returns it with the problems found so far and the method registry."""
    from clbench.config import coerce, collect_config, load_yaml, parse_set
    from clbench.registry import MethodRegistry

    allow_config_plugins = kwargs.pop("allow_config_plugins")
    config_file = kwargs.pop("config_file")
    file_layer = load_yaml(config_file) if config_file else {}
    set_layer = parse_set(kwargs.pop("overrides"))
    # --resume: the saved config.yaml is the base layer, so `clbench run --out DIR --resume` needs no other flag
    saved_file = _saved_run(kwargs.get("out") or file_layer.get("out")) if resume else None
    saved_layer = _saved_layer(saved_file) if saved_file else {}
    # plugins named on the command line (--plugin, or --set plugins=...) are trusted; a config file's are not
    flagged = [*kwargs.pop("plugins"), *coerce(set_layer.pop("plugins", ()), tuple[str, ...], "plugins")]
    plugins = _plugins(flagged, {config_file: file_layer, saved_file: saved_layer}, allow_config_plugins)
    for key in ("methods", "seeds"):
        kwargs[key] = _csv(kwargs[key])
    flags = {k: v for k, v in kwargs.items() if v is not None}
    registry = MethodRegistry.default(plugins)
    config, errors = collect_config(saved_layer, file_layer, flags, set_layer, {"plugins": plugins},
                                    method_names=registry.names(), sources=(saved_file, config_file))
    return config, errors, registry


@main.command()
@run_field_options
@click.option("--trials", type=int, required=True, help="Trials per method (the same budget for every method).")
@click.option("--tune-stream", help="Tune on this stream and apply the values to --stream (same number of tasks).")
@click.option("--objective", default="acc_cil", show_default=True,
              help="Validation ACC after the last task to maximise: acc_cil or acc_til.")
@click.option("--eval-seeds", default="0,1,2", show_default=True, help="Seeds written into tuned.yaml for the test run.")
@click.option("--params", help="Search only these, e.g. lr,ewc.penalty_weight (default: every declared space).")
@click.option("--pruner", default="percentile", show_default=True, help="percentile, median, halving or none.")
@click.option("--prune-every", type=int, default=0, show_default=True,
              help="Also let the pruner judge a trial every N training steps within a task (0: after tasks only).")
@click.option("--sampler-seed", type=int, default=0, show_default=True, help="Seed of the TPE samplers.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML run configuration.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value.")
@click.option("--plugin", "plugins", multiple=True, metavar="FILE.py", help="Register methods from a Python file.")
@click.option("--allow-config-plugins", is_flag=True, help="Import the plugin files a --config file lists.")
@click.option("--resume", is_flag=True, help="Continue the search in --out without repeating finished trials; "
              "with a larger --trials, extend every method's search to it.")
@click.option("--quiet", is_flag=True, help="Print nothing but errors and the result.")
@friendly
def tune(**kwargs: Any) -> None:
    """Search each method's hyper-parameters with the same trial budget, on validation data only; writes
    tuned.yaml (run it with `clbench run --config`) and tuning.md to --out."""
    from clbench.errors import ConfigError
    from clbench.training.progress import Progress
    from clbench.tuning.search import tune as run_search
    from clbench.tuning.settings import TuneSettings

    settings = TuneSettings(trials=kwargs.pop("trials"), objective=kwargs.pop("objective"),
                            tune_stream=kwargs.pop("tune_stream"),
                            eval_seeds=tuple(int(s) for s in _csv(kwargs.pop("eval_seeds")) or ()),
                            params=tuple(_csv(kwargs.pop("params")) or ()), pruner=kwargs.pop("pruner"),
                            sampler_seed=kwargs.pop("sampler_seed"), prune_every=kwargs.pop("prune_every"))
    quiet, resume = kwargs.pop("quiet"), kwargs.pop("resume")
    config, errors, registry = _config_from_flags(kwargs, resume=False)  # tune.yaml is checked, not a base layer
    if errors:
        raise ConfigError("; ".join(errors))
    tuned = run_search(config, settings, registry=registry, progress=Progress("quiet" if quiet else None),
                       command=" ".join(["clbench", *sys.argv[1:]]), resume=resume)
    click.echo(f"tuned config: {tuned}\nsummary: {tuned.parent / 'tuning.md'}")


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

    report_file = write_report(Path(run_dir))  # refuses a torn results file before anything is rewritten
    write_summary(Path(run_dir))
    click.echo(report_file)


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

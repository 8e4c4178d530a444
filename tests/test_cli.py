"""The command line through click's CliRunner: run, list, errors (exit 2, one line, no traceback)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from clbench import __version__
from clbench.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = ["--stream", "synthetic", "--model", "tiny", "--train-size", "32", "--test-size", "16", "--quiet"]


def invoke(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_one_line_error(result: object, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("clbench: error: ")
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_version_and_help() -> None:
    assert __version__ in invoke("--version").output
    for args in ([], ["run"], ["list"], ["list", "methods"], ["fetch"]):
        result = invoke(*args, "--help")
        assert result.exit_code == 0 and "Usage" in result.output


def test_run_writes_config_env_results_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "smoke"  # `runs/` does not exist yet: one missing level is created
    result = invoke("run", "--methods", "naive", *SMALL, "--out", str(out), "--seeds", "0,1")
    assert result.exit_code == 0, result.output
    for name in ("config.yaml", "env.json", "results.jsonl"):
        assert (out / name).is_file()
    env = json.loads((out / "env.json").read_text())
    assert env["packages"]["torch"] and env["stream"]["name"] == "synthetic" and env["stream"]["version"] == 2
    assert env["started"].endswith(" UTC") and env["finished"] >= env["started"]  # recorded, not file times
    assert "naive" in result.output and "ACC" in result.output
    summary = result.output.splitlines()
    assert any(line.startswith("naive") and " 2 " in line for line in summary)  # two seeds averaged
    assert not (out / ".lock").exists()


def test_git_commit_is_dirty_for_tracked_changes_only(tmp_path: Path) -> None:
    import subprocess

    from clbench.results import git_commit

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=tmp_path,
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-qm", "first")
    head = git("rev-parse", "HEAD")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "results.jsonl").write_text("{}\n")  # a run written inside the checkout
    assert git_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == head + "+dirty"


def test_list_methods_json_lists_naive_with_config_fields() -> None:
    result = invoke("list", "methods", "--json")
    rows = json.loads(result.output)
    naive = next(r for r in rows if r["name"] == "naive")
    assert naive["config"] == [] and naive["citation"]
    plugin = json.loads(invoke("list", "methods", "--json", "--plugin", str(FIXTURES / "plugin_method.py")).output)
    half = next(r for r in plugin if r["name"] == "half-loss")
    assert half["config"][0]["name"] == "factor" and half["config"][0]["default"] == 0.5


def test_list_methods_text_aligns_each_methods_help_column() -> None:
    lines = invoke("list", "methods").output.splitlines()
    fip = [line for line in lines if line.lstrip().startswith("--set fip.")]
    assert len(fip) >= 4 and any("fip.fused_forward=False" in line for line in fip)
    starts = {re.match(r"\s*--set \S+\s+", line).end() for line in fip}  # type: ignore[union-attr]
    assert len(starts) == 1


def test_list_streams_and_models() -> None:
    streams = json.loads(invoke("list", "streams", "--json").output)
    assert {"synthetic", "reviews", "yelp-imdb"} <= {s["name"] for s in streams}
    assert next(s for s in streams if s["name"] == "yelp-imdb")["offline"] is False
    models = json.loads(invoke("list", "models", "--json").output)
    assert {m["name"] for m in models} >= {"tiny", "minilm"}


def test_typo_in_method_suggests_the_right_name(tmp_path: Path) -> None:
    result = invoke("run", "--methods", "naiv", *SMALL, "--out", str(tmp_path / "x"))
    assert_one_line_error(result, "naiv", "did you mean 'naive'")
    assert not (tmp_path / "x").exists()  # nothing written before validation passes


@pytest.mark.parametrize("args, needles", [
    (["--plugin", "missing_plugin.py"], ["missing_plugin.py", "does not exist"]),
    (["--set", "epochs=two"], ["epochs", "'two'"]),
    (["--set", "epochs"], ["KEY=VALUE"]),
    (["--set", "nosuch=1"], ["nosuch"]),
    (["--set", "naive.nosuch=1"], ["naive.nosuch"]),
    (["--stream", "synthetc"], ["did you mean 'synthetic'"]),
    (["--model", "tinyy"], ["did you mean 'tiny'"]),
])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    result = invoke("run", "--methods", "naive", *SMALL, "--out", str(tmp_path / "x"), *args)
    assert_one_line_error(result, *needles)


def test_several_errors_are_reported_at_once(tmp_path: Path) -> None:
    result = invoke("run", "--methods", "naive", *SMALL, "--out", str(tmp_path / "x"),
                    "--set", "epochs=0", "--set", "batch_size=-1", "--set", "lr=3")
    assert_one_line_error(result, "epochs=0", "batch_size=-1", "lr=3")


def test_plugin_file_method_runs(tmp_path: Path) -> None:
    out = tmp_path / "p"
    result = invoke("run", "--methods", "half-loss,naive", *SMALL, "--out", str(out),
                    "--plugin", str(FIXTURES / "plugin_method.py"), "--set", "half-loss.factor=0.25")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["method"] for r in records if r["type"] == "unit" and r["value"] == "done"} == {"half-loss", "naive"}
    assert "half-loss.factor: 0.25" in (out / "config.yaml").read_text().replace("'", "") or \
        "factor: 0.25" in (out / "config.yaml").read_text()


def test_summary_columns_stay_aligned_for_long_variant_names(tmp_path: Path) -> None:
    import re

    result = invoke("run", "--methods", "naive,naive@with-a-rather-long-label", *SMALL, "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith(("method ", "naive"))]
    assert len(lines) == 3
    seeds_end = {re.match(r"(\S+)\s+(\S+)\s+(\S+)", line).end(2) for line in lines}  # type: ignore[union-attr]
    assert len(seeds_end) == 1, lines


def test_a_methods_requirement_is_refused_before_any_unit_trains(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--methods", "naive,gem", "--buffer-size", "0", *SMALL,
                                       "--out", str(out)])
    assert_one_line_error(result, "gem needs an episodic memory", "buffer_size=0", "--buffer-size")
    assert not out.exists()  # naive did not train first


def test_run_flags_and_their_help_come_from_the_config_fields() -> None:
    from clbench.config import RUN_FIELDS

    text = " ".join(invoke("run", "--help").output.split())
    flagged = [f for f in RUN_FIELDS.values() if f.metadata.get("flag")]
    assert len(flagged) >= 15
    for f in flagged:
        assert f"--{f.name.replace('_', '-')}" in text
        assert " ".join(f.metadata["help"].split())[:40] in text, f.name

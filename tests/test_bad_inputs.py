"""The bad-input battery: every bad input to `clbench run` is exit code 2 and one line on stderr that names the
value and the fix, with no traceback, and leaves the files already in the run directory byte-for-byte unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from clbench.cli import main
from clbench.config import build_config, dump_yaml

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = ["--stream", "synthetic", "--model", "tiny", "--train-size", "32", "--test-size", "16", "--quiet"]
RECORD = {"type": "accuracy", "unit": "naive/seed0", "method": "naive", "seed": 0, "row": 0, "task": None,
          "eval_task": "colours", "eval_index": 0, "step": None, "metric": "acc_cil", "value": 0.25}


def saved_run(path: Path, *, methods: tuple[str, ...] = ("naive", "ewc")) -> Path:
    """A run directory as a real run leaves it: config.yaml, env.json and results with one record."""
    path.mkdir(parents=True)
    config = build_config({"methods": list(methods), "stream": "synthetic", "model": "tiny", "out": str(path),
                           "train_size": 32, "test_size": 16})
    (path / "config.yaml").write_text(dump_yaml(config))
    (path / "env.json").write_text("{}")
    (path / "results.jsonl").write_text(json.dumps(RECORD, sort_keys=True) + "\n")
    return path


def snapshot(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(path.rglob("*"))}


# Each case: (id, prepare(tmp) -> (args, run directory to watch), words the message must contain)
Case = tuple[str, Callable[[Path], tuple[list[str], Path]], list[str]]


def fresh(*args: str) -> Callable[[Path], tuple[list[str], Path]]:
    return lambda tmp: (["--methods", "naive", *SMALL, "--out", str(tmp / "new"), *args], tmp / "new")


def write(name: str, text: str, *args: str) -> Callable[[Path], tuple[list[str], Path]]:
    def prepare(tmp: Path) -> tuple[list[str], Path]:
        (tmp / name).write_text(text)
        return ["--methods", "naive", *SMALL, "--out", str(tmp / "new"),
                *[a.replace("{file}", str(tmp / name)) for a in args]], tmp / "new"
    return prepare


def resume(*args: str, damage: Callable[[Path], None] | None = None,
           methods: tuple[str, ...] = ("naive", "ewc")) -> Callable[[Path], tuple[list[str], Path]]:
    def prepare(tmp: Path) -> tuple[list[str], Path]:
        out = saved_run(tmp / "saved", methods=methods)
        if damage is not None:
            damage(out)
        return ["--out", str(out), "--resume", "--quiet", *args], out
    return prepare


def existing(*args: str) -> Callable[[Path], tuple[list[str], Path]]:
    def prepare(tmp: Path) -> tuple[list[str], Path]:
        out = saved_run(tmp / "saved")
        return ["--methods", "naive", *SMALL, "--out", str(out), *args], out
    return prepare


def locked(tmp: Path) -> tuple[list[str], Path]:
    out = tmp / "busy"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    return ["--methods", "naive", *SMALL, "--out", str(out)], out


def under_file(tmp: Path) -> tuple[list[str], Path]:
    (tmp / "a_file").write_text("not a folder")
    return ["--methods", "naive", *SMALL, "--out", str(tmp / "a_file" / "sub")], tmp / "a_file"


def out_is_file(tmp: Path) -> tuple[list[str], Path]:
    (tmp / "a_file").write_text("not a folder")
    return ["--methods", "naive", *SMALL, "--out", str(tmp / "a_file")], tmp / "a_file"


def plugin(name: str, methods: str) -> Callable[[Path], tuple[list[str], Path]]:
    return lambda tmp: (["--methods", methods, *SMALL, "--out", str(tmp / "new"), "--plugin",
                         str(FIXTURES / name)], tmp / "new")


def corrupt_results(out: Path) -> None:
    with (out / "results.jsonl").open("a") as fh:
        fh.write("{not json\n" + json.dumps(RECORD) + "\n")


def foreign_results(out: Path) -> None:
    with (out / "results.jsonl").open("a") as fh:
        fh.write("[1, 2, 3]\n")


def bad_marker(out: Path) -> None:
    unit = out / "checkpoints" / "naive" / "seed0"
    unit.mkdir(parents=True)
    (unit / "checkpoint.json").write_text('{"row": ')


def no_config(out: Path) -> None:
    (out / "config.yaml").unlink()


CASES: list[Case] = [
    ("unknown-method", fresh("--methods", "naiv"), ["'naiv'", "did you mean 'naive'"]),
    ("unknown-stream", fresh("--stream", "synthetc"), ["'synthetc'", "did you mean 'synthetic'"]),
    ("unknown-model", fresh("--model", "tinyy"), ["'tinyy'", "did you mean 'tiny'"]),
    ("malformed-yaml", write("bad.yaml", "epochs: [1, 2\n", "--config", "{file}"), ["bad.yaml", "not valid YAML"]),
    ("yaml-not-mapping", write("list.yaml", "- 1\n- 2\n", "--config", "{file}"), ["list.yaml", "must be a mapping"]),
    ("unknown-config-key", write("typo.yaml", "epoch: 2\n", "--config", "{file}"),
     ["'epoch'", "did you mean 'epochs'"]),
    ("missing-config", fresh("--config", "no_such_config.yaml"), ["no_such_config.yaml", "does not exist"]),
    ("set-wrong-type-int", fresh("--set", "epochs=two"), ["epochs", "'two'", "integer"]),
    ("set-wrong-type-float", fresh("--set", "lr=fast"), ["lr", "'fast'"]),
    ("set-wrong-type-bool", fresh("--set", "keep_checkpoints=maybe"), ["keep_checkpoints", "true or false"]),
    ("set-not-key-value", fresh("--set", "epochs"), ["KEY=VALUE"]),
    ("negative-batch-size", fresh("--set", "batch_size=-4"), ["batch_size=-4", "positive"]),
    ("negative-train-size", fresh("--train-size", "-1"), ["train_size=-1", "positive"]),
    ("zero-epochs", fresh("--epochs", "0"), ["epochs=0", "positive"]),
    ("too-short-max-length", fresh("--max-length", "4"), ["max_length=4", "at least 8"]),
    ("repeated-seed", fresh("--seeds", "0,0"), ["seeds [0, 0]", "once"]),
    ("bad-device", fresh("--device", "tpu"), ["device='tpu'", "cpu"]),
    ("bad-executor", fresh("--set", "executor=dask"), ["executor='dask'", "ray"]),
    ("bad-warmup", fresh("--set", "warmup_ratio=1.5"), ["warmup_ratio=1.5", "[0, 1)"]),
    ("out-two-levels-missing", lambda tmp: (["--methods", "naive", *SMALL, "--out", str(tmp / "a" / "b" / "c")],
                                            tmp / "a"), ["does not exist", "create it first"]),
    ("out-under-a-file", under_file, ["a_file", "under a file", "another --out"]),
    ("out-is-a-file", out_is_file, ["a_file", "is a file", "another --out"]),
    ("plugin-syntax-error", plugin("plugin_syntax_error.py", "naive"), ["plugin_syntax_error.py", "syntax error"]),
    ("plugin-config-not-frozen", plugin("plugin_not_frozen.py", "loose"), ["plugin_not_frozen.py", "non-frozen"]),
    ("plugin-hook-not-callable", plugin("plugin_bad_hook.py", "not-a-hook"), ["'loss'", "not callable"]),
    ("plugin-duplicate-name", plugin("plugin_duplicate.py", "naive"), ["'naive'", "defined twice", "rename"]),
    ("plugin-missing", plugin("no_such_plugin.py", "naive"), ["no_such_plugin.py", "does not exist"]),
    ("method-listed-twice", fresh("--methods", "naive,naive"), ["naive", "twice", "once"]),
    ("option-on-method-without-options", fresh("--set", "naive.r=8"), ["naive.r", "has no options"]),
    ("option-for-method-not-run", fresh("--set", "lora.rank=8"), ["'lora'", "not in --methods", "add it"]),
    ("option-out-of-range", fresh("--methods", "ewc", "--set", "ewc.penalty_weight=-1"),
     ["penalty_weight=-1", ">= 0"]),
    ("existing-run-without-resume", existing(), ["already holds a run", "--resume"]),
    ("locked-run-directory", locked, ["in use by process", "another --out"]),
    ("resume-without-out", lambda tmp: (["--resume", "--quiet"], tmp / "nothing"), ["--resume needs --out"]),
    ("resume-without-config", resume(damage=no_config), ["nothing to resume", "config.yaml"]),
    ("resume-corrupted-results", resume(damage=corrupt_results), ["results.jsonl", "line 2 is corrupted"]),
    ("resume-foreign-results", resume(damage=foreign_results), ["results.jsonl", "not a clbench record"]),
    ("resume-other-stream", resume("--stream", "reviews"), ["different configuration", "stream", "'reviews'"]),
    ("resume-other-sizes", resume("--train-size", "64", "--set", "epochs=2"),
     ["train_size (32 -> 64)", "epochs (3 -> 2)"]),
    ("resume-other-method-option", resume("--set", "ewc.penalty_weight=5"), ["ewc.penalty_weight", "5"]),
    ("resume-other-methods", resume("--methods", "naive"), ["methods", "different configuration"]),
    ("resume-corrupted-checkpoint-marker", resume(damage=bad_marker, methods=("naive",)),
     ["checkpoint.json", "corrupted", "delete the folder"]),
]


@pytest.mark.parametrize("make, needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_no_file(tmp_path: Path,
                                                         make: Callable[[Path], tuple[list[str], Path]],
                                                         needles: list[str]) -> None:
    args, watched = make(tmp_path)
    before = snapshot(watched)
    result = CliRunner().invoke(main, ["run", *[a for a in args if a != "run"]], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("clbench: error: ") and "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert snapshot(watched) == before


def test_the_battery_has_at_least_25_cases() -> None:
    assert len(CASES) >= 25

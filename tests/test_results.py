"""The run directory's files: strict-JSON records read back as written, tail repair, and the lock."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from clbench.errors import RunDirError
from clbench.results import ARCHIVED, LOCK, RESULTS, RunDir, json_line, read_records, torn_tail

RECORD = {"type": "drift", "unit": "naive/seed0", "method": "naive", "seed": 0, "row": 1, "task": "a",
          "param": "w", "metric": "frobenius_task", "value": 0.5, "norm_before": 1.0, "norm_change": 0.5}


def refuse_constants(token: str) -> None:
    raise ValueError(f"non-standard JSON token {token}")


def test_non_finite_numbers_are_written_as_null_and_read_back_as_nan(tmp_path: Path) -> None:
    records = [{**RECORD, "value": math.nan, "norm_before": math.inf, "norm_change": -math.inf},
               {**RECORD, "row": 2, "value": np.float32("nan"), "norm_before": torch.tensor(2.0),
                "norm_change": np.int64(3)}]
    with RunDir(tmp_path / "run") as run_dir:
        run_dir.append(records)
    lines = (tmp_path / "run" / RESULTS).read_text().splitlines()
    parsed = [json.loads(line, parse_constant=refuse_constants) for line in lines]  # strict JSON
    assert parsed[0]["value"] is None and parsed[0]["norm_before"] is None
    back = read_records(tmp_path / "run")
    assert all(math.isnan(r["value"]) for r in back)
    assert math.isnan(back[0]["norm_before"]) and math.isnan(back[0]["norm_change"])
    assert back[1]["norm_before"] == 2.0 and back[1]["norm_change"] == 3
    assert back[0]["task"] == "a" and json_line({**RECORD, "task": None}).count("null") == 1  # None stays None


def test_old_files_with_nan_tokens_still_read(tmp_path: Path) -> None:
    (tmp_path / RESULTS).write_text(json.dumps({**RECORD, "value": math.nan}) + "\n")
    assert math.isnan(read_records(tmp_path)[0]["value"])


@pytest.mark.parametrize(("line", "problem"), [
    ('{"type": "accuracy", "unit": "x", "row": 0}', "missing 'method'"),
    (json.dumps({k: v for k, v in RECORD.items() if k != "param"}), "missing 'param'"),
    (json.dumps({**RECORD, "row": "1"}), "'unit' must be a string and 'row' an integer"),
    ("[1, 2]", "not a JSON object"),
])
def test_a_line_that_is_not_a_record_is_named(tmp_path: Path, line: str, problem: str) -> None:
    (tmp_path / RESULTS).write_text(line + "\n" + json.dumps(RECORD) + "\n")
    with pytest.raises(RunDirError, match=f"line 1 is not a clbench record \\({problem}"):
        read_records(tmp_path)


def test_results_that_are_not_utf8_or_not_a_file_are_named(tmp_path: Path) -> None:
    (tmp_path / RESULTS).write_bytes(b"\xff" + json.dumps(RECORD).encode())
    with pytest.raises(RunDirError, match="not UTF-8 text"):
        read_records(tmp_path)
    (tmp_path / RESULTS).unlink()
    (tmp_path / RESULTS).mkdir()
    with pytest.raises(RunDirError, match="is not a file"):
        read_records(tmp_path)


def test_repair_keeps_a_complete_last_record_and_cuts_a_torn_one(tmp_path: Path) -> None:
    line = json_line(RECORD)
    (tmp_path / RESULTS).write_text(line + "\n" + line)  # complete, but no final newline
    assert not torn_tail(tmp_path)
    with RunDir(tmp_path) as run_dir:
        run_dir.repair_tail()
    assert (tmp_path / RESULTS).read_text() == line + "\n" + line + "\n"
    (tmp_path / RESULTS).write_text(line + "\n" + line[:-5])
    assert torn_tail(tmp_path) and len(read_records(tmp_path)) == 1
    with RunDir(tmp_path) as run_dir:
        run_dir.repair_tail()
    assert (tmp_path / RESULTS).read_text() == line + "\n"


def test_the_lock_excludes_a_second_holder_and_is_deleted_on_release(tmp_path: Path) -> None:
    with RunDir(tmp_path / "run"):
        owner = json.loads((tmp_path / "run" / LOCK).read_text())
        assert owner == {"pid": os.getpid(), "host": socket.gethostname()}
        with pytest.raises(RunDirError, match="in use by process"), RunDir(tmp_path / "run"):
            pass
    assert not (tmp_path / "run" / LOCK).exists()


def test_an_unreadable_lock_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / LOCK).write_text("garbage")
    with pytest.raises(RunDirError, match="not a clbench lock; delete it"), RunDir(tmp_path):
        pass
    assert (tmp_path / LOCK).read_text() == "garbage"


def test_a_run_that_writes_nothing_leaves_no_folder(tmp_path: Path) -> None:
    with RunDir(tmp_path / "runs" / "new"):
        pass
    assert list(tmp_path.iterdir()) == []
    with RunDir(tmp_path / "kept") as run_dir:
        run_dir.write_text("config.yaml", "x: 1\n")
    assert (tmp_path / "kept" / "config.yaml").is_file() and not (tmp_path / "kept" / LOCK).exists()


def test_an_archived_run_reads_like_the_plain_one_and_a_broken_archive_is_named(tmp_path: Path) -> None:
    import gzip

    records = [RECORD, {**RECORD, "row": 2, "value": 0.25}]
    with RunDir(tmp_path / "plain") as run_dir:
        run_dir.append(records)
    archived = tmp_path / "archived"
    archived.mkdir()
    (archived / ARCHIVED).write_bytes(gzip.compress((tmp_path / "plain" / RESULTS).read_bytes()))
    assert read_records(archived) == read_records(tmp_path / "plain")
    (archived / ARCHIVED).write_bytes(b"not gzip")
    with pytest.raises(RunDirError, match="not a readable gzip file"):
        read_records(archived)

"""--log tensorboard,wandb,mlflow: a tiny run writes a TensorBoard event file, an offline W&B run and an MLflow
file store, and each is read back with the tool's own reader and compared with results.jsonl."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import clbench
from clbench.api import Run
from clbench.errors import ConfigError
from clbench.results import read_records

SMALL = {"stream": "synthetic", "model": "tiny", "train_size": 16, "test_size": 8, "max_steps": 2}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Run:
    base = tmp_path_factory.mktemp("trackers")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLBENCH_CACHE", str(base / "cache"))
        for name in ("WANDB_MODE", "WANDB_PROJECT", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(name, raising=False)
        mp.setenv("WANDB_SILENT", "true")
        return clbench.run(methods=["naive", "ewc"], out=str(base / "run"), log=["tensorboard", "wandb", "mlflow"],
                           quiet=True, report=False, ewc={"penalty_weight": 50.0}, **SMALL)


def expected(run: Run, unit: str, metric: str, task: str) -> dict[int, float]:
    return {r["row"]: r["value"] for r in read_records(run.path)
            if r["unit"] == unit and r["type"] == "accuracy" and r["metric"] == metric and r["eval_task"] == task}


def test_tensorboard_event_file_reads_back(tracked: Run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = tracked.path / "tensorboard" / "ewc" / "seed0"
    assert list(folder.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    got = {e.step: e.value for e in events.Scalars("acc_cil/shapes")}
    assert got == pytest.approx(expected(tracked, "ewc/seed0", "acc_cil", "shapes"))
    assert set(got) == {0, 1, 2, 3}
    summary = tracked.summary().set_index("unit")
    assert events.Scalars("final/acc_cil")[0].value == pytest.approx(summary.loc["ewc/seed0", "acc_cil"])
    assert events.Scalars("final/forgetting_cil")[0].value == pytest.approx(summary.loc["ewc/seed0", "forgetting_cil"])
    assert "drift/frobenius_total" in events.Tags()["scalars"]
    assert "profile/train/wall_s" in events.Tags()["scalars"]


def wandb_records(path: Path) -> Iterator[Any]:
    """The records of an offline W&B run file: a 7-byte header, then leveldb-log chunks (7-byte header: CRC32,
    length, type FULL/FIRST/MIDDLE/LAST) in 32 KiB blocks, each record a protobuf `Record`."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (length == 0 and kind == 0):
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def key(item: Any) -> str:
    """An item's key: `key`, or the parts of `nested_key` (which wandb uses for keys holding a '/')."""
    return str(item.key) or "/".join(item.nested_key)


def test_offline_wandb_run_reads_back(tracked: Run) -> None:
    runs: dict[str, dict[str, Any]] = {}
    for file in sorted((tracked.path / "wandb").glob("offline-run-*/run-*.wandb")):
        info: dict[str, Any] = {"history": {}, "summary": {}}
        for record in wandb_records(file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                info.update(name=record.run.display_name, group=record.run.run_group, project=record.run.project,
                            config={key(i): json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "history":
                row = {key(i): json.loads(i.value_json) for i in record.history.item}
                info["history"][row["_step"]] = row
            elif kind == "summary":
                info["summary"].update({key(i): json.loads(i.value_json) for i in record.summary.update})
        runs[info["name"]] = info
    assert set(runs) == {"naive/seed0", "ewc/seed0"}
    ewc = runs["ewc/seed0"]
    assert ewc["group"] == "run" and ewc["project"] == "clbench"
    assert ewc["config"]["method"] == "ewc" and ewc["config"]["seed"] == 0
    assert ewc["config"]["ewc.penalty_weight"] == 50.0 and ewc["config"]["stream"] == "synthetic"
    got = {step: row["acc_cil/colours"] for step, row in ewc["history"].items()}
    assert got == pytest.approx(expected(tracked, "ewc/seed0", "acc_cil", "colours"))
    summary = tracked.summary().set_index("unit")
    assert ewc["summary"]["final/acc_cil"] == pytest.approx(summary.loc["ewc/seed0", "acc_cil"])
    assert ewc["summary"]["status"] == "done"


def test_mlflow_file_store_reads_back(tracked: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(tracked.path / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("run")
    assert experiment is not None
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"naive/seed0", "ewc/seed0"}
    naive = runs["naive/seed0"]
    assert naive.info.status == "FINISHED" and naive.data.params["method"] == "naive"
    history = {m.step: m.value for m in client.get_metric_history(naive.info.run_id, "acc_til/animals")}
    assert history == pytest.approx(expected(tracked, "naive/seed0", "acc_til", "animals"))
    assert naive.data.metrics["final/acc_cil"] == pytest.approx(tracked.summary().set_index("unit").loc[
        "naive/seed0", "acc_cil"])


def test_unknown_or_missing_tracker_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord' in --log \\(did you mean 'tensorboard'"):
        clbench.run(methods=["naive"], log=["tensorbord"], out=str(tmp_path / "a"), **SMALL)
    from clbench import trackers

    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="--log wandb needs the package 'wandb'.*pip install 'clbench\\[wandb\\]'"):
        clbench.run(methods=["naive"], log=["wandb"], out=str(tmp_path / "b"), **SMALL)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_failing_tracker_is_dropped_and_the_run_goes_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from clbench import trackers

    def broken(self: object, unit: str, scalars: object, step: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(trackers.TensorBoardBackend, "log", broken)
    run = clbench.run(methods=["naive"], log=["tensorboard"], out=str(tmp_path / "run"), report=False, **SMALL)
    assert (run.summary()["status"] == "done").all()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "--log tensorboard stopped" in line]
    assert warnings == [("clbench: warning: --log tensorboard stopped (OSError: disk full); the run goes on and its "
                        "results are in results.jsonl")]

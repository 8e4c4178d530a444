"""Per-unit checkpoints for `clbench run --resume`: safetensors + JSON, never pickled objects.

After each finished task the runner saves, under
`DIR/checkpoints/<method>/seed<k>/task<i>/` (`<method>` escaped one-to-one by `folder_name`):

- `model.safetensors`: the model's whole `state_dict()` (trainable and frozen parameters and buffers);
- `method.safetensors` + `method.json`: the method's `state_dict()`, tensors in the first file and the plain
  structure (dicts, lists, numbers, strings) in the second, with `{"__tensor__": key}` where a tensor was;
- `rng.safetensors`: the runner's data-order generator, the method's `ctx.generator` and torch's global CPU
  (and CUDA) RNG states, so a resumed unit draws exactly the numbers an uninterrupted one would;
- `runner.safetensors`: the logits of the last evaluation (the next task's functional drift needs them).

Then `checkpoint.json` in the unit folder names the finished row, the task folder and every file's sha256;
it is written atomically last, so a crash while saving leaves the previous checkpoint in force. The state is
copied when the runner saves; the files are written by a background thread while the next task trains, and
joined before the next checkpoint, when the unit ends and when it stops on an error or an interrupt. Older task
folders are deleted after the marker is in place: at most one checkpoint per unit exists, except for a moment while the
next one is written. A unit's checkpoint is deleted once the unit is done (its last task's checkpoint is then
not even written) unless `keep_checkpoints` is set, which keeps the checkpoint after the final task.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from clbench.data.fetch import sha256_file
from clbench.errors import RunDirError, UnitFailed
from clbench.ops import copies_into

CHECKPOINTS = "checkpoints"
MARKER = "checkpoint.json"
FORMAT = 1
FILES = ("model.safetensors", "method.safetensors", "method.json", "rng.safetensors", "runner.safetensors")


@dataclass
class Checkpoint:
    """What a unit needs to continue after its last finished task."""

    row: int  # rows finished: 1 + the index of the last finished task
    model: dict[str, Tensor]
    method: dict[str, Any]
    rng: dict[str, Tensor]  # "runner", "method", "torch" and, on CUDA, "cuda"
    logits: list[Tensor]  # [n_test_j, num_labels] per task, from the evaluation after task `row`


SAFE = re.compile(r"[A-Za-z0-9_-]")


def folder_name(name: str) -> str:
    """A method name as one folder name, one-to-one: letters, digits, '_' and '-' stay, every other character
    becomes %XX per UTF-8 byte (`naive@a` -> `naive%40a`, never the same folder as a method called `naive_a`;
    '.' is escaped too, so no name can climb out of `checkpoints/`)."""
    return "".join(c if SAFE.fullmatch(c) else "".join(f"%{b:02X}" for b in c.encode()) for c in name)


def encode_state(state: Any, tensors: dict[str, Tensor], where: str = "state") -> Any:
    """Split a method state into a JSON-able tree and a flat dict of tensors (filled in place)."""
    if isinstance(state, Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = state
        return {"__tensor__": key, "device": str(state.device)}
    if isinstance(state, dict):
        if all(isinstance(k, str) for k in state):
            return {k: encode_state(v, tensors, f"{where}.{k}") for k, v in state.items()}
        return {"__items__": [[encode_state(k, tensors, where), encode_state(v, tensors, f"{where}.{k}")]
                              for k, v in state.items()]}
    if isinstance(state, tuple):
        return {"__tuple__": [encode_state(v, tensors, f"{where}[{i}]") for i, v in enumerate(state)]}
    if isinstance(state, list):
        return [encode_state(v, tensors, f"{where}[{i}]") for i, v in enumerate(state)]
    if state is None or isinstance(state, (bool, int, float, str)):
        return state
    raise UnitFailed(f"{where} is a {type(state).__name__}; a method's state_dict() may hold only tensors, "
                     "numbers, strings, None, lists, tuples and dicts (checkpoints are never pickled)")


def decode_state(tree: Any, tensors: dict[str, Tensor], device: torch.device | None = None) -> Any:
    """Inverse of `encode_state`; tensors saved from a CUDA device go back to `device`."""
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            tensor = tensors[tree["__tensor__"]]
            if device is not None and str(tree.get("device", "cpu")).startswith("cuda"):
                tensor = tensor.to(device)
            return tensor
        if "__items__" in tree:
            return {decode_state(k, tensors, device): decode_state(v, tensors, device)
                    for k, v in tree["__items__"]}
        if "__tuple__" in tree:
            return tuple(decode_state(v, tensors, device) for v in tree["__tuple__"])
        return {k: decode_state(v, tensors, device) for k, v in tree.items()}
    if isinstance(tree, list):
        return [decode_state(v, tensors, device) for v in tree]
    return tree


def rng_states(runner: torch.Generator, method: torch.Generator, device: torch.device) -> dict[str, Tensor]:
    """The RNG states a resumed unit must restore (global torch states included: dropout draws from them)."""
    states = {"runner": runner.get_state(), "method": method.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict[str, Tensor], runner: torch.Generator, method: torch.Generator,
                   device: torch.device) -> None:
    runner.set_state(states["runner"])
    method.set_state(states["method"])
    torch.set_rng_state(states["torch"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStore:
    """Checkpoints of every unit of one run directory."""

    def __init__(self, run_dir: Path, keep: bool = False, background: bool = True) -> None:
        self.root = Path(run_dir) / CHECKPOINTS
        self.keep = keep
        self.background = background  # write files in a thread while the next task trains
        self._writer: threading.Thread | None = None
        self._error: Exception | None = None
        self._buffers: dict[str, dict[str, Tensor]] = {}  # per file, CPU copies of the state being written, reused

    def unit_dir(self, method: str, seed: int) -> Path:
        return self.root / folder_name(method) / f"seed{seed}"

    def save(self, method_name: str, seed: int, row: int, task: str, model: nn.Module,
             method_state: dict[str, Any], rng: dict[str, Tensor], logits: list[Tensor]) -> None:
        """Checkpoint the unit after row `row` (task `task`): the state is copied now, and the files, the marker
        and the pruning of older checkpoints are written by a background thread while training goes on (in
        this thread when the store is not `background`). `wait` joins it; the next `save` and `finish` do.

        Raises:
            UnitFailed: the method's state holds something a checkpoint cannot (before anything is written).
        """
        self.wait()
        method_tensors: dict[str, Tensor] = {}  # encoded first: a state that cannot be saved leaves no folder
        tree = encode_state(method_state, method_tensors, f"method '{method_name}' state_dict()")
        files = {
            "model.safetensors": self._snapshot("model", model.state_dict()),
            "method.safetensors": self._snapshot("method", method_tensors),
            "rng.safetensors": self._snapshot("rng", rng),
            "runner.safetensors": self._snapshot("runner", {f"logits.{j}": t for j, t in enumerate(logits)}),
        }
        if not self.background:
            self._write(method_name, seed, row, task, files, tree)
            return
        self._writer = threading.Thread(target=self._write_or_keep_error, name="clbench-checkpoint",
                                        args=(method_name, seed, row, task, files, tree))
        self._writer.start()

    def wait(self, quiet: bool = False) -> None:
        """Block until the checkpoint being written in the background is on disk.

        Raises:
            OSError: (or whatever the write raised) unless `quiet`, for use while another exception is on its
                way; a failed write leaves the previous checkpoint in force either way.
        """
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        error, self._error = self._error, None
        if error is not None and not quiet:
            raise error

    def _snapshot(self, file: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Contiguous CPU copies of `state`'s tensors that training cannot change while they are written: views
        into one buffer per dtype (`clbench.ops.copies_into`), reused from save to save while the tensors keep their
        shapes (fresh large allocations cost page faults). safetensors writes views that do not overlap as
        tensors of their own."""
        kept = self._buffers[file] = copies_into(self._buffers.get(file), state, device="cpu")
        return dict(kept)

    def _write_or_keep_error(self, *args: Any) -> None:
        try:
            self._write(*args)
        except Exception as exc:  # noqa: BLE001 - handed to the training thread, which raises it in `wait`
            self._error = exc

    def _write(self, method_name: str, seed: int, row: int, task: str, files: dict[str, dict[str, Tensor]],
               tree: Any) -> None:
        """Files first (each fsynced), then the marker naming them atomically, then older folders deleted: a
        crash at any point leaves either the previous checkpoint or this one in force."""
        unit = self.unit_dir(method_name, seed)
        folder = unit / f"task{row}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for name, tensors in files.items():
            save_file(tensors, str(folder / name))
        (folder / "method.json").write_text(json.dumps(tree), encoding="utf-8")
        hashes = {}
        for path in sorted(folder.iterdir()):
            _fsync(path)
            hashes[path.name] = sha256_file(path)
        marker = {"format": FORMAT, "method": method_name, "seed": seed, "row": row, "task": task,
                  "folder": folder.name, "sha256": hashes}
        tmp = unit / (MARKER + ".tmp")
        tmp.write_text(json.dumps(marker, indent=1), encoding="utf-8")
        _fsync(tmp)
        os.replace(tmp, unit / MARKER)
        _fsync(unit)
        for old in unit.iterdir():
            if old.is_dir() and old.name != folder.name:
                shutil.rmtree(old, ignore_errors=True)

    def marker(self, method_name: str, seed: int) -> dict[str, Any] | None:
        """The marker of a unit's checkpoint, or None when it has none."""
        path = self.unit_dir(method_name, seed) / MARKER
        if not path.is_file():
            return None
        try:
            marker = json.loads(path.read_text(encoding="utf-8"))
            int(marker["row"]), str(marker["folder"]), dict(marker["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            raise RunDirError(f"checkpoint marker '{path}' is corrupted; delete the folder '{path.parent}' "
                              "to restart that unit from its first task") from None
        return dict(marker)

    def check(self, method_name: str, seed: int, tasks: Sequence[str], rows_recorded: int) -> None:
        """Refuse a checkpoint that does not fit the run, before a resumed run writes anything: its marker must
        name this unit, a task of the stream (not the last unless checkpoints are kept: a unit is done after
        it), its own folder and the files a checkpoint holds, the results must hold the evaluation after that task
        (`rows_recorded`: the unit's last recorded row), and every file must match its sha256.

        Raises:
            RunDirError: naming the marker or file and how to restart the unit.
        """
        marker = self.marker(method_name, seed)
        if marker is None:
            return
        path = self.unit_dir(method_name, seed) / MARKER
        hint = f"; delete the folder '{path.parent}' to restart that unit from its first task"
        row = int(marker["row"])
        problem = None
        if (marker.get("method"), marker.get("seed")) != (method_name, seed):
            problem = f"belongs to {marker.get('method')!r} seed {marker.get('seed')!r}"
        elif not 1 <= row < len(tasks) + self.keep or marker.get("task") != tasks[row - 1]:
            # after the last task a unit is done: only kept checkpoints (--keep-checkpoints) are written there
            problem = f"names row {row} ({marker.get('task')!r}), which is not a finished task of this stream"
        elif marker["folder"] != f"task{row}" or set(marker["sha256"]) != set(FILES):
            problem = "does not list the files of one checkpoint"
        elif rows_recorded < row:
            problem = f"names row {row} but the results end at row {rows_recorded} for this unit"
        if problem is not None:
            raise RunDirError(f"checkpoint marker '{path}' {problem}{hint}")
        folder = path.parent / marker["folder"]
        for name, digest in marker["sha256"].items():
            if not (folder / name).is_file() or sha256_file(folder / name) != digest:
                raise RunDirError(f"checkpoint file '{folder / name}' is missing or corrupted (sha256 mismatch){hint}")

    def load(self, method_name: str, seed: int, device: torch.device) -> Checkpoint | None:
        """A unit's last checkpoint (verified against its sha256s), or None when it has none."""
        marker = self.marker(method_name, seed)
        if marker is None:
            return None
        folder = self.unit_dir(method_name, seed) / marker["folder"]
        hint = f"; delete the folder '{folder.parent}' to restart that unit from its first task"
        loaded: dict[str, dict[str, Tensor]] = {}
        for name, digest in marker["sha256"].items():
            path = folder / name
            if not path.is_file() or sha256_file(path) != digest:
                raise RunDirError(f"checkpoint file '{path}' is missing or corrupted (sha256 mismatch){hint}")
            if name.endswith(".safetensors"):
                try:
                    loaded[name] = load_file(str(path))
                except (SafetensorError, OSError, ValueError) as exc:
                    raise RunDirError(f"checkpoint file '{path}' cannot be read ({exc}){hint}") from None
        try:
            tree = json.loads((folder / "method.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise RunDirError(f"checkpoint file '{folder / 'method.json'}' is corrupted{hint}") from None
        runner = loaded["runner.safetensors"]
        return Checkpoint(row=int(marker["row"]), model=loaded["model.safetensors"],
                          method=decode_state(tree, loaded["method.safetensors"], device),
                          rng=loaded["rng.safetensors"],
                          logits=[runner[f"logits.{j}"] for j in range(len(runner))])

    def finish(self, method_name: str, seed: int) -> None:
        """The unit is done (or failed): wait for its checkpoint being written, then delete its checkpoint unless
        checkpoints are kept."""
        self.wait()
        self._buffers.clear()
        if self.keep:
            return
        unit = self.unit_dir(method_name, seed)
        shutil.rmtree(unit, ignore_errors=True)
        for folder in (unit.parent, self.root):  # drop folders left empty
            try:
                folder.rmdir()
            except OSError:
                break

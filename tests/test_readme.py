"""The README's Python example runs as written (CI also runs it from a fresh clone: .ci/run)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(REPO / ".ci"))
    try:
        from readme_example import example
    finally:
        sys.path.remove(str(REPO / ".ci"))
    script = tmp_path / "example.py"
    script.write_text(example((REPO / "README.md").read_text(encoding="utf-8")))
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")
    printed = capsys.readouterr().out
    assert "acc_cil" in printed and "ewc" in printed and "before" in printed
    assert (tmp_path / "runs" / "api" / "summary.csv").is_file()
    assert (tmp_path / "runs" / "api" / "report.md").is_file()


def test_quick_start_is_three_commands() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert len(block.strip().splitlines()) == 3

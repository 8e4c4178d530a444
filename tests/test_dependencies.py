"""Declared dependencies match the imports: a plain `pip install clbench` must run, report and compare.

Every third-party import in the installed code (`clbench/` and `methods/`, installed as `clbench.methods`) is
either a base dependency, or an optional one: imported inside a function, by a file that tells the user which
extra to install, or guarded by `except ImportError` with a fallback. And every base dependency is imported
somewhere, so the list does not carry dead weight.
"""

from __future__ import annotations

import ast
import functools
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]
INSTALLED = [REPO / "clbench", REPO / "methods"]


def requirement_name(spec: str) -> str:
    """'pandas>=2.0' -> 'pandas'; 'qpsolvers[quadprog]>=4' -> 'qpsolvers' (normalised as pip does)."""
    name = re.split(r"[\s<>=!~\[;]", spec, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    base = {requirement_name(s) for s in project["dependencies"]}
    extras = {extra: {requirement_name(s) for s in specs if not s.startswith("clbench")}
              for extra, specs in project["optional-dependencies"].items()}
    return base, extras


def third_party_imports() -> list[tuple[Path, int, str, bool, bool]]:
    """(file, line, top-level module, at module level, guarded by `except ImportError`) of every import of a
    module that is neither in the standard library nor clbench's own."""
    out = []
    for root in INSTALLED:
        for path in sorted(root.rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            type_checking = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                             and "TYPE_CHECKING" in ast.unparse(node.test)
                             for child in node.body for n in ast.walk(child)}
            guarded = {id(n) for node in ast.walk(tree) if isinstance(node, ast.Try)
                       and any("ImportError" in ast.unparse(h.type or ast.Name("BaseException"))
                               for h in node.handlers)
                       for child in node.body for n in ast.walk(child)}
            top = {id(n) for n in tree.body}
            for node in ast.walk(tree):
                if id(node) in type_checking:
                    continue
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    module = name.split(".")[0]
                    if module in sys.stdlib_module_names or module in ("clbench", "methods", "__future__"):
                        continue
                    out.append((path, node.lineno, module, id(node) in top, id(node) in guarded))
    return out


@functools.cache
def _packages() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def distributions(module: str) -> set[str]:
    return {requirement_name(d) for d in _packages().get(module, [])}


def test_every_import_is_declared_or_behind_its_extra() -> None:
    base, extras = declared()
    problems = []
    for path, line, module, module_level, guarded in third_party_imports():
        where = f"{path.relative_to(REPO)}:{line} imports {module}"
        dists = distributions(module)
        if not dists:
            problems.append(f"{where}, which no installed distribution provides (declare it)")
            continue
        if dists & base or guarded:  # a guarded import has a fallback (psutil: the RSS peak from ru_maxrss)
            continue
        extra = next((name for name, reqs in extras.items() if dists & reqs and name != "dev"), None)
        if extra is None:
            problems.append(f"{where} ({', '.join(sorted(dists))}), which is neither a dependency nor in an extra")
        elif module_level:
            problems.append(f"{where} from the '{extra}' extra at module level: a base install cannot import it")
        elif not any(f"clbench[{extra}]" in f.read_text(encoding="utf-8") for f in path.parent.glob("*.py")):
            problems.append(f"{where} from the '{extra}' extra without telling the user to pip install "
                            f"'clbench[{extra}]'")
    assert not problems, "\n".join(problems)


def test_every_base_dependency_is_imported() -> None:
    base, _ = declared()
    imported = {d for *_, module, _, _ in third_party_imports() for d in distributions(module)}
    assert not base - imported, f"declared but never imported: {sorted(base - imported)}"


BLOCK_EXTRAS = """
import sys

class Hide:  # every finder, but blind to the extras' packages: they look not installed at all
    def __init__(self, finder):
        self.finder = finder
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            return None
        return self.finder.find_spec(name, path, target)
    def __getattr__(self, attr):
        return getattr(self.finder, attr)

sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
from clbench.cli import main
main()
"""


def test_base_install_runs_reports_and_compares(tmp_path: Path) -> None:
    """With every extra's packages unimportable (a plain `pip install clbench`), a run, its report and a
    comparison work (`clbench run` writes the report). CI repeats this with a real extras-free install (.ci/run)."""
    import subprocess

    _, extras = declared()
    blocked = sorted({m for name, reqs in extras.items() if name != "dev"
                      for m, dists in _packages().items()
                      if {requirement_name(d) for d in dists} & reqs})
    assert {"avalanche", "ray", "wandb"} <= set(blocked)
    script = BLOCK_EXTRAS.format(blocked=set(blocked))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path, check=False)

    out = tmp_path / "run"
    result = cli("run", "--methods", "naive", "--stream", "synthetic", "--model", "tiny", "--train-size", "32",
                 "--test-size", "16", "--max-steps", "3", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr
    assert (out / "report.md").is_file() and (out / "summary.csv").is_file()
    shutil.copytree(out, tmp_path / "copy")
    compared = cli("compare", str(out), str(tmp_path / "copy"), "--format", "csv")
    assert compared.returncode == 0, compared.stderr
    assert compared.stdout.startswith("run,")
    tuned = cli("tune", "--methods", "naive", "--stream", "synthetic", "--model", "tiny", "--trials", "2", "--out",
                str(tmp_path / "t"))
    assert tuned.returncode == 2 and "pip install 'clbench[tune]'" in tuned.stderr, tuned.stderr
    assert len(tuned.stderr.strip().splitlines()) == 1 and not (tmp_path / "t").exists()

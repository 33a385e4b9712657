"""Provenance and safe file writing shared by every module that produces outputs.

Every output folder carries the resolved recipe, the versions of the libraries that made it and
the git commit (STYLE habit 5), and every file that matters is written atomically: to a temporary
file in the same folder, fsync'ed, then renamed over the target, so a crash or a full disk leaves
either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medzoo.errors import DISK_ERRNOS as DISK_ERRNOS
from medzoo.errors import MedzooError
from medzoo.errors import disk_error as disk_error


def versions() -> dict[str, str]:
    """Versions of medzoo and of the libraries whose behaviour shapes results."""
    import importlib.metadata as md

    out = {}
    for dist in ("medzoo", "torch", "torchvision", "timm", "numpy", "safetensors", "onnx"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    import platform

    out["python"] = platform.python_version()
    return out


def git_commit(path: str | os.PathLike[str] | None = None) -> str | None:
    """The commit medzoo itself was built from, or None when that is unknown.

    Never the caller's project: installed into a venv inside someone's own git repository,
    ``git rev-parse`` in the package folder would answer with *their* commit. So, in order:

    1. the commit pip recorded at install time (PEP 610 ``direct_url.json``, ``vcs_info``), for
       ``pip install git+https://...@REV``;
    2. the package's own checkout, only when the folder above the package (``path``, default the
       installed ``medzoo`` folder) is the top level of a git work tree (an editable install or a
       clone on ``PYTHONPATH``);
    3. otherwise None.
    """
    package = Path(path) if path is not None else Path(__file__).resolve().parent
    if path is None:
        recorded = _installed_commit()
        if recorded:
            return recorded
    checkout = package.parent
    if not (checkout / ".git").exists():  # a folder (clone) or a file (worktree)
        return None
    top = _git(checkout, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != checkout.resolve():
        return None
    return _git(checkout, "rev-parse", "HEAD")


def _installed_commit() -> str | None:
    import importlib.metadata as md

    try:
        text = md.distribution("medzoo").read_text("direct_url.json")
    except md.PackageNotFoundError:
        return None
    try:
        info = json.loads(text or "{}")
    except ValueError:
        return None
    commit = (info.get("vcs_info") or {}).get("commit_id") if isinstance(info, dict) else None
    return str(commit) if commit else None


def _git(where: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=where, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    out = result.stdout.strip()
    return out if result.returncode == 0 and out else None


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def provenance() -> dict[str, Any]:
    """What every output records about how it was made."""
    return {"versions": versions(), "git_commit": git_commit(), "created": utc_now()}


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` atomically.

    On any exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        with contextlib.suppress(OSError):
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make renames and new files in folder ``path`` durable (best effort where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def ensure_writable_dir(path: str | os.PathLike[str], *, what: str = "the output") -> None:
    """Refuse, before any work, a folder that cannot be created or written.

    ``path`` may not exist yet: then its nearest existing ancestor must be a writable folder. A
    file where a folder is needed, a read-only file system or a folder without write permission
    is a one-line :class:`~medzoo.errors.MedzooError`. Nothing is created.
    """
    path = Path(path)
    probe = path
    while not probe.exists() and not probe.is_symlink():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.is_symlink() and not probe.exists():
        raise MedzooError(f"{what} {path}: {probe} is a broken symbolic link")
    if not probe.is_dir():
        raise MedzooError(
            f"{what} {path}: {probe} is a file, not a folder; choose another location"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        cause = "is on a read-only file system" if read_only else "is not writable"
        raise MedzooError(f"{what} {path}: {probe} {cause}; choose a writable location")


def ensure_writable_file(path: str | os.PathLike[str], *, what: str = "the output") -> None:
    """Like :func:`ensure_writable_dir` for a file to be (re)written: not a folder, parent writable."""
    path = Path(path)
    if path.is_dir():
        raise MedzooError(f"{what} {path} is a folder; give a file path")
    ensure_writable_dir(path.parent, what=what)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(target: str | os.PathLike[str], data: Any) -> None:
    atomic_write_text(target, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")

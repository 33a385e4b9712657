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
    """The commit of the repository that holds medzoo (None outside a git checkout)."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


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
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(target: str | os.PathLike[str], data: Any) -> None:
    atomic_write_text(target, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")

"""The zoo's names: the packaged catalog plus the local registry, read, locked and written.

Names resolve in this order: the local registry (``$MEDZOO_HOME/registry.json``, written by
pre-training, evaluation and publishing), then the catalog packaged with medzoo
(``medzoo/zoo/catalog.toml``); a registry entry replaces a catalog entry of the same name whole.
Weights live in ``$MEDZOO_HOME/models/NAME/``. Writing entries is :mod:`medzoo.zoo.index`'s job;
this module only knows the registry file, so loading, the card and the index can all build on it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from medzoo.config import medzoo_home
from medzoo.errors import MedzooError
from medzoo.provenance import atomic_write_json
from medzoo.zoo.card import REPO_ID_RE
from medzoo.zoo.entry import ZooEntry, validate_name

REGISTRY_FILE = "registry.json"
NEW_MARK = ".new-"  # .NAME.new-XXXX: an entry folder being written (see zoo.index.save_entry)
OLD_MARK = ".old-"  # .NAME.old-XXXX: the previous folder, moved aside while the new one goes in


def entry_folder(name: str) -> Path:
    """Where ``name``'s weights live (``$MEDZOO_HOME/models/NAME``); it may not exist yet."""
    return medzoo_home() / "models" / validate_name(name)


# --------------------------------------------------------------------------- catalog + registry


@functools.lru_cache(maxsize=1)
def _catalog() -> dict[str, ZooEntry]:
    import importlib.resources

    from medzoo.config import tomllib

    text = importlib.resources.files("medzoo.zoo").joinpath("catalog.toml").read_text("utf-8")
    tables = tomllib.loads(text).get("models", {})
    return {name: ZooEntry.from_dict({"name": name, **table}) for name, table in tables.items()}


def _registry_path() -> Path:
    return medzoo_home() / REGISTRY_FILE


def read_registry() -> dict[str, dict[str, Any]]:
    """The registry's ``models`` table (raw dicts; see :func:`valid_entries` for checked ones)."""
    path = _registry_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:  # UnicodeDecodeError is a ValueError
        raise MedzooError(
            f"the zoo registry {path} is unreadable ({type(err).__name__}); move it aside and "
            "re-register your models (medzoo keeps their folders under models/)"
        ) from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise MedzooError(f"the zoo registry {path} has no 'models' table; move it aside")
    return models


_HELD = threading.local()  # how deep this thread is inside registry_lock()


@contextlib.contextmanager
def registry_lock() -> Iterator[None]:
    """The registry's file lock; re-entrant within a thread (a nested call does not deadlock)."""
    from filelock import FileLock

    if getattr(_HELD, "depth", 0):
        _HELD.depth += 1
        try:
            yield
        finally:
            _HELD.depth -= 1
        return
    path = _registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock", timeout=120)
    try:
        lock.acquire()
    except TimeoutError:  # filelock.Timeout subclasses it
        raise MedzooError(
            f"the zoo registry {path} stayed locked by another process for 2 minutes; "
            "wait for it to finish and try again"
        ) from None
    _HELD.depth = 1
    try:
        yield
    finally:
        _HELD.depth = 0
        lock.release()


def write_registry(models: Mapping[str, dict[str, Any]]) -> None:
    atomic_write_json(_registry_path(), {"format": 1, "models": dict(sorted(models.items()))})


def entry_problem(name: str, record: Any) -> str | None:
    """Why registry record ``record`` of ``name`` is not a usable entry (None when it is)."""
    if not isinstance(record, dict):
        return f"its record is a {type(record).__name__}, not a table"
    try:
        entry = ZooEntry.from_dict(record)
    except MedzooError as err:
        return str(err)
    except (TypeError, ValueError, AttributeError, KeyError) as err:
        return f"{type(err).__name__}: {err}"
    if entry.name != name:
        return f"its record names {entry.name!r}"
    return None


def valid_entries(models: Mapping[str, Any]) -> tuple[dict[str, ZooEntry], dict[str, str]]:
    """Split registry records into usable entries and ``{name: why}`` for malformed ones."""
    good: dict[str, ZooEntry] = {}
    bad: dict[str, str] = {}
    for name, record in models.items():
        problem = entry_problem(name, record)
        if problem is None:
            good[name] = ZooEntry.from_dict(record)
        else:
            bad[name] = problem
    return good, bad


def list_models(filter: str | Sequence[str] = "") -> list[str]:
    """Names in the packaged catalog and the local registry, sorted.

    ``filter``: an fnmatch pattern or a list of them (any may match), as in
    ``timm.list_models(filter=...)``; empty lists every model. Malformed registry records are
    left out (``medzoo list`` names them); a catalog entry of the same name stays listed.
    """
    import fnmatch

    recover()
    good, _ = valid_entries(read_registry())
    names = sorted(set(_catalog()) | set(good))
    patterns = [filter] if isinstance(filter, str) else list(filter)
    patterns = [p for p in patterns if p]
    if not patterns:
        return names
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def list_entries() -> tuple[list[ZooEntry], dict[str, str]]:
    """Every usable entry (registry over catalog, sorted by name) and ``{name: why}`` for the
    malformed registry records that were skipped."""
    recover()
    good, bad = valid_entries(read_registry())
    merged = {**_catalog(), **good}
    return [merged[name] for name in sorted(merged)], bad


def model_info(name: str) -> ZooEntry:
    """The :class:`ZooEntry` for ``name`` (registry first, then catalog)."""
    validate_name(name)
    recover()
    registry = read_registry()
    if name in registry:
        problem = entry_problem(name, registry[name])
        if problem is not None:
            raise MedzooError(
                f"the zoo registry entry {name!r} is malformed ({problem}); register it again "
                f"with --overwrite, or remove it from {_registry_path()}"
            )
        return ZooEntry.from_dict(registry[name])
    if name in _catalog():
        return _catalog()[name]
    raise MedzooError(
        f"unknown zoo model {name!r}; known models: {', '.join(list_models())} (see medzoo list)"
    )


def base_model_hub_id(entry: ZooEntry) -> str | None:
    """A Hub id for ``base_model`` (the Hub rejects anything else in that field)."""
    base = entry.base_model
    if not base:
        return None
    if REPO_ID_RE.match(base):
        return base
    try:
        parent = model_info(base)
    except MedzooError:
        return None
    if parent.hub_repo_id:
        return parent.hub_repo_id
    return f"timm/{parent.timm_name}" if parent.timm_name else None


# --------------------------------------------------------------------------- recovery


def models_dir() -> Path:
    return medzoo_home() / "models"


def file_sha256(path: Path) -> str | None:
    """sha256 of ``path``, None when it is missing or unreadable."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def leftover_owner(file_name: str) -> str | None:
    """The entry name a leftover of an interrupted registration belongs to (None: not one)."""
    if not file_name.startswith("."):
        return None
    stem = file_name[1:]
    for mark in (NEW_MARK, OLD_MARK):
        if mark in stem:
            return stem.rsplit(mark, 1)[0]
    if stem.endswith(".tmp") and "." in stem[:-4]:  # mkdtemp folders of older medzoo versions
        return stem[:-4].rsplit(".", 1)[0]
    return None


def _leftovers() -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    try:
        children = list(os.scandir(models_dir()))
    except OSError:
        return found
    for child in children:
        owner = leftover_owner(child.name)
        if owner is not None:
            found.setdefault(owner, []).append(Path(child.path))
    return found


def _registry_temporaries() -> list[Path]:
    try:
        return [
            Path(e.path)
            for e in os.scandir(medzoo_home())
            if e.name.startswith(f".{REGISTRY_FILE}.") and e.name.endswith(".tmp")
        ]
    except OSError:
        return []


def recover() -> list[str]:
    """Finish or undo registrations a kill interrupted; returns the names it repaired.

    Cheap when there is nothing to do (one directory listing). Otherwise, under the registry
    lock, the registry decides: for each name with leftovers, the folder whose weights match the
    sha256 the registry holds becomes ``models/NAME`` (rolled forward or back), and every other
    leftover is removed. Leftovers of a name the registry does not hold are removed, except an
    aside folder when ``models/NAME`` itself is missing (it is put back).
    """
    if getattr(_HELD, "depth", 0):
        return []  # this thread holds the lock mid-transaction: its own folders are not leftovers
    if not _leftovers() and not _registry_temporaries():
        return []
    try:
        with registry_lock():
            return recover_locked()
    except (MedzooError, OSError):
        return []  # a lock, registry or read-only problem is reported by the command that needs it


def recover_locked() -> list[str]:
    """:func:`recover` for a caller that holds :func:`registry_lock`."""
    try:
        models = read_registry()
    except MedzooError:
        return []  # cannot tell old from new without the registry: touch nothing
    for tmp in _registry_temporaries():
        with contextlib.suppress(OSError):
            tmp.unlink()
    repaired = []
    for name, paths in _leftovers().items():
        folder = models_dir() / name
        record = models.get(name)
        recorded = record.get("sha256") if isinstance(record, dict) else None
        paths = sorted(paths, key=lambda p: OLD_MARK not in p.name)  # aside folders first
        if recorded and file_sha256(folder / "model.safetensors") != recorded:
            match = next(
                (p for p in paths if file_sha256(p / "model.safetensors") == recorded), None
            )
            if match is not None:
                if folder.exists():
                    aside = folder.with_name(f".{name}{OLD_MARK}recovered")
                    shutil.rmtree(aside, ignore_errors=True)
                    os.replace(folder, aside)
                    paths.append(aside)
                os.replace(match, folder)
                paths.remove(match)
        elif not recorded and not folder.exists():
            olds = [p for p in paths if OLD_MARK in p.name]
            if olds:
                os.replace(olds[0], folder)
                paths.remove(olds[0])
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)
        repaired.append(name)
    return repaired

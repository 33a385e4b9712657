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
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from medzoo.config import medzoo_home
from medzoo.errors import MedzooError
from medzoo.provenance import atomic_write_json
from medzoo.zoo.card import REPO_ID_RE
from medzoo.zoo.entry import ZooEntry, validate_name

REGISTRY_FILE = "registry.json"


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
    path = _registry_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise MedzooError(
            f"the zoo registry {path} is unreadable ({type(err).__name__}); move it aside and "
            "re-register your models (medzoo keeps their folders under models/)"
        ) from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise MedzooError(f"the zoo registry {path} has no 'models' table; move it aside")
    return models


@contextlib.contextmanager
def registry_lock() -> Iterator[None]:
    from filelock import FileLock

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
    try:
        yield
    finally:
        lock.release()


def write_registry(models: Mapping[str, dict[str, Any]]) -> None:
    atomic_write_json(_registry_path(), {"format": 1, "models": dict(sorted(models.items()))})


def list_models(filter: str | Sequence[str] = "") -> list[str]:
    """Names in the packaged catalog and the local registry, sorted.

    ``filter``: an fnmatch pattern or a list of them (any may match), as in
    ``timm.list_models(filter=...)``; empty lists every model.
    """
    import fnmatch

    names = sorted(set(_catalog()) | set(read_registry()))
    patterns = [filter] if isinstance(filter, str) else list(filter)
    patterns = [p for p in patterns if p]
    if not patterns:
        return names
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def model_info(name: str) -> ZooEntry:
    """The :class:`ZooEntry` for ``name`` (registry first, then catalog)."""
    validate_name(name)
    registry = read_registry()
    if name in registry:
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

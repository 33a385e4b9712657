"""The zoo index: the packaged catalog plus the local registry, and writing entries.

Names resolve in this order: the local registry (``$MEDZOO_HOME/registry.json``, written by
pre-training, evaluation and publishing), then the catalog packaged with medzoo
(``medzoo/zoo/catalog.toml``); a registry entry replaces a catalog entry of the same name whole.

Registry writes are read-modify-write under a file lock and land with an atomic rename, so
concurrent processes registering different names all succeed and a crash mid-write leaves the
previous file intact. Weights live in ``$MEDZOO_HOME/models/NAME/``, a folder timm itself loads
(``local-dir:``). ``medzoo.load`` and ``weights_status`` live in :mod:`medzoo.zoo.loading` and
stay importable from here.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from medzoo.config import medzoo_home
from medzoo.errors import MedzooError
from medzoo.provenance import atomic_write_json, atomic_write_text, provenance
from medzoo.zoo.entry import (
    CARD_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    ZooEntry,
    sha256_bytes,
    timm_config,
    validate_name,
)
from medzoo.zoo.loading import load, local_weights, weights_status

__all__ = [
    "entry_folder",
    "list_models",
    "load",
    "local_weights",
    "medzoo_home",
    "model_info",
    "register",
    "save_entry",
    "update_entry",
    "update_metrics",
    "validate_name",
    "weights_status",
]

REGISTRY_FILE = "registry.json"
_RESERVED = {CONFIG_FILE, WEIGHTS_FILE, CARD_FILE}  # save_entry writes these itself


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


def _read_registry() -> dict[str, dict[str, Any]]:
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
def _registry_lock() -> Iterator[None]:
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


def _write_registry(models: Mapping[str, dict[str, Any]]) -> None:
    atomic_write_json(_registry_path(), {"format": 1, "models": dict(sorted(models.items()))})


def register(entry: ZooEntry) -> ZooEntry:
    """Add or replace ``entry`` in the local registry (atomic, safe across processes)."""
    with _registry_lock():
        _register_locked(entry)
    return entry


def _register_locked(entry: ZooEntry) -> None:
    models = _read_registry()
    models[entry.name] = entry.to_dict()
    _write_registry(models)


def update_entry(name: str, **changes: Any) -> ZooEntry:
    """Change fields of ``name`` in the registry and in its folder's config.json and card."""
    with _registry_lock():
        models = _read_registry()
        current = ZooEntry.from_dict(models[name]) if name in models else model_info(name)
        if "metrics" in changes:  # evaluation adds to what earlier evaluations measured
            changes["metrics"] = _deep_merge(current.metrics, changes["metrics"])
        entry = current.replace(**changes)
        models[name] = entry.to_dict()
        _write_registry(models)
        _refresh_folder(entry)  # inside the lock: two updaters never interleave their files
    return entry


def _deep_merge(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(old)
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def update_metrics(name: str, metrics: Mapping[str, Any]) -> ZooEntry:
    """Merge evaluation metrics into ``name``'s entry (registry, config.json, model card).

    Nested dicts merge key by key, so evaluating one dataset or strategy keeps the others.
    Convention (what the card's model-index and ``medzoo list`` pick up): numeric leaves whose
    last key is a metric name, e.g. ``{"crc": {"probe": {"0.01": {"accuracy": 0.91,
    "accuracy_sd": 0.01}}}}``.
    """
    json.dumps(metrics)  # fail here, not halfway through a write, if it is not JSON-ready
    return update_entry(name, metrics=dict(metrics))


def list_models() -> list[str]:
    """Names of every model in the packaged catalog and the local registry, sorted."""
    return sorted(set(_catalog()) | set(_read_registry()))


def model_info(name: str) -> ZooEntry:
    """The :class:`ZooEntry` for ``name`` (registry first, then catalog)."""
    validate_name(name)
    registry = _read_registry()
    if name in registry:
        return ZooEntry.from_dict(registry[name])
    if name in _catalog():
        return _catalog()[name]
    raise MedzooError(
        f"unknown zoo model {name!r}; known models: {', '.join(list_models())} (see medzoo list)"
    )


# --------------------------------------------------------------------------- writing entries


def _num_features(arch: str) -> int:
    import timm
    import torch

    with torch.device("meta"):  # no memory, no init: only the attribute is wanted
        return int(timm.create_model(arch, pretrained=False, num_classes=0).num_features)


def _check_state(entry: ZooEntry, tensors: Mapping[str, Any]) -> int:
    """Refuse, before writing, a state dict timm could not load; returns num_features."""
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(
            entry.arch, pretrained=False, num_classes=entry.num_classes, in_chans=entry.in_chans
        )
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        raise MedzooError(
            f"the state dict for {entry.name} does not fit a {entry.arch} with in_chans="
            f"{entry.in_chans}, num_classes={entry.num_classes} (missing {missing[:2]}, unexpected "
            f"{unexpected[:2]}, wrong shape {wrong[:2]}): pass the bare backbone's state_dict()"
        )
    return int(model.num_features)


def _write_folder_files(folder: Path, entry: ZooEntry, num_features: int) -> None:
    from medzoo.zoo.hub import model_card_text

    config = timm_config(entry, num_features)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    (folder / CARD_FILE).write_text(model_card_text(entry, folder=folder), "utf-8")
    for path in folder.iterdir():  # on disk before the rename makes them visible
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def _refresh_folder(entry: ZooEntry) -> None:
    folder = entry_folder(entry.name)
    if not (folder / CONFIG_FILE).is_file():
        return
    config = timm_config(entry, _num_features(entry.arch))
    atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    from medzoo.zoo.hub import model_card_text

    atomic_write_text(folder / CARD_FILE, model_card_text(entry, folder=folder))


def save_entry(
    entry: ZooEntry,
    state_dict: Mapping[str, Any],
    extra_files: Mapping[str, str | bytes] | None = None,
) -> Path:
    """Write ``$MEDZOO_HOME/models/NAME/`` atomically and register the entry.

    The folder (model.safetensors, config.json, README.md and ``extra_files`` such as
    recipe.toml, provenance.json, train_log.jsonl) is built in a temporary folder beside the
    target, then renamed over it. The sha256 of model.safetensors, the versions, the git commit
    and the creation time are filled in here. Returns the entry folder.
    """
    import safetensors.torch
    import torch

    folder = entry_folder(entry.name)
    extra_files = dict(extra_files or {})
    for file_name in extra_files:
        if file_name in _RESERVED or Path(file_name).name != file_name or file_name.startswith("."):
            raise MedzooError(
                f"extra file {file_name!r} for {entry.name}: give a plain file name other than "
                f"{', '.join(sorted(_RESERVED))}"
            )
    tensors = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise MedzooError(f"state dict entry {key!r} is not a tensor: pass model.state_dict()")
        tensors[key] = value.detach().to("cpu").contiguous()
    num_features = _check_state(entry, tensors)
    data = safetensors.torch.save(tensors, metadata={"format": "pt"})
    info = provenance()
    entry = entry.replace(
        sha256=sha256_bytes(data),
        created=entry.created or info["created"],
        versions=entry.versions or info["versions"],
        git_commit=entry.git_commit or info["git_commit"],
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=folder.parent))
    try:
        (tmp / WEIGHTS_FILE).write_bytes(data)
        for file_name, content in extra_files.items():
            if isinstance(content, bytes):
                (tmp / file_name).write_bytes(content)
            else:
                (tmp / file_name).write_text(content, "utf-8")
        _write_folder_files(tmp, entry, num_features)
        with _registry_lock():  # folder and registry change together for other writers
            _swap_in(tmp, folder)
            _register_locked(entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _swap_in(tmp: Path, folder: Path) -> None:
    """Rename ``tmp`` over ``folder``; an existing folder is moved aside first, then removed."""
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:12]}")
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

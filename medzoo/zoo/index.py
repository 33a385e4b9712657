"""The zoo index: writing entries (weights folder + registry), and the zoo's public names.

:func:`save_entry` builds an entry folder (model.safetensors, config.json, the model card and
extra files) and registers it; :func:`register`, :func:`update_entry` and :func:`update_metrics`
change the registry. Registry writes are read-modify-write under a file lock and land with an
atomic rename, so concurrent processes registering different names all succeed and a crash
mid-write leaves the previous file intact. Weights live in ``$MEDZOO_HOME/models/NAME/``, a folder
timm itself loads (``local-dir:``).

Reading names lives in :mod:`medzoo.zoo.registry`, ``medzoo.load`` and ``weights_status`` in
:mod:`medzoo.zoo.loading`, the model card in :mod:`medzoo.zoo.card`; their public names stay
importable from here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medzoo.config import medzoo_home
from medzoo.errors import MedzooError
from medzoo.provenance import (
    atomic_path,
    atomic_write_text,
    disk_error,
    ensure_writable_dir,
    fsync_dir,
    provenance,
)
from medzoo.zoo.card import model_card_text
from medzoo.zoo.entry import (
    CARD_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    ZooEntry,
    num_features,
    sha256_bytes,
    timm_config,
    validate_name,
)
from medzoo.zoo.loading import load, local_weights, weights_status
from medzoo.zoo.registry import (
    NEW_MARK,
    OLD_MARK,
    REGISTRY_FILE,
    base_model_hub_id,
    entry_folder,
    list_entries,
    list_models,
    model_info,
    read_registry,
    recover,
    recover_locked,
    registry_lock,
    write_registry,
)

__all__ = [
    "REGISTRY_FILE",
    "entry_folder",
    "list_entries",
    "list_models",
    "load",
    "local_weights",
    "medzoo_home",
    "model_info",
    "check_can_register",
    "recover",
    "register",
    "save_entry",
    "update_entry",
    "update_metrics",
    "validate_name",
    "weights_status",
]

_RESERVED = {CONFIG_FILE, WEIGHTS_FILE, CARD_FILE}  # save_entry writes these itself


def register(entry: ZooEntry) -> ZooEntry:
    """Add or replace ``entry`` in the local registry (atomic, safe across processes)."""
    with registry_lock():
        recover_locked()
        _register_locked(entry)
    return entry


def _register_locked(entry: ZooEntry) -> None:
    models = read_registry()
    models[entry.name] = entry.to_dict()
    write_registry(models)


def update_entry(name: str, **changes: Any) -> ZooEntry:
    """Change fields of ``name`` in the registry and in its folder's config.json and card."""
    with registry_lock():
        recover_locked()
        models = read_registry()
        current = ZooEntry.from_dict(models[name]) if name in models else model_info(name)
        if "metrics" in changes:  # evaluation adds to what earlier evaluations measured
            changes["metrics"] = _deep_merge(current.metrics, changes["metrics"])
        entry = current.replace(**changes)
        models[name] = entry.to_dict()
        write_registry(models)
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


# --------------------------------------------------------------------------- writing entries


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
    config = timm_config(entry, num_features)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    (folder / CARD_FILE).write_text(
        model_card_text(entry, folder=folder, base_model=base_model_hub_id(entry)), "utf-8"
    )
    for path in folder.iterdir():  # on disk before the rename makes them visible
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def _refresh_folder(entry: ZooEntry) -> None:
    folder = entry_folder(entry.name)
    if not (folder / CONFIG_FILE).is_file():
        return
    config = timm_config(entry, num_features(entry.arch))
    atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    atomic_write_text(
        folder / CARD_FILE,
        model_card_text(entry, folder=folder, base_model=base_model_hub_id(entry)),
    )


# long: registration is one transaction whose order of steps is the guarantee (see the docstring)
def save_entry(
    entry: ZooEntry,
    state_dict: Mapping[str, Any],
    extra_files: Mapping[str, str | bytes] | None = None,
    *,
    overwrite: bool = True,
) -> Path:
    """Write ``$MEDZOO_HOME/models/NAME/`` and register the entry, as one transaction.

    The folder (model.safetensors, config.json, README.md and ``extra_files`` such as
    recipe.toml, provenance.json, train_log.jsonl) is checked and built first; the registry is
    read and validated before any entry folder is touched. Then, under the registry lock: the new
    folder is written beside the target as ``.NAME.new-XXXX`` and fsync'ed, the registry is
    written atomically with the new sha256 (the commit point), the old folder is moved aside,
    the new one moved in, and the old one deleted. A kill at any point leaves leftovers that
    :func:`medzoo.zoo.registry.recover` (run by every command that opens the registry) rolls
    forward or back by the sha256 the registry holds, so the entry is always the old one or the
    new one, loadable. ``overwrite=False`` refuses a name that already holds weights. The sha256
    of model.safetensors, the versions, the git commit and the creation time are filled in here.
    Returns the entry folder.
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
    recover()
    read_registry()  # an unreadable registry stops us here, before any folder changes
    if not overwrite:
        check_can_register(entry.name)
    ensure_writable_dir(folder.parent, what="the zoo")
    with registry_lock():  # folder and registry change together for other writers
        recover_locked()
        models = read_registry()
        if not overwrite:
            check_can_register(entry.name)
        new = folder.with_name(f".{entry.name}{NEW_MARK}{uuid.uuid4().hex[:12]}")
        try:
            new.parent.mkdir(parents=True, exist_ok=True)
            new.mkdir()
            (new / WEIGHTS_FILE).write_bytes(data)
            for file_name, content in extra_files.items():
                if isinstance(content, bytes):
                    (new / file_name).write_bytes(content)
                else:
                    (new / file_name).write_text(content, "utf-8")
            _write_folder_files(new, entry, num_features)
            fsync_dir(new)
            fsync_dir(new.parent)
        except BaseException as err:
            shutil.rmtree(new, ignore_errors=True)
            if isinstance(err, OSError):
                raise disk_error(err, f"writing the zoo entry {entry.name}") from None
            raise
        previous = dict(models)
        models[entry.name] = entry.to_dict()
        try:
            write_registry(models)  # the commit point
        except BaseException as err:
            shutil.rmtree(new, ignore_errors=True)
            if isinstance(err, OSError):
                raise disk_error(err, f"registering {entry.name}") from None
            raise
        try:
            _swap_in(new, folder)
        except OSError as err:  # undo: the registry goes back to the old sha256
            with contextlib.suppress(OSError):
                write_registry(previous)
            recover_locked()
            raise disk_error(err, f"moving the zoo entry {entry.name} into place") from None
    return folder


def check_can_register(name: str) -> None:
    """Refuse, in one line, to register ``name`` over weights that already exist."""
    folder = entry_folder(name)
    if (folder / WEIGHTS_FILE).exists() or name in read_registry():
        raise MedzooError(
            f"the zoo already holds a model named {name} ({folder}): add --overwrite to replace "
            "it, or choose another --name"
        )


def _swap_in(new: Path, folder: Path) -> None:
    """Rename ``new`` over ``folder``; an existing folder is moved aside first, then removed."""
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}{OLD_MARK}{uuid.uuid4().hex[:12]}")
        os.replace(folder, old)
    os.replace(new, folder)
    fsync_dir(folder.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- evaluation files


def attach_evaluation(name: str, run_dir: str | os.PathLike[str]) -> list[str]:
    """Copy an evaluation's ``summary.md`` and ``name``'s figures into its entry folder.

    The model card (and a Hub upload) then shows them. Figures are the run's label-fraction
    curves and the confusion matrices and t-SNE maps of this init. Entries without a local folder
    (timm or random weights) are left alone. Returns the file names copied.
    """
    folder = entry_folder(name)
    run_dir = Path(run_dir)
    if not (folder / CONFIG_FILE).is_file():
        return []
    figures = run_dir / "figures"
    chosen = [run_dir / "summary.md"] if (run_dir / "summary.md").is_file() else []
    if figures.is_dir():
        chosen += sorted(
            p
            for p in figures.glob("*.png")
            if p.name.startswith("curves-") or f"-{name}-" in p.name or p.stem.endswith(f"-{name}")
        )
    with registry_lock():
        for path in chosen:
            with atomic_path(folder / path.name) as tmp:
                tmp.write_bytes(path.read_bytes())
        _refresh_folder(model_info(name))
    return [p.name for p in chosen]

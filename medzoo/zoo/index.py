"""The zoo index: the packaged catalog plus the local registry, and ``medzoo.load``.

Names resolve in this order: the local registry (``$MEDZOO_HOME/registry.json``, written by
pre-training, evaluation and publishing), then the catalog packaged with medzoo
(``medzoo/zoo/catalog.toml``); a registry entry replaces a catalog entry of the same name whole.

Registry writes are read-modify-write under a file lock and land with an atomic rename, so
concurrent processes registering different names all succeed and a crash mid-write leaves the
previous file intact. Weights live in ``$MEDZOO_HOME/models/NAME/``, a folder timm itself loads
(``local-dir:``); their sha256 is checked before any byte is parsed.
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

from medzoo.errors import MedzooError
from medzoo.provenance import atomic_write_json, atomic_write_text, provenance
from medzoo.zoo.entry import (
    CARD_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    ZooEntry,
    read_weights,
    refuse_pickles,
    sha256_bytes,
    timm_config,
    validate_name,
)

__all__ = [
    "entry_folder",
    "list_models",
    "load",
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


def medzoo_home() -> Path:
    """``$MEDZOO_HOME``, else ``~/.cache/medzoo``."""
    return Path(os.environ.get("MEDZOO_HOME") or Path.home() / ".cache" / "medzoo").expanduser()


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


def weights_status(entry: ZooEntry) -> str:
    """Where ``load`` would get the weights: local, hub, timm, random init, or the make target."""
    if (entry_folder(entry.name) / WEIGHTS_FILE).is_file():
        return "local"
    if entry.hub_repo_id:
        return f"hub ({entry.hub_repo_id})"
    if entry.timm_name:
        return "timm (cached)" if _timm_weights_cached(entry.timm_name) else "timm (download)"
    if entry.method == "random":
        return "random init"
    return f"no ({entry.make_target})" if entry.make_target else "no"


def _timm_weights_cached(timm_name: str) -> bool:
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        hub_id = timm.models.get_pretrained_cfg(timm_name).hf_hub_id
        return bool(hub_id) and isinstance(try_to_load_from_cache(hub_id, WEIGHTS_FILE), str)
    except Exception:  # a status column must never fail the listing
        return False


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


# --------------------------------------------------------------------------- loading


def load(
    name: str,
    num_classes: int | None = None,
    pretrained: bool = True,
    device: Any = None,
    *,
    in_chans: int | None = None,
) -> Any:
    """A timm model in eval mode with ``name``'s weights, their sha256 checked before loading.

    ``name`` is a zoo name, or ``hf-hub:ORG/NAME`` / ``local-dir:PATH`` passed through to
    ``timm.create_model(..., pretrained=True)`` (safetensors only). ``num_classes`` different from
    the entry's puts a new randomly initialised head on top; ``in_chans`` different from the
    entry's adapts conv1 the way timm does (summing RGB filters for one channel).
    """
    if name.startswith(("hf-hub:", "local-dir:")):
        model = _load_timm_source(name, num_classes, pretrained, in_chans)
    else:
        model = _load_entry(model_info(name), num_classes, pretrained, in_chans)
    if device is not None:
        model = model.to(device)
    return model.eval()


def local_weights(entry: ZooEntry) -> dict[str, Any] | None:
    """The entry's local state dict (sha256 checked), or None when it has no local folder."""
    folder = entry_folder(entry.name)
    if not folder.is_dir():
        return None
    refuse_pickles(folder)
    if not entry.sha256:
        raise MedzooError(
            f"zoo entry {entry.name} records no sha256 for {folder / WEIGHTS_FILE}, so it cannot "
            "be verified; re-save it with medzoo.zoo.index.save_entry"
        )
    return read_weights(folder / WEIGHTS_FILE, entry.sha256, what=entry.name)


def _load_entry(
    entry: ZooEntry, num_classes: int | None, pretrained: bool, in_chans: int | None
) -> Any:
    import torch

    if not pretrained:
        return _create(entry, num_classes, in_chans)
    state = local_weights(entry)
    if state is None and entry.hub_repo_id:
        state = _hub_weights(entry)
    if state is not None:
        return _create(entry, num_classes, in_chans, state)
    if entry.timm_name:
        return _timm_pretrained(entry, num_classes, in_chans)
    if entry.method == "random":
        with torch.random.fork_rng(devices=[]):  # the same "random" backbone every time
            torch.manual_seed(0)
            model = _create(entry, None, in_chans)
        if num_classes is not None and num_classes != entry.num_classes:
            # a new head after the seeded backbone, so the backbone is the same for any head
            model.reset_classifier(int(num_classes))
            model.pretrained_cfg["num_classes"] = int(num_classes)
        return model
    how = f"run `{entry.make_target}` to train it" if entry.make_target else "train or publish it"
    raise MedzooError(f"{entry.name} has no weights on this machine and is not published: {how}")


def _adapt_stats(values: tuple[float, ...], in_chans: int) -> tuple[float, ...]:
    if len(values) == in_chans:
        return values
    return (sum(values) / len(values),) * in_chans


def _create(
    entry: ZooEntry,
    num_classes: int | None,
    in_chans: int | None,
    state: dict[str, Any] | None = None,
) -> Any:
    """A timm model whose pretrained_cfg describes the entry, with ``state`` loaded."""
    import timm

    classes = entry.num_classes if num_classes is None else int(num_classes)
    chans = entry.in_chans if in_chans is None else int(in_chans)
    same_head = classes == entry.num_classes
    overlay = {
        "input_size": (chans, *entry.input_size[1:]),
        "mean": _adapt_stats(entry.mean, chans),
        "std": _adapt_stats(entry.std, chans),
        "interpolation": entry.interpolation,
        "crop_pct": entry.crop_pct,
        "num_classes": classes,
        "label_names": entry.label_names if same_head and entry.label_names else None,
        "license": entry.license,
        "hf_hub_id": entry.hub_repo_id,
        "url": None,
        "tag": None,
        "source": "medzoo",
    }
    try:
        model = timm.create_model(
            entry.arch,
            pretrained=False,
            num_classes=classes,
            in_chans=chans,
            pretrained_cfg_overlay=overlay,
        )
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise MedzooError(
                f"zoo entry {entry.name}: unknown timm architecture {entry.arch!r}"
            ) from None
        raise
    if state is None:
        return model
    state = dict(state)
    head = model.pretrained_cfg.get("classifier") or "fc"
    head_keys = {f"{head}.weight", f"{head}.bias"}
    if not same_head:  # a new head: drop the old one, and only it may be missing
        for key in head_keys:
            state.pop(key, None)
    first_conv = f"{model.pretrained_cfg.get('first_conv') or 'conv1'}.weight"
    if chans != entry.in_chans and first_conv in state:
        from timm.models import adapt_input_conv

        try:
            state[first_conv] = adapt_input_conv(
                chans, state[first_conv], base_chans=entry.in_chans
            )
        except NotImplementedError:
            raise MedzooError(
                f"{entry.name} has {entry.in_chans}-channel weights that cannot be adapted to "
                f"in_chans={chans}"
            ) from None
    try:
        result = model.load_state_dict(state, strict=same_head)
    except RuntimeError as err:
        raise MedzooError(
            f"the weights of {entry.name} do not fit a {entry.arch} with in_chans={chans}, "
            f"num_classes={classes}: {str(err).splitlines()[0]}"
        ) from None
    if set(result.missing_keys) - head_keys or result.unexpected_keys:
        raise MedzooError(
            f"the weights of {entry.name} do not fit a {entry.arch}: missing "
            f"{sorted(set(result.missing_keys) - head_keys)[:3]}, unexpected {result.unexpected_keys[:3]}"
        )
    return model


def _is_network_error(err: BaseException) -> bool:
    module = type(err).__module__.split(".")[0]
    return isinstance(err, OSError) or module.startswith(
        ("huggingface_hub", "httpx", "requests", "urllib3")
    )


def _hub_unreachable() -> bool:
    """True when HF_HUB_OFFLINE is set or the Hub endpoint does not accept a connection.

    Asked before a download so that an offline machine gets its one-line error at once instead
    of after huggingface_hub's retries with backoff (half a minute per file).
    """
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "", port), timeout=5).close()
    except OSError:
        return True
    return False


def _timm_pretrained(entry: ZooEntry, num_classes: int | None, in_chans: int | None) -> Any:
    import timm

    classes = entry.num_classes if num_classes is None else int(num_classes)
    chans = entry.in_chans if in_chans is None else int(in_chans)
    try:
        if not _timm_weights_cached(entry.timm_name) and _hub_unreachable():
            raise OSError("offline")
        return timm.create_model(
            entry.timm_name, pretrained=True, num_classes=classes, in_chans=chans
        )
    except Exception as err:
        if not _is_network_error(err):
            raise
        raise MedzooError(
            f"ImageNet weights for {entry.name} (timm {entry.timm_name}) are not in the local "
            "Hugging Face cache and the Hub is unreachable: run once online, or copy a Hugging "
            "Face cache that has them into HF_HOME"
        ) from None


def _hub_weights(entry: ZooEntry) -> dict[str, Any]:
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(
            entry.hub_repo_id,
            WEIGHTS_FILE,
            revision=entry.hub_revision,
            local_files_only=_hub_unreachable(),
        )
    except Exception as err:
        if not _is_network_error(err):
            raise
        alt = f", or run `{entry.make_target}` to train it here" if entry.make_target else ""
        raise MedzooError(
            f"the weights of {entry.name} ({entry.hub_repo_id}) are not in the local Hugging Face "
            f"cache and the Hub is unreachable ({type(err).__name__}): run once online{alt}"
        ) from None
    return read_weights(path, entry.sha256, what=entry.name)


def _load_timm_source(
    name: str, num_classes: int | None, pretrained: bool, in_chans: int | None
) -> Any:
    """``hf-hub:`` / ``local-dir:`` through timm, after medzoo's own safety checks."""
    import timm

    source, _, ident = name.partition(":")
    if pretrained:
        folder = _source_folder(source, ident)
        refuse_pickles(folder)
        try:
            config = json.loads((folder / CONFIG_FILE).read_text("utf-8"))
        except (OSError, ValueError) as err:
            raise MedzooError(
                f"cannot read {folder / CONFIG_FILE} ({type(err).__name__})"
            ) from None
        expected = (config.get("medzoo") or {}).get("sha256") if isinstance(config, dict) else None
        read_weights(folder / WEIGHTS_FILE, expected, what=name)  # verified before timm reads it
    kwargs = {
        k: v for k, v in (("num_classes", num_classes), ("in_chans", in_chans)) if v is not None
    }
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as err:
        if not _is_network_error(err):
            raise
        raise MedzooError(
            f"cannot load {name} ({type(err).__name__}): the Hub is unreachable and it is not in "
            "the local Hugging Face cache; run once online"
        ) from None


def _source_folder(source: str, ident: str) -> Path:
    """The local folder holding config.json + model.safetensors for a timm source name."""
    if source == "local-dir":
        folder = Path(ident).expanduser()
        if not (folder / CONFIG_FILE).is_file():
            raise MedzooError(f"no {CONFIG_FILE} in {folder}: not a timm model folder")
        return folder
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    repo_id, _, revision = ident.partition("@")
    try:
        offline = _hub_unreachable()
        config = hf_hub_download(
            repo_id, CONFIG_FILE, revision=revision or None, local_files_only=offline
        )
        hf_hub_download(repo_id, WEIGHTS_FILE, revision=revision or None, local_files_only=offline)
    except RemoteEntryNotFoundError:
        raise MedzooError(
            f"{repo_id} has no {CONFIG_FILE} + {WEIGHTS_FILE}: medzoo loads weights only from "
            "safetensors (pickle files can run code)"
        ) from None
    except Exception as err:
        if not _is_network_error(err):
            raise
        raise MedzooError(
            f"cannot load hf-hub:{ident} ({type(err).__name__}): the Hub is unreachable and it is "
            "not in the local Hugging Face cache; run once online"
        ) from None
    return Path(config).parent

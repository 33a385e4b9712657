"""Loading zoo models: ``medzoo.load``, where the weights come from, and their checks.

A zoo name resolves through the registry (:mod:`medzoo.zoo.registry`) to a :class:`ZooEntry`; its
weights come from the local entry folder, else the Hugging Face Hub (``hub_repo_id``), else timm's
own pretrained weights (``timm_name``), else a seeded random init (``method = "random"``). The
sha256 of local and Hub weights is checked before any byte is parsed, and only safetensors are
read. ``hf-hub:`` / ``local-dir:`` names go to timm after the same checks. An unreachable Hub is
detected before a download, so an offline machine gets a one-line error at once.

Names resolve through :mod:`medzoo.zoo.registry`; :mod:`medzoo.zoo.index` re-exports ``load``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medzoo.errors import MedzooError
from medzoo.zoo.entry import (
    CONFIG_FILE,
    SOURCE_KEYS,
    WEIGHTS_FILE,
    ZooEntry,
    pretrained_cfg,
    read_weights,
    refuse_pickles,
)
from medzoo.zoo.registry import (
    entry_folder,
    model_info,
    read_registry,
    recover_locked,
    registry_lock,
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


def load(
    name: str,
    num_classes: int | None = None,
    pretrained: bool = True,
    device: Any = None,
    *,
    in_chans: int | None = None,
    seed: int | None = None,
) -> Any:
    """A timm model in eval mode with ``name``'s weights, their sha256 checked before loading.

    ``name`` is a zoo name, or ``hf-hub:ORG/NAME`` / ``local-dir:PATH`` passed through to
    ``timm.create_model(..., pretrained=True)`` (safetensors only). ``num_classes`` different from
    the entry's puts a new randomly initialised head on top; ``in_chans`` different from the
    entry's adapts conv1 the way timm does (summing RGB filters for one channel). ``seed`` picks
    the draw of a random-init entry (``method = "random"``, default 0); other entries have fixed
    weights and refuse a seed.
    """
    if name.startswith(("hf-hub:", "local-dir:")):
        if seed is not None:
            raise MedzooError(f"seed= applies to random-init zoo entries, not to {name}")
        model = _load_timm_source(name, num_classes, pretrained, in_chans)
    else:
        model = _load_entry(model_info(name), num_classes, pretrained, in_chans, seed)
    if device is not None:
        model = model.to(device)
    return model.eval()


def local_weights(entry: ZooEntry) -> dict[str, Any] | None:
    """The entry's local state dict (sha256 checked), or None when it has no local folder.

    A registration of the same name may swap the folder between reading the registry and
    reading the weights; a missing folder or a sha256 mismatch of a registered entry is therefore
    asked again under the registry lock (after any running registration and a recovery), so a
    reader gets the old or the new model, never a false mismatch.
    """
    try:
        state = _local_weights(entry)
    except MedzooError:
        if not _registered_locally(entry):
            raise
        state = None
    if state is not None or not _registered_locally(entry):
        return state
    with registry_lock():
        recover_locked()
        record = read_registry().get(entry.name)
        fresh = ZooEntry.from_dict(record) if isinstance(record, dict) else entry
        return _local_weights(fresh)


def _registered_locally(entry: ZooEntry) -> bool:
    try:
        record = read_registry().get(entry.name)
    except MedzooError:
        return False
    return isinstance(record, dict) and bool(record.get("sha256"))


def _local_weights(entry: ZooEntry) -> dict[str, Any] | None:
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
    entry: ZooEntry,
    num_classes: int | None,
    pretrained: bool,
    in_chans: int | None,
    seed: int | None = None,
) -> Any:
    if entry.method == "random":
        return _random_init(entry, num_classes, in_chans, 0 if seed is None else int(seed))
    if seed is not None:
        raise MedzooError(
            f"seed= applies to random-init zoo entries; {entry.name} has fixed weights"
        )
    if not pretrained:
        return build_model(entry, num_classes, in_chans)
    state = local_weights(entry)
    if state is None and entry.hub_repo_id:
        state = _hub_weights(entry)
    if state is not None:
        return build_model(entry, num_classes, in_chans, state)
    if entry.timm_name:
        return _timm_pretrained(entry, num_classes, in_chans)
    how = f"run `{entry.make_target}` to train it" if entry.make_target else "train or publish it"
    raise MedzooError(f"{entry.name} has no weights on this machine and is not published: {how}")


def _random_init(entry: ZooEntry, num_classes: int | None, in_chans: int | None, seed: int) -> Any:
    """A seeded random backbone with live residual branches (a real random-features baseline).

    timm's default ``zero_init_last=True`` zeroes the last BatchNorm weight of every residual
    block, so in eval mode each block is the identity and the "random features" would be conv1
    plus three 1x1 shortcuts, the same for every seed. ``zero_init_last=False`` keeps timm's
    (Kaiming) init of the whole network; the seed draws it, so seeds carry init variance.
    """
    import torch

    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left untouched
        torch.manual_seed(seed)
        model = build_model(entry, None, in_chans, zero_init_last=False)
    if num_classes is not None and num_classes != entry.num_classes:
        # a new head after the seeded backbone, so the backbone is the same for any head
        model.reset_classifier(int(num_classes))
        model.pretrained_cfg["num_classes"] = int(num_classes)
    return model


# long: timm construction plus the state-dict adaptations (head, conv1), each a short branch
def build_model(
    entry: ZooEntry,
    num_classes: int | None,
    in_chans: int | None,
    state: dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> Any:
    """A timm model built from ``entry``: its own ``pretrained_cfg``, ``state`` loaded if given.

    ``num_classes`` / ``in_chans`` different from the entry's put a new head on / adapt conv1.
    """
    import timm

    classes = entry.num_classes if num_classes is None else int(num_classes)
    chans = entry.in_chans if in_chans is None else int(in_chans)
    same_head = classes == entry.num_classes
    # the entry's own PretrainedCfg, whole: nothing inherited from timm's default tag
    cfg = pretrained_cfg(entry, in_chans=chans, num_classes=classes)
    try:
        model = timm.create_model(
            entry.arch,
            pretrained=False,
            num_classes=classes,
            in_chans=chans,
            pretrained_cfg=cfg,
            **model_kwargs,
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
    """True in huggingface_hub's offline mode or when the Hub endpoint refuses a connection.

    Asked before a download so that an offline machine gets its one-line error at once instead
    of after huggingface_hub's retries with backoff (half a minute per file).
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.is_offline_mode():  # HF_HUB_OFFLINE, as huggingface_hub itself reads it
        return True
    endpoint = urlparse(constants.ENDPOINT)
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
        # timm's weights, the entry's preprocessing and provenance (source keys stay timm's)
        overlay = {
            key: value
            for key, value in pretrained_cfg(entry, in_chans=chans, num_classes=classes).items()
            if key not in SOURCE_KEYS
        }
        return timm.create_model(
            entry.timm_name,
            pretrained=True,
            num_classes=classes,
            in_chans=chans,
            pretrained_cfg_overlay=overlay,
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

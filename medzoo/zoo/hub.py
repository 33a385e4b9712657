"""Publishing to the Hugging Face Hub: save the folder offline, then upload it unchanged.

As in timm (``save_for_hf`` kept apart from ``push_to_hf_hub``), :func:`save_for_hub` writes
exactly the folder that would be uploaded (config.json, model.safetensors, the model card and the
evaluation's images and metrics) and :func:`push_to_hub` only uploads such a folder. The model
card is built with huggingface_hub's ``ModelCard`` / ``ModelCardData``. huggingface_hub is
imported inside the functions that need it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from medzoo.errors import MedzooError
from medzoo.provenance import ensure_writable_dir
from medzoo.zoo.card import PUBLISHED_FILES, PUBLISHED_PATTERNS, REPO_ID_RE, model_card_text
from medzoo.zoo.entry import (
    CARD_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    model_stats,
    num_features,
    read_weights,
    timm_config,
)
from medzoo.zoo.registry import base_model_hub_id, entry_folder, model_info

# --------------------------------------------------------------------------- save and push


def save_for_hub(name: str, out_dir: str | Path, *, repo_id: str | None = None) -> Path:
    """Write exactly the folder :func:`push_to_hub` uploads for ``name`` into ``out_dir``.

    ``out_dir`` must not exist or be empty. The weights are sha256-checked first, and the folder
    is built beside ``out_dir`` and renamed into place, so a failure leaves nothing behind.
    """
    from medzoo.zoo.loading import weights_status

    entry = model_info(name)
    source = entry_folder(name)
    if not (source / WEIGHTS_FILE).is_file():
        raise MedzooError(
            f"nothing to publish for {name}: no local weights ({weights_status(entry)}); "
            "only models trained or saved on this machine can be pushed"
        )
    if repo_id is not None:
        check_repo_id(repo_id)
    out_dir = Path(out_dir)
    if out_dir.is_symlink():
        raise MedzooError(f"{out_dir} is a symbolic link; give a new folder path, not a link")
    ensure_writable_dir(out_dir, what="the dry-run folder")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise MedzooError(f"{out_dir} exists and is not an empty folder; choose a new folder")
    read_weights(source / WEIGHTS_FILE, entry.sha256, what=name)  # never publish bad weights
    entry = entry.replace(hub_repo_id=repo_id or entry.hub_repo_id)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        shutil.copy2(source / WEIGHTS_FILE, tmp / WEIGHTS_FILE)
        for path in sorted(source.iterdir()):
            if path.is_file() and (
                path.name in PUBLISHED_FILES or any(path.match(p) for p in PUBLISHED_PATTERNS)
            ):
                shutil.copy2(path, tmp / path.name)
        if entry.metrics:
            (tmp / "metrics.json").write_text(json.dumps(entry.metrics, indent=2) + "\n", "utf-8")
        config = timm_config(entry, _num_features_of(source))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", "utf-8")
        card = model_card_text(
            entry,
            repo_id=repo_id,
            folder=tmp,
            base_model=base_model_hub_id(entry),
            stats=model_stats(entry),
            dataset_licenses=dataset_licenses(entry.datasets),
        )
        (tmp / CARD_FILE).write_text(card, "utf-8")
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def dataset_licenses(
    datasets: tuple[str, ...] | list[str], root: str | Path | None = None
) -> dict[str, str]:
    """Each training dataset's licence from its ``info.yaml`` under the data root, where present.

    The data root is ``root``, else ``MEDZOO_DATA`` / ``data/mimeta``; datasets not on this
    machine are left out (the card then names them without a licence).
    """
    from medzoo.config import data_root
    from medzoo.data.mimeta import read_info

    base = data_root(root)
    out: dict[str, str] = {}
    for dataset in datasets:
        if not (base / dataset / "info.yaml").is_file():
            continue
        try:
            licence = read_info(base, dataset).get("license")
        except MedzooError:
            continue
        if licence:
            out[dataset] = str(licence)
    return out


def _num_features_of(folder: Path) -> int:
    try:
        return int(json.loads((folder / CONFIG_FILE).read_text("utf-8"))["num_features"])
    except (OSError, ValueError, KeyError, TypeError):
        return num_features(model_info(folder.name).arch)


def check_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or not REPO_ID_RE.match(repo_id) or ".." in repo_id:
        raise MedzooError(
            f"invalid Hub repository id {repo_id!r}: use ORG/NAME, e.g. my-lab/bt-crc-r18"
        )
    return repo_id


def push_to_hub(
    name: str,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload ``name``'s :func:`save_for_hub` folder to ``repo_id``; returns the commit URL.

    The repository is created if needed (``exist_ok``), a ``revision`` branch too. On success
    the entry records ``hub_repo_id`` and the uploaded commit as ``hub_revision``, so
    ``medzoo.load(name)`` on another machine fetches exactly these weights. The token comes from
    ``token`` or huggingface_hub's login / ``HF_TOKEN``, and is never printed.
    """
    from huggingface_hub import HfApi, get_token

    from medzoo import __version__
    from medzoo.zoo.index import update_entry

    check_repo_id(repo_id)
    token = token or get_token()
    if not token:
        raise MedzooError(
            "no Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again"
        )
    with tempfile.TemporaryDirectory(prefix="medzoo-push-") as tmp:
        folder = save_for_hub(name, Path(tmp) / name, repo_id=repo_id)
        api = HfApi(token=token, library_name="medzoo", library_version=__version__)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                revision=revision,
                commit_message=commit_message or f"Upload {name} with medzoo {__version__}",
            )
        except Exception as err:
            message = (str(err).splitlines() or [""])[0].replace(token, "***")
            raise MedzooError(
                f"upload of {name} to {repo_id} failed ({type(err).__name__}: {message}); nothing "
                "was recorded, fix the cause and push again"
            ) from None
    commit = getattr(info, "oid", None) or revision or "main"
    update_entry(name, hub_repo_id=repo_id, hub_revision=commit)
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}")

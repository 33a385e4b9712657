"""Download MIMeta/MedIMeta datasets from where they are published, into a MIMeta root.

MedIMeta (the later name of MIMeta; same on-disk format) is published on Zenodo, record
7884735 (DOI 10.5281/zenodo.7884735, the ``download_url`` of every v1.0 ``info.yaml``), with the
project page https://www.woerner.eu/projects/medimeta/. There is no official Hugging Face Hub
copy; a Hub dataset repository (a mirror of your own, say) works as a source too.

Sources (``--source``):

* none: the Zenodo record. Its file list (names, sizes, md5 checksums) comes from the Zenodo
  REST API, and the archive whose name starts with the dataset id is downloaded.
* ``zenodo:RECORD``: another Zenodo record laid out the same way.
* ``hf:ORG/NAME``: a Hub dataset repository holding ``<id>/...`` folders or ``<id>.zip``
  archives, through ``huggingface_hub``.
* an ``http(s)://`` URL: of the archive itself (one dataset), or a base URL to which
  ``<id>.zip`` is appended, or a template containing ``{id}``.
* a local archive or folder (what you downloaded by hand).

Downloads go to ``ROOT/.downloads/<file>.part`` and resume from there with an HTTP Range
request; a known checksum is verified; the archive is unpacked into a temporary folder in the
root and renamed to ``ROOT/<id>`` only once it holds a readable ``info.yaml``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medzoo.errors import DISK_ERRNOS, MedzooError, disk_error
from medzoo.provenance import ensure_writable_dir

ZENODO_RECORD = "7884735"
PROJECT_PAGE = "https://www.woerner.eu/projects/medimeta/"
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_CHUNK = 1 << 20
_TIMEOUT = 60


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file: where it is, its name, and (if known) size and checksum."""

    url: str
    name: str
    size: int | None = None
    checksum: str | None = None  # "md5:<hex>" or "sha256:<hex>"


class _Unreachable(Exception):
    """The network (or the Hub) could not be reached; becomes a one-line MedzooError."""


# --------------------------------------------------------------------------------- sources


def _urlopen(request: urllib.request.Request | str, timeout: float = _TIMEOUT):
    """The one place that opens URLs (tests replace it)."""
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) only


def _zenodo_files(record: str) -> list[RemoteFile]:
    """The files of a Zenodo record, from its REST API (both the legacy and the RDM shape)."""
    api = f"https://zenodo.org/api/records/{record}"
    try:
        with _urlopen(urllib.request.Request(api, headers={"Accept": "application/json"})) as reply:
            payload = json.loads(reply.read().decode("utf-8"))
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise _Unreachable(f"{api}: {getattr(err, 'reason', err)}") from None
    entries = payload.get("files", [])
    if isinstance(entries, dict):  # InvenioRDM: {"entries": {key: {...}}}
        entries = list(entries.get("entries", {}).values())
    files = []
    for entry in entries:
        name = entry.get("key") or entry.get("filename")
        links = entry.get("links", {})
        url = links.get("content") or links.get("self") or links.get("download")
        if not name:
            continue
        if not url:
            url = f"https://zenodo.org/records/{record}/files/{name}?download=1"
        files.append(RemoteFile(url, name, entry.get("size"), entry.get("checksum")))
    return files


def _archive_for(dataset_id: str, files: Iterable[RemoteFile]) -> RemoteFile | None:
    """The archive named after ``dataset_id`` (``crc.zip``, ``organs_axial.tar.gz``, ...)."""
    for remote in files:
        lower = remote.name.lower()
        for suffix in ARCHIVE_SUFFIXES:
            if lower.endswith(suffix) and lower[: -len(suffix)] == dataset_id.lower():
                return remote
    return None


def _url_for(source: str, dataset_id: str, count: int) -> RemoteFile:
    if "{id}" in source:
        url = source.replace("{id}", dataset_id)
    elif source.lower().split("?")[0].endswith(ARCHIVE_SUFFIXES):
        if count > 1:
            raise MedzooError(
                f"--source {source} is one archive but {count} datasets were asked for; "
                "fetch one dataset per archive URL, or give a base URL or a {id} template"
            )
        url = source
    else:
        url = f"{source.rstrip('/')}/{dataset_id}.zip"
    name = url.split("?")[0].rstrip("/").split("/")[-1] or f"{dataset_id}.zip"
    return RemoteFile(url, name)


def describe_source(source: str | None) -> str:
    if source is None:
        return f"Zenodo record {ZENODO_RECORD} ({PROJECT_PAGE})"
    return source


# ------------------------------------------------------------------------------- download


def _verify(path: Path, checksum: str | None) -> None:
    if not checksum or ":" not in checksum:
        return
    algorithm, expected = checksum.split(":", 1)
    if algorithm not in hashlib.algorithms_available:
        return
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    if digest.hexdigest() != expected.lower():
        path.unlink()
        raise MedzooError(
            f"{path.name}: {algorithm} checksum {digest.hexdigest()} does not match the published "
            f"{expected}; the download was corrupted and is removed, run the command again"
        )


def download(remote: RemoteFile, folder: Path) -> Path:
    """Download ``remote`` into ``folder`` (resuming a ``.part`` file); returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / remote.name
    if target.is_file() and (remote.size is None or target.stat().st_size == remote.size):
        _verify(target, remote.checksum)
        if target.is_file():
            return target
    part = folder / f"{remote.name}.part"
    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "medzoo"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        with _urlopen(urllib.request.Request(remote.url, headers=headers)) as reply:
            status = getattr(reply, "status", 200)
            if have and status != 206:  # the server ignored the Range header: start over
                have = 0
            total = remote.size
            length = reply.headers.get("Content-Length") if hasattr(reply, "headers") else None
            if total is None and length is not None:
                total = have + int(length)
            _copy_with_progress(reply, part, have, total, remote.name)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # range past the end: the part file is already complete
            pass
        else:
            raise _Unreachable(f"{remote.url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        if not isinstance(err, urllib.error.URLError) and err.errno in DISK_ERRNOS:
            # our side: a full or read-only disk under the .part file, not an unreachable source
            raise disk_error(
                err, f"downloading {remote.name} into {part} (kept to resume)"
            ) from None
        raise _Unreachable(f"{remote.url}: {getattr(err, 'reason', err)}") from None
    if remote.size is not None and part.stat().st_size != remote.size:
        raise _Unreachable(
            f"{remote.url}: got {part.stat().st_size} of {remote.size} bytes (kept to resume)"
        )
    os.replace(part, target)
    _verify(target, remote.checksum)
    return target


def _copy_with_progress(reply, part: Path, have: int, total: int | None, name: str) -> None:
    from tqdm.auto import tqdm

    mode = "ab" if have else "wb"
    with (
        open(part, mode) as handle,
        tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=name, disable=None) as bar,
    ):
        for block in iter(lambda: reply.read(_CHUNK), b""):
            handle.write(block)
            bar.update(len(block))


# ---------------------------------------------------------------------------------- unpack


def _safe_members_zip(archive: zipfile.ZipFile, into: Path) -> None:
    base = into.resolve()
    for member in archive.namelist():
        if not (into / member).resolve().is_relative_to(base):
            raise MedzooError(
                f"archive member {member!r} escapes the target folder; not unpacking it"
            )
    archive.extractall(into)


def _unpack(archive: Path, into: Path) -> None:
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as handle:
                _safe_members_zip(handle, into)
        else:
            with tarfile.open(archive) as handle:
                if hasattr(tarfile, "data_filter"):  # refuses links and paths out of ``into``
                    handle.extractall(into, filter="data")
                else:  # pragma: no cover - Python < 3.10.12
                    for member in handle.getmembers():
                        if not (into / member.name).resolve().is_relative_to(into.resolve()):
                            raise MedzooError(
                                f"archive member {member.name!r} escapes the target folder"
                            )
                    handle.extractall(into)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
        raise MedzooError(
            f"{archive} is not a readable archive ({err}); delete it and fetch again"
        ) from None


def _find_dataset(folder: Path, dataset_id: str) -> Path:
    """The folder inside an unpacked archive that holds ``dataset_id``'s info.yaml."""
    import yaml

    candidates = sorted(folder.rglob("info.yaml"), key=lambda p: len(p.parts))
    for info_path in candidates:
        try:
            info = yaml.safe_load(info_path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            continue
        if isinstance(info, dict) and str(info.get("id")) == dataset_id:
            return info_path.parent
    if len(candidates) == 1:
        return candidates[0].parent
    raise MedzooError(
        f"the download for {dataset_id} holds no info.yaml with id '{dataset_id}'; "
        "check the source, or unpack it by hand into ROOT/" + dataset_id
    )


def _install(source_folder: Path, root: Path, dataset_id: str, move: bool) -> Path:
    """Copy (or move) a dataset folder to ``root/<id>`` atomically."""
    target = root / dataset_id
    staging = Path(tempfile.mkdtemp(prefix=f".{dataset_id}.fetch-", dir=root))
    try:
        placed = staging / dataset_id
        if move:
            os.replace(source_folder, placed)
        else:
            shutil.copytree(source_folder, placed)
        if target.exists():
            shutil.rmtree(target)
        os.replace(placed, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _install_archive(archive: Path, root: Path, dataset_id: str) -> Path:
    unpack_dir = Path(tempfile.mkdtemp(prefix=f".{dataset_id}.unpack-", dir=root))
    try:
        _unpack(archive, unpack_dir)
        return _install(_find_dataset(unpack_dir, dataset_id), root, dataset_id, move=True)
    finally:
        shutil.rmtree(unpack_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------ hub


def _from_hub(repo_id: str, dataset_id: str, root: Path) -> Path:
    """Fetch ``<id>/`` or ``<id>.<archive>`` from a Hub dataset repository."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - a declared dependency
        raise MedzooError("huggingface_hub is not installed; pip install huggingface_hub") from None
    patterns = [f"{dataset_id}/*", f"{dataset_id}/**"] + [
        f"{dataset_id}{s}" for s in ARCHIVE_SUFFIXES
    ]
    try:
        local = Path(
            snapshot_download(
                repo_id=repo_id,
                repo_type="dataset",
                allow_patterns=patterns,
                cache_dir=root / ".downloads" / "hub",
            )
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _Unreachable(f"hf:{repo_id}: {reason}") from None
    if (local / dataset_id).is_dir():
        return _install(_find_dataset(local / dataset_id, dataset_id), root, dataset_id, move=False)
    for suffix in ARCHIVE_SUFFIXES:
        if (local / f"{dataset_id}{suffix}").is_file():
            return _install_archive((local / f"{dataset_id}{suffix}").resolve(), root, dataset_id)
    raise MedzooError(
        f"Hub dataset repository {repo_id} has neither {dataset_id}/ nor {dataset_id}.zip; "
        "check the repository name"
    )


# ----------------------------------------------------------------------------------- main


def _manual_hint(dataset_id: str, root: Path, where: str) -> str:
    return (
        f"download {dataset_id} by hand from {where} and unpack it so that "
        f"{root / dataset_id / 'info.yaml'} exists (or pass the archive with --source PATH)"
    )


def _fetch_one(
    dataset_id: str, root: Path, source: str | None, count: int, files_cache: dict
) -> Path:
    downloads = root / ".downloads"
    if source is not None and source.startswith("hf:"):
        return _from_hub(source[3:], dataset_id, root)
    if source is not None and "://" not in source and not source.startswith("zenodo:"):
        local = Path(source).expanduser()
        if local.is_dir():
            found = local / dataset_id if (local / dataset_id).is_dir() else local
            return _install(_find_dataset(found, dataset_id), root, dataset_id, move=False)
        if local.is_file():
            return _install_archive(local, root, dataset_id)
        raise MedzooError(
            f"--source {source} is neither a URL, hf:REPO, zenodo:RECORD nor an existing path"
        )
    if source is None or source.startswith("zenodo:"):
        record = ZENODO_RECORD if source is None else source.split(":", 1)[1]
        if record not in files_cache:
            files_cache[record] = _zenodo_files(record)
        remote = _archive_for(dataset_id, files_cache[record])
        if remote is None:
            names = ", ".join(f.name for f in files_cache[record][:20]) or "none"
            raise MedzooError(
                f"Zenodo record {record} has no archive for '{dataset_id}' (files: {names}); "
                f"pick one of those ids or pass --source"
            )
    else:
        remote = _url_for(source, dataset_id, count)
    archive = download(remote, downloads)
    path = _install_archive(archive, root, dataset_id)
    archive.unlink(missing_ok=True)  # unpacked; the archive would double the disk use
    return path


def fetch_datasets(
    ids: Sequence[str],
    root: str | os.PathLike[str],
    *,
    source: str | None = None,
    force: bool = False,
) -> list[Path]:
    """Download and unpack MIMeta datasets into ``root``; returns their folders.

    Datasets already present (with an ``info.yaml``) are kept unless ``force``. Offline, or
    when the source cannot be reached, raises a MedzooError that says what to download by
    hand and where to put it.
    """
    if not ids:
        raise MedzooError(
            "name at least one dataset to fetch, e.g. `medzoo data fetch crc --data-root DIR`"
        )
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise MedzooError(f"data root {root} is a file; give a folder")
    ensure_writable_dir(root, what="the data root")
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        return _fetch_all(ids, root, source, force)
    except BaseException:
        if created and not any(root.iterdir()):
            root.rmdir()  # a failed first fetch leaves no empty root behind
        raise


def _fetch_all(ids: Sequence[str], root: Path, source: str | None, force: bool) -> list[Path]:
    files_cache: dict[str, list[RemoteFile]] = {}
    out = []
    for dataset_id in dict.fromkeys(ids):
        if "/" in dataset_id or dataset_id.startswith("."):
            raise MedzooError(f"'{dataset_id}' is not a dataset id (like crc or organs_axial)")
        if (root / dataset_id / "info.yaml").is_file() and not force:
            out.append(root / dataset_id)
            continue
        try:
            out.append(_fetch_one(dataset_id, root, source, len(ids), files_cache))
        except _Unreachable as err:
            where = describe_source(source)
            if source is None:
                where = f"https://zenodo.org/records/{ZENODO_RECORD}"
            raise MedzooError(
                f"cannot download {dataset_id} ({err}); {_manual_hint(dataset_id, root, where)}"
            ) from None
    return out

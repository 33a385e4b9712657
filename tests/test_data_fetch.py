"""Fetching datasets: Zenodo listing, resume, checksum, Hub, local archives, offline errors.

No test touches the network: the one URL opener of medzoo.data.fetch is replaced by a fake
server, and the Hub is either offline (HF_HUB_OFFLINE=1, set by conftest) or monkeypatched.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import urllib.error
import zipfile
from pathlib import Path

import pytest

from medzoo.data import fetch
from medzoo.data.mimeta import load_split
from medzoo.errors import MedzooError


def _zip_dataset(synth_root: Path, dataset_id: str, into: Path) -> bytes:
    """The dataset folder as a zip with a top-level ``<id>/`` folder, like a release archive."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted((synth_root / dataset_id).rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(synth_root).as_posix())
    return buffer.getvalue()


class _Reply(io.BytesIO):
    def __init__(self, data: bytes, status: int = 200) -> None:
        super().__init__(data)
        self.status = status
        self.headers = {"Content-Length": str(len(data))}


class FakeServer:
    """Serves a Zenodo API listing and archives; records the requests; honours Range."""

    def __init__(self, files: dict[str, bytes], checksums: dict[str, str] | None = None) -> None:
        self.files = files
        self.checksums = checksums or {
            k: "md5:" + hashlib.md5(v).hexdigest() for k, v in files.items()
        }
        self.requests: list[tuple[str, dict]] = []

    def __call__(self, request, timeout=None):  # noqa: ANN001 - urllib's signature
        url = request.full_url if hasattr(request, "full_url") else request
        headers = dict(request.header_items()) if hasattr(request, "header_items") else {}
        self.requests.append((url, headers))
        if url.startswith("https://zenodo.org/api/records/") and "/files/" not in url:
            entries = [
                {
                    "key": name,
                    "size": len(data),
                    "checksum": self.checksums[name],
                    "links": {"self": f"https://zenodo.org/api/records/x/files/{name}/content"},
                }
                for name, data in self.files.items()
            ]
            return _Reply(json.dumps({"files": entries}).encode())
        name = url.split("/files/")[-1].split("/")[0]
        data = self.files[name]
        if "Range" in headers:
            start = int(headers["Range"].split("=")[1].rstrip("-"))
            return _Reply(data[start:], status=206)
        return _Reply(data)


def test_fetch_from_zenodo_listing(synth_root: Path, tmp_path: Path, monkeypatch) -> None:
    server = FakeServer({"crc.zip": _zip_dataset(synth_root, "crc", tmp_path), "other.zip": b"x"})
    monkeypatch.setattr(fetch, "_urlopen", server)
    root = tmp_path / "root"
    paths = fetch.fetch_datasets(["crc"], root)
    assert paths == [root / "crc"]
    assert server.requests[0][0] == f"https://zenodo.org/api/records/{fetch.ZENODO_RECORD}"
    assert len(load_split(root, "crc", "train")) == 108
    assert not list((root / ".downloads").iterdir())  # archive removed once unpacked
    assert sorted(p.name for p in root.iterdir()) == [".downloads", "crc"]
    # already present: nothing is downloaded again
    fetch.fetch_datasets(["crc"], root)
    assert len(server.requests) == 2


def test_resume_from_part_file(synth_root: Path, tmp_path: Path, monkeypatch) -> None:
    data = _zip_dataset(synth_root, "organs_axial", tmp_path)
    server = FakeServer({"organs_axial.zip": data})
    monkeypatch.setattr(fetch, "_urlopen", server)
    root = tmp_path / "root"
    (root / ".downloads").mkdir(parents=True)
    (root / ".downloads" / "organs_axial.zip.part").write_bytes(data[:1000])
    fetch.fetch_datasets(["organs_axial"], root)
    assert server.requests[-1][1].get("Range") == "bytes=1000-"
    assert len(load_split(root, "organs_axial", "test")) == 66


def test_checksum_mismatch_is_an_error(synth_root: Path, tmp_path: Path, monkeypatch) -> None:
    data = _zip_dataset(synth_root, "crc", tmp_path)
    server = FakeServer({"crc.zip": data}, checksums={"crc.zip": "md5:" + "0" * 32})
    monkeypatch.setattr(fetch, "_urlopen", server)
    with pytest.raises(MedzooError, match="checksum.*does not match"):
        fetch.fetch_datasets(["crc"], tmp_path / "root")
    assert not (tmp_path / "root" / "crc").exists()
    assert not list((tmp_path / "root" / ".downloads").iterdir())


def test_offline_says_what_to_download_and_where(tmp_path: Path, monkeypatch) -> None:
    def no_network(request, timeout=None):  # noqa: ANN001
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(fetch, "_urlopen", no_network)
    root = tmp_path / "root"
    with pytest.raises(MedzooError) as caught:
        fetch.fetch_datasets(["crc"], root)
    message = str(caught.value)
    assert "\n" not in message
    assert "https://zenodo.org/records/7884735" in message
    assert str(root / "crc" / "info.yaml") in message


def test_hub_offline_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(MedzooError, match="cannot download crc.*hf:someone/mimeta.*by hand"):
        fetch.fetch_datasets(["crc"], tmp_path / "root", source="hf:someone/mimeta")


def test_hub_source_with_dataset_folders(synth_root: Path, tmp_path: Path, monkeypatch) -> None:
    snapshot = tmp_path / "snapshot"
    shutil.copytree(synth_root / "organs_coronal", snapshot / "organs_coronal")
    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(snapshot)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    root = tmp_path / "root"
    fetch.fetch_datasets(["organs_coronal"], root, source="hf:someone/mimeta")
    assert calls[0]["repo_id"] == "someone/mimeta" and calls[0]["repo_type"] == "dataset"
    assert "organs_coronal/*" in calls[0]["allow_patterns"]
    assert len(load_split(root, "organs_coronal", "val")) == 33


def test_local_tar_archive_and_url_template(synth_root: Path, tmp_path: Path, monkeypatch) -> None:
    archive = tmp_path / "organs_sagittal.tar.gz"
    with tarfile.open(archive, "w:gz") as handle:
        handle.add(synth_root / "organs_sagittal", arcname="organs_sagittal")
    root = tmp_path / "root"
    fetch.fetch_datasets(["organs_sagittal"], root, source=str(archive))
    assert len(load_split(root, "organs_sagittal", "train")) == 132

    server = FakeServer({"crc.zip": _zip_dataset(synth_root, "crc", tmp_path)})
    monkeypatch.setattr(fetch, "_urlopen", server)
    fetch.fetch_datasets(["crc"], root, source="https://mirror.example/files/{id}.zip")
    assert server.requests[0][0] == "https://mirror.example/files/crc.zip"
    assert (root / "crc" / "info.yaml").is_file()


def test_bad_fetch_requests(tmp_path: Path, monkeypatch) -> None:
    server = FakeServer({"crc.zip": b"not a zip"})
    monkeypatch.setattr(fetch, "_urlopen", server)
    with pytest.raises(MedzooError, match="no archive for 'mnist'.*crc.zip"):
        fetch.fetch_datasets(["mnist"], tmp_path / "root")
    with pytest.raises(MedzooError, match="not a readable archive"):
        fetch.fetch_datasets(["crc"], tmp_path / "root")
    assert not (tmp_path / "root" / "crc").exists()
    with pytest.raises(MedzooError, match="neither a URL"):
        fetch.fetch_datasets(["crc"], tmp_path / "root", source=str(tmp_path / "missing.zip"))

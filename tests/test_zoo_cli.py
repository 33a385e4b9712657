"""`medzoo list`, `medzoo info` and `medzoo push` through the real CLI entry point."""

from __future__ import annotations

import json

import pytest
import torch

from medzoo.cli import main
from medzoo.zoo import index
from medzoo.zoo.entry import ZooEntry


@pytest.fixture(scope="module")
def gray_state() -> dict[str, torch.Tensor]:
    from medzoo.models import create_backbone

    return create_backbone("resnet18", in_chans=1).state_dict()


@pytest.fixture
def trained_liver(gray_state) -> ZooEntry:
    entry = ZooEntry(
        name="bt-liver-r18", domain="liver", in_chans=1, make_target="make pretrain-liver"
    )
    index.save_entry(entry, gray_state)
    return index.update_metrics(
        "bt-liver-r18", {"organs_axial": {"probe": {"1.0": {"accuracy": 0.8123}}}}
    )


def test_list_shows_a_table_with_weights_and_metrics(trained_liver, capsys) -> None:
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "name",
        "method",
        "domain",
        "in_chans",
        "classes",
        "weights",
        "metrics",
        "hub",
    ]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) >= {"bt-crc-r18", "bt-liver-r18", "in1k-r18", "random-r18"}
    assert (
        "local" in rows["bt-liver-r18"]
        and "organs_axial/probe/1.0/accuracy=0.812" in rows["bt-liver-r18"]
    )
    assert "no (make pretrain-crc)" in rows["bt-crc-r18"]
    assert "random init" in rows["random-r18"]


def test_list_json(capsys) -> None:
    assert main(["list", "--json"]) == 0
    names = [e["name"] for e in json.loads(capsys.readouterr().out)]
    assert "in1k-r18" in names


def test_info_shows_every_field(trained_liver, capsys) -> None:
    assert main(["info", "bt-liver-r18"]) == 0
    out = capsys.readouterr().out
    for needle in (
        "weights        local",
        "in_chans       1",
        trained_liver.sha256,
        '"accuracy": 0.8123',
    ):
        assert needle in out
    assert main(["info", "bt-liver-r18", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == trained_liver.sha256


@pytest.mark.parametrize("name", ["nope", "../x", "a/b"])
def test_info_bad_name_is_one_line(name: str, capsys) -> None:
    assert main(["info", name]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medzoo: error:") and err.count("\n") == 1


def test_push_dry_run_writes_the_folder(trained_liver, tmp_path, capsys) -> None:
    out = tmp_path / "dry"
    assert (
        main(["push", "bt-liver-r18", "--repo-id", "lab/bt-liver-r18", "--dry-run", str(out)]) == 0
    )
    assert {"README.md", "config.json", "model.safetensors", "metrics.json"} == {
        p.name for p in out.iterdir()
    }
    assert "nothing uploaded" in capsys.readouterr().out
    assert index.model_info("bt-liver-r18").hub_repo_id is None


def test_push_without_token_fails_in_one_line(trained_liver, monkeypatch, capsys) -> None:
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert main(["push", "bt-liver-r18", "--repo-id", "lab/bt-liver-r18"]) == 2
    err = capsys.readouterr().err
    assert "no Hugging Face token" in err and err.count("\n") == 1


def test_push_uploads_with_the_options(trained_liver, monkeypatch, capsys) -> None:
    import huggingface_hub

    seen = {}

    class Api:
        def __init__(self, token=None, **kwargs):
            seen["token"] = token

        def create_repo(self, repo_id, **kwargs):
            seen["private"] = kwargs["private"]

        def create_branch(self, repo_id, *, branch, exist_ok):
            seen["branch"] = branch

        def upload_folder(self, *, repo_id, folder_path, revision, commit_message):
            seen["revision"] = revision
            return type("Info", (), {"oid": "abc123", "commit_url": "https://hf.co/c/abc123"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: "hf_tok")
    args = [
        "push",
        "bt-liver-r18",
        "--repo-id",
        "lab/bt-liver-r18",
        "--private",
        "--revision",
        "v2",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "https://hf.co/c/abc123" in out and "hf_tok" not in out
    assert seen == {"token": "hf_tok", "private": True, "branch": "v2", "revision": "v2"}
    entry = index.model_info("bt-liver-r18")
    assert (entry.hub_repo_id, entry.hub_revision) == ("lab/bt-liver-r18", "abc123")

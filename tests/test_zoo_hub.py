"""Hub publishing: the dry-run folder, the model card, and a push against a fake HfApi."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import medzoo
from medzoo.errors import MedzooError
from medzoo.zoo import card, hub, index, registry
from medzoo.zoo.entry import ZooEntry

METRICS = {
    "crc": {
        "probe": {"0.01": {"accuracy": 0.91, "accuracy_sd": 0.01}, "1.0": {"accuracy": 0.95}},
        "finetune": {"1.0": {"accuracy": 0.97, "macro_f1": 0.96}},
    },
    "crc/test/macro_auroc": float("nan"),  # evaluation's flat keys; NaN stays out of model-index
}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


@pytest.fixture(scope="module")
def backbone_state() -> dict[str, torch.Tensor]:
    from medzoo.models import create_backbone

    torch.manual_seed(3)
    return create_backbone("resnet18", in_chans=3).state_dict()


@pytest.fixture
def crc_entry(backbone_state) -> ZooEntry:
    entry = ZooEntry(
        name="bt-crc-r18",
        domain="crc",
        datasets=("crc",),
        recipe='name = "bt-crc-r18"\n[optim]\nlr = 0.03\n',
        make_target="make pretrain-crc",
        recipe_file="recipes/pretrain-crc.toml",
    )
    folder = index.save_entry(
        entry,
        backbone_state,
        extra_files={
            "recipe.toml": entry.recipe,
            "provenance.json": "{}",
            "train_log.jsonl": "{}\n",
            "checkpoint.pt": b"not published",
            "confusion_crc.png": PNG,
            "fractions.png": PNG,
        },
    )
    index.update_metrics("bt-crc-r18", METRICS)
    assert folder.is_dir()
    return medzoo.model_info("bt-crc-r18")


def test_dry_run_folder_is_exactly_what_is_uploaded(crc_entry, tmp_path) -> None:
    out = hub.save_for_hub("bt-crc-r18", tmp_path / "dry", repo_id="lab/bt-crc-r18")
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "README.md",
        "config.json",
        "confusion_crc.png",
        "fractions.png",
        "metrics.json",
        "model.safetensors",
        "provenance.json",
        "recipe.toml",
    ]
    source = index.entry_folder("bt-crc-r18")
    assert (out / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert json.loads((out / "metrics.json").read_text()).keys() == METRICS.keys()
    config = json.loads((out / "config.json").read_text())
    assert config["medzoo"]["hub_repo_id"] == "lab/bt-crc-r18"
    assert config["pretrained_cfg"]["num_classes"] == 0
    assert not list(tmp_path.glob(".dry*"))  # no temp folder left behind


def test_model_card_round_trips(crc_entry, tmp_path) -> None:
    from huggingface_hub import ModelCard

    out = hub.save_for_hub("bt-crc-r18", tmp_path / "dry", repo_id="lab/bt-crc-r18")
    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.library_name == "timm"
    assert {
        "image-classification",
        "timm",
        "medical-imaging",
        "self-supervised",
        "barlow-twins",
    } <= set(data.tags)
    assert data.license == "apache-2.0" and data.datasets == ["crc"]
    results = {(r.metric_name, r.metric_value) for r in data.eval_results}
    assert ("crc/probe/1.0/accuracy", 0.95) in results
    assert ("crc/finetune/1.0/macro_f1", 0.96) in results
    assert not any(name.endswith(("_sd", "macro_auroc")) for name, _ in results)
    text = card.text
    assert 'timm.create_model("hf-hub:lab/bt-crc-r18", pretrained=True)' in text
    assert 'medzoo.load("bt-crc-r18")' in text
    assert "make pretrain-crc" in text and "lr = 0.03" in text
    assert "![fractions](fractions.png)" in text and "| crc/probe/0.01/accuracy | 0.9100 |" in text
    assert "not for clinical" in text.lower() or "must not be used for clinical" in text
    for cited in ("Barlow Twins", "Zbontar", "Woerner", "Elsherif"):
        assert cited in text


def test_fine_tuned_card_names_its_base_model() -> None:
    index.register(ZooEntry(name="bt-crc-r18", domain="crc", hub_repo_id="lab/bt-crc-r18"))
    entry = ZooEntry(
        name="bt-crc-r18-tissue",
        method="fine-tuned",
        num_classes=2,
        label_names=("a", "b"),
        base_model="bt-crc-r18",
        task="tissue class",
    )
    assert registry.base_model_hub_id(entry) == "lab/bt-crc-r18"
    made = card.model_card(entry, base_model=registry.base_model_hub_id(entry))
    assert made.data.base_model == "lab/bt-crc-r18"
    assert made.data.pipeline_tag == "image-classification"
    imagenet_child = entry.replace(base_model="in1k-r18")
    assert registry.base_model_hub_id(imagenet_child) == "timm/resnet18.tv_in1k"


def test_save_for_hub_refusals(crc_entry, tmp_path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(MedzooError, match="not an empty folder"):
        hub.save_for_hub("bt-crc-r18", busy)
    with pytest.raises(MedzooError, match="nothing to publish for random-r18"):
        hub.save_for_hub("random-r18", tmp_path / "r")
    with pytest.raises(MedzooError, match="invalid Hub repository id"):
        hub.save_for_hub("bt-crc-r18", tmp_path / "r", repo_id="../x")
    (index.entry_folder("bt-crc-r18") / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(MedzooError, match="sha256 mismatch"):
        hub.save_for_hub("bt-crc-r18", tmp_path / "r")
    assert not (tmp_path / "r").exists()


class FakeApi:
    """Records what push_to_hub asks of the Hub, and what the uploaded folder held."""

    calls: list[tuple] = []
    uploaded: dict[str, bytes] = {}
    fail_with: Exception | None = None

    def __init__(self, token=None, **kwargs) -> None:
        FakeApi.calls.append(("init", token))

    def create_repo(self, repo_id, *, private=False, exist_ok=False, repo_type=None):
        FakeApi.calls.append(("create_repo", repo_id, private, exist_ok))
        if FakeApi.fail_with:
            raise FakeApi.fail_with

    def create_branch(self, repo_id, *, branch, exist_ok=False):
        FakeApi.calls.append(("create_branch", repo_id, branch))

    def upload_folder(self, *, repo_id, folder_path, revision=None, commit_message=None):
        FakeApi.calls.append(("upload_folder", repo_id, revision))
        FakeApi.uploaded = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}

        class Info:
            oid = "c0ffee" * 6 + "abcd"
            commit_url = f"https://huggingface.co/{repo_id}/commit/c0ffee"

        return Info()


@pytest.fixture
def fake_api(monkeypatch):
    import huggingface_hub

    FakeApi.calls, FakeApi.uploaded, FakeApi.fail_with = [], {}, None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return FakeApi


def test_push_uploads_the_dry_run_folder_and_records_it(crc_entry, fake_api, tmp_path) -> None:
    url = hub.push_to_hub(
        "bt-crc-r18", "lab/bt-crc-r18", private=True, revision="v1", token="hf_secret"
    )
    assert url == "https://huggingface.co/lab/bt-crc-r18/commit/c0ffee"
    assert fake_api.calls == [
        ("init", "hf_secret"),
        ("create_repo", "lab/bt-crc-r18", True, True),
        ("create_branch", "lab/bt-crc-r18", "v1"),
        ("upload_folder", "lab/bt-crc-r18", "v1"),
    ]
    dry = hub.save_for_hub("bt-crc-r18", tmp_path / "dry", repo_id="lab/bt-crc-r18")
    assert sorted(fake_api.uploaded) == sorted(p.name for p in dry.iterdir())
    assert fake_api.uploaded["model.safetensors"] == (dry / "model.safetensors").read_bytes()
    entry = medzoo.model_info("bt-crc-r18")
    assert entry.hub_repo_id == "lab/bt-crc-r18" and entry.hub_revision == "c0ffee" * 6 + "abcd"
    assert entry.sha256 == crc_entry.sha256 and entry.metrics["crc"] == METRICS["crc"]


def test_push_without_a_token_is_one_line(crc_entry, fake_api, monkeypatch) -> None:
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(MedzooError, match="no Hugging Face token") as err:
        hub.push_to_hub("bt-crc-r18", "lab/bt-crc-r18")
    assert "\n" not in str(err.value) and fake_api.calls == []


def test_failed_push_hides_the_token_and_records_nothing(crc_entry, fake_api) -> None:
    fake_api.fail_with = RuntimeError("403 Forbidden for token hf_secret\nmore")
    with pytest.raises(MedzooError, match="upload of bt-crc-r18 to lab/x failed") as err:
        hub.push_to_hub("bt-crc-r18", "lab/x", token="hf_secret")
    assert "hf_secret" not in str(err.value) and "\n" not in str(err.value)
    assert medzoo.model_info("bt-crc-r18").hub_repo_id is None

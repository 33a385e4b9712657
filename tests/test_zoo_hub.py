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
    assert data.license == "apache-2.0" and data.datasets is None  # MIMeta is not a Hub dataset
    results = {(r.dataset_config, r.metric_type, r.metric_value) for r in data.eval_results}
    assert ("crc-probe-100pct", "accuracy", 0.95) in results
    assert ("crc-probe-1pct", "accuracy", 0.91) in results
    assert ("crc-finetune-100pct", "f1", 0.96) in results
    assert {r.metric_type for r in data.eval_results} <= {"accuracy", "recall", "f1", "roc_auc"}
    text = card.text
    assert 'timm.create_model("hf-hub:lab/bt-crc-r18", pretrained=True)' in text
    assert 'medzoo.transforms("bt-crc-r18")' in text and "features_only=True" in text
    assert "pre_logits=True" in text and "strict=False" in text
    assert "## Model Details" in text and "## Model Usage" in text and "GMACs: 1.8" in text
    assert "make pretrain-crc" in text and "lr = 0.03" in text
    assert "![fractions](fractions.png)" in text
    assert "| crc | linear probe | 1% | 0.910 ± 0.010 |" in text
    assert "_sd" not in text and "final_loss" not in text
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


# The Hub's metric ids (huggingface/evaluate) that medzoo's metrics map to.
HUB_METRIC_IDS = {"accuracy", "recall", "f1", "roc_auc"}


def _grid_metrics() -> dict[str, float]:
    """What evaluation writes back: 2 datasets x 2 strategies x 3 fractions x 4 metrics + sd."""
    out: dict[str, float] = {"pretrain/final_loss": 12.5, "pretrain/steps": 100.0}
    for dataset in ("organs_axial", "organs_coronal"):
        for strategy in ("probe", "finetune"):
            for fraction in (0.01, 0.1, 1.0):
                for i, metric in enumerate(
                    ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc")
                ):
                    out[f"{dataset}/{strategy}/{fraction}/{metric}"] = 0.5 + fraction / 4 + i / 100
                out[f"{dataset}/{strategy}/{fraction}/accuracy_sd"] = 0.02
    return out


def test_card_after_an_evaluation_is_valid_for_the_hub(backbone_state, tmp_path) -> None:
    """Valid model-index with unique keys, Hub metric ids, the summary table and the figures."""
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import (
        eval_results_to_model_index,
        model_index_to_eval_results,
    )

    index.save_entry(
        ZooEntry(name="bt-liver-r18", domain="liver", in_chans=1,
                 datasets=("organs_axial", "organs_coronal", "organs_sagittal")),
        {k: v[:, :1] if k == "conv1.weight" else v for k, v in backbone_state.items()},
    )  # fmt: skip
    index.update_metrics("bt-liver-r18", _grid_metrics())
    run = tmp_path / "eval-run"
    (run / "figures").mkdir(parents=True)
    (run / "summary.md").write_text("# Evaluation\n\n| a | b |\n|---|---|\n")
    for figure in (
        "curves-organs_axial.png",
        "confusion-organs_axial-bt-liver-r18-probe.png",
        "tsne-organs_axial-bt-liver-r18.png",
        "confusion-organs_axial-random-r18-probe.png",
    ):
        (run / "figures" / figure).write_bytes(PNG)  # fmt: skip
    copied = index.attach_evaluation("bt-liver-r18", run)
    assert "confusion-organs_axial-random-r18-probe.png" not in copied and len(copied) == 4
    assert index.attach_evaluation("random-r18", run) == []  # no local folder: left alone

    out = hub.save_for_hub("bt-liver-r18", tmp_path / "dry", repo_id="lab/bt-liver-r18")
    card = ModelCard.load(out / "README.md", ignore_metadata_errors=False)
    results = card.data.eval_results
    # headline only: 2 datasets x 2 strategies x (all, fewest labels) x 4 metrics
    assert len(results) == 2 * 2 * 2 * 4
    keys = [(r.unique_identifier, r.metric_type) for r in results]
    assert len(set(keys)) == len(keys)  # no two results share a key
    assert {r.metric_type for r in results} == HUB_METRIC_IDS
    assert all(r.metric_args == {"average": "macro"} for r in results if r.metric_type == "f1")
    # the model-index round-trips through huggingface_hub's own conversion
    name, again = model_index_to_eval_results(eval_results_to_model_index("bt-liver-r18", results))
    assert name == "bt-liver-r18" and len(again) == len(results)
    assert card.data.datasets is None
    assert "dataset_licenses" not in card.data.to_dict()  # no data root here to read them from
    text = card.text
    assert (
        "| organs_axial | full fine-tuning | 100% | 0.750 ± 0.020 | 0.760 | 0.770 | 0.780 |" in text
    )
    assert "![curves-organs_axial](curves-organs_axial.png)" in text
    assert (out / "curves-organs_axial.png").is_file() and (out / "summary.md").is_file()
    assert "final_loss" not in text and "accuracy_sd" not in text
    assert "Image size: 224 x 224" in text and "Channels: 1" in text


def test_card_names_dataset_licences_from_info_yaml(
    backbone_state, synth_root, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("MEDZOO_DATA", str(synth_root))
    index.save_entry(ZooEntry(name="bt-crc-r18", domain="crc", datasets=("crc",)), backbone_state)
    out = hub.save_for_hub("bt-crc-r18", tmp_path / "dry", repo_id="lab/bt-crc-r18")
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert card.data.to_dict()["dataset_licenses"] == {"crc": "CC0 1.0 (synthetic data)"}
    assert "MIMeta `crc` (licence: CC0 1.0 (synthetic data))" in card.text

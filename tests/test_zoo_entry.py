"""ZooEntry records, name validation, the timm config.json, and safe weight reading."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from medzoo.errors import MedzooError
from medzoo.zoo.entry import (
    ZooEntry,
    read_weights,
    refuse_pickles,
    sha256_bytes,
    timm_config,
    validate_name,
)


def test_entry_round_trips_through_json() -> None:
    entry = ZooEntry(
        name="bt-crc-r18-tissue",
        method="fine-tuned",
        domain="crc",
        datasets=("crc",),
        num_classes=3,
        label_names=("adipose", "debris", "mucus"),
        recipe={"name": "x", "optim": {"lr": 0.1}},
        metrics={"crc": {"accuracy": 0.9}},
        base_model="bt-crc-r18",
        task="tissue class",
    )
    data = json.loads(json.dumps(entry.to_dict()))
    assert ZooEntry.from_dict(data) == entry
    assert data["input_size"] == [3, 224, 224]


def test_entry_defaults_follow_in_chans() -> None:
    entry = ZooEntry(name="m", in_chans=1)
    assert entry.input_size == (1, 224, 224)
    assert len(entry.mean) == len(entry.std) == 1
    assert entry.is_backbone


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "simclr"}, "method"),
        ({"in_chans": 1, "input_size": (3, 224, 224)}, "input_size"),
        ({"in_chans": 3, "mean": (0.5,)}, "mean has 1 values"),
        ({"num_classes": 2, "label_names": ("a",)}, "label names"),
        ({"num_classes": -1}, "num_classes"),
    ],
)
def test_entry_rejects_inconsistent_fields(kwargs: dict, message: str) -> None:
    with pytest.raises(MedzooError, match=message):
        ZooEntry(name="m", **kwargs)


def test_from_dict_rejects_unknown_keys_with_a_hint() -> None:
    with pytest.raises(MedzooError, match="did you mean 'in_chans'"):
        ZooEntry.from_dict({"name": "m", "in_chan": 1})


@pytest.mark.parametrize("name", ["bt-crc-r18", "a", "x_1.v2"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["../x", "a/b", "a\\b", "..", ".hidden", "", "Bt-CRC", "a b", "x/../y"]
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(MedzooError, match="name"):
        validate_name(name)


def test_timm_config_is_what_timm_accepts() -> None:
    """Every pretrained_cfg key must be a PretrainedCfg field, or timm fails to load the folder."""
    from timm.models._pretrained import PretrainedCfg

    entry = ZooEntry(name="m", in_chans=1, num_classes=2, label_names=("a", "b"))
    config = timm_config(entry, num_features=512)
    PretrainedCfg(**config["pretrained_cfg"])  # TypeError on an unknown key
    assert config["architecture"] == "resnet18"
    assert config["model_args"] == {"global_pool": "avg", "in_chans": 1, "num_classes": 2}
    assert config["pretrained_cfg"]["input_size"] == [1, 224, 224]
    assert config["pretrained_cfg"]["label_names"] == ["a", "b"]
    assert config["medzoo"]["name"] == "m"


@pytest.mark.parametrize(
    "entry",
    [
        ZooEntry(name="m-gray", in_chans=1, domain="liver", datasets=("organs_axial",)),
        ZooEntry(
            name="m-clf",
            method="linear-probe",
            num_classes=2,
            label_names=("a", "b"),
            input_size=(3, 160, 192),
            crop_pct=0.9,
            interpolation="bicubic",
        ),
    ],
    ids=["gray-backbone", "rgb-classifier"],
)
def test_timm_config_is_what_timm_save_config_for_hf_writes(entry: ZooEntry, tmp_path) -> None:
    """Parity with timm: the config.json of a model built from the entry, written by timm itself."""
    from timm.models._hub import save_config_for_hf

    from medzoo.zoo.loading import build_model

    model = build_model(entry, None, None)
    save_config_for_hf(model, tmp_path / "config.json")
    by_timm = json.loads((tmp_path / "config.json").read_text())
    ours = timm_config(entry, num_features=model.num_features)
    assert ours.pop("medzoo")["name"] == entry.name
    assert json.loads(json.dumps(ours)) == by_timm


@pytest.fixture
def weights_file(tmp_path):
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({"w": torch.arange(12.0).reshape(3, 4)}, str(path))
    return path


def test_read_weights_checks_sha256(weights_file) -> None:
    sha = sha256_bytes(weights_file.read_bytes())
    assert torch.equal(read_weights(weights_file, sha)["w"], torch.arange(12.0).reshape(3, 4))
    with pytest.raises(MedzooError, match="sha256 mismatch"):
        read_weights(weights_file, "0" * 64)


def test_read_weights_refuses_pickles(tmp_path) -> None:
    path = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(2)}, path)  # a pickle (zip) under the safetensors name
    with pytest.raises(MedzooError, match="pickle"):
        read_weights(path, None)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_read_weights_rejects_corrupt_files(weights_file, damage: str) -> None:
    data = weights_file.read_bytes()
    bad = {"truncate": data[: len(data) - 7], "garbage": b"\x07" * 64, "empty": b""}[damage]
    weights_file.write_bytes(bad)
    with pytest.raises(MedzooError, match="not a valid safetensors"):
        read_weights(weights_file, sha256_bytes(bad))


def test_folder_with_only_a_pickle_is_refused(tmp_path) -> None:
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(MedzooError, match="only from safetensors"):
        refuse_pickles(tmp_path)


def _catalog_and_registered_entries() -> list[ZooEntry]:
    import medzoo
    from medzoo.zoo.registry import model_info

    extra = [
        ZooEntry(name="reg-gray", in_chans=1, input_size=(1, 96, 128), mean=(0.3,), std=(0.2,)),
        ZooEntry(name="reg-clf", method="fine-tuned", num_classes=3, label_names=("a", "b", "c")),
    ]
    return [model_info(n) for n in medzoo.list_models()] + extra


def test_resolve_model_data_config_is_the_entry_s_own_for_every_entry() -> None:
    """timm's data config of a loaded model is the entry's: no 288 px test size, no RGB leftovers."""
    import timm

    from medzoo.zoo.loading import build_model

    entries = _catalog_and_registered_entries()
    assert {"bt-liver-r18", "bt-crc-r18", "in1k-r18", "random-r18"} <= {e.name for e in entries}
    for entry in entries:
        model = build_model(entry, None, None)
        for use_test_size in (True, False):
            config = timm.data.resolve_model_data_config(model, use_test_size=use_test_size)
            assert config["input_size"] == entry.input_size, entry.name
            assert config["mean"] == entry.mean and config["std"] == entry.std, entry.name
            assert config["interpolation"] == entry.interpolation, entry.name
            assert config["crop_pct"] == entry.crop_pct, entry.name
        cfg = model.pretrained_cfg
        assert "2110.00476" not in str(cfg.get("paper_ids")), entry.name  # not ResNet Strikes Back
        assert "pytorch-image-models" not in str(cfg.get("origin_url")), entry.name
        assert cfg["license"] == entry.license

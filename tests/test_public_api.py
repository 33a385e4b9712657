"""The public API a timm / PyTorch user reaches for: data config, transforms, dataset, features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import medzoo
from medzoo.data.dataset import MIMetaDataset
from medzoo.errors import MedzooError


@pytest.fixture
def gray_entry() -> str:
    """A registered 1-channel backbone at 32 px (random weights, saved like a trained one)."""
    import timm

    from medzoo.zoo.entry import ZooEntry
    from medzoo.zoo.index import save_entry

    torch.manual_seed(0)
    save_entry(
        ZooEntry(name="t-api-r18", in_chans=1, input_size=(1, 32, 32), domain="liver",
                 datasets=("organs_axial",)),
        timm.create_model("resnet18", in_chans=1, num_classes=0).state_dict(),
    )  # fmt: skip
    return "t-api-r18"


def test_data_config_is_what_timm_resolves(gray_entry: str) -> None:
    import timm

    for name in (gray_entry, *medzoo.list_models("bt-*"), "random-r18"):
        model = medzoo.load(name, pretrained=name == gray_entry)
        assert medzoo.data_config(name) == timm.data.resolve_model_data_config(
            model, use_test_size=True
        ), name


def test_list_models_filters_like_timm(gray_entry: str) -> None:
    everything = medzoo.list_models()
    assert medzoo.list_models("bt-*") == ["bt-crc-r18", "bt-liver-r18"]
    assert medzoo.list_models(["in1k-*", "t-api-*"]) == ["in1k-r18", "t-api-r18"]
    assert medzoo.list_models("nothing-*") == []
    assert medzoo.list_models("") == everything and gray_entry in everything


def test_dataset_items_and_transforms(synth_root: Path, gray_entry: str) -> None:
    raw = MIMetaDataset(synth_root, "organs_axial", "test")
    image, label = raw[0]
    assert image.dtype == torch.uint8 and image.shape == (1, 32, 32)
    assert 0 <= label < raw.num_classes == 11 and len(raw) > 0
    assert raw.task == "organ label" and "organs_axial" in repr(raw)
    shaped = MIMetaDataset(
        synth_root, "organs_axial", "test", transform=medzoo.transforms(gray_entry)
    )
    x, same_label = shaped[0]
    assert x.dtype == torch.float32 and x.shape == (1, 32, 32) and same_label == label
    # at the entry's own size the transform is exactly the normalisation of the stored pixels
    mean, std = medzoo.model_info(gray_entry).mean, medzoo.model_info(gray_entry).std
    torch.testing.assert_close(x, (image.float() / 255 - mean[0]) / std[0])
    with pytest.raises(MedzooError):
        MIMetaDataset(synth_root, "no_such_dataset", "test")


def test_extract_features_from_tensor_and_loader(synth_root: Path, gray_entry: str) -> None:
    from torch.utils.data import DataLoader

    data = MIMetaDataset(synth_root, "organs_axial", "test")
    images = data.data.images[:20]
    from_tensor = medzoo.extract_features(gray_entry, images, batch_size=8)
    assert from_tensor.shape == (20, 512) and from_tensor.dtype == torch.float32
    loader = DataLoader(torch.utils.data.Subset(data, range(20)), batch_size=6)
    from_loader = medzoo.extract_features(gray_entry, loader)
    torch.testing.assert_close(from_loader, from_tensor, rtol=1e-5, atol=1e-5)
    # the reference: timm's own pre-logits on normalised inputs
    model = medzoo.load(gray_entry)
    cfg = medzoo.data_config(gray_entry)
    x = (images.float() / 255 - cfg["mean"][0]) / cfg["std"][0]
    with torch.inference_mode():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(from_tensor, expected, rtol=1e-4, atol=1e-5)


def test_documented_timm_and_torchvision_routes(gray_entry: str) -> None:
    """What the README promises: features_only, pre_logits, torchvision resnet18 strict=False."""
    import timm
    import torchvision

    from medzoo.zoo.index import entry_folder

    folder = entry_folder(gray_entry)
    maps = timm.create_model("local-dir:" + str(folder), pretrained=True, features_only=True)
    shapes = [tuple(f.shape[1:]) for f in maps.eval()(torch.zeros(1, 1, 32, 32))]
    assert shapes[-1] == (512, 1, 1) and len(shapes) == 5
    model = medzoo.load(gray_entry)
    tv = torchvision.models.resnet18()
    tv.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    result = tv.load_state_dict(model.state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    tv.fc = torch.nn.Identity()
    x = torch.randn(2, 1, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(tv.eval()(x), model(x), rtol=1e-4, atol=1e-5)

"""The reader: shapes, dtypes, resize, memory maps, domains, and each bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from medzoo.data.domains import DOMAINS, domain_preset, load_domain, resolve_domain
from medzoo.data.mimeta import list_datasets, load_split, read_info, resize_uint8, split_indices
from medzoo.errors import MedzooError


def test_load_split_shapes_and_dtypes(synth_root: Path) -> None:
    crc = load_split(synth_root, "crc", "train")
    assert crc.images.shape == (108, 3, 32, 32) and crc.images.dtype == torch.uint8
    assert crc.labels.dtype == torch.int64 and crc.indices.dtype == torch.int64
    assert crc.task == "tissue class" and crc.dataset_ids == ("crc",)
    assert crc.class_names[0] == "adipose (ADI)" and crc.num_classes == 9
    assert torch.equal(crc.indices, torch.sort(crc.indices).values)
    organs = load_split(synth_root, "organs_coronal", "test")
    assert organs.images.shape == (66, 1, 32, 32) and organs.channels == 1
    with h5py.File(synth_root / "organs_coronal" / "images.hdf5") as handle:
        row = int(organs.indices[5])
        assert np.array_equal(handle["images"][row], organs.images[5, 0].numpy())


def test_several_splits_are_sorted_union(synth_root: Path) -> None:
    both = load_split(synth_root, "crc", ["train", "val"])
    rows = np.sort(np.concatenate([split_indices(synth_root, "crc", s) for s in ("train", "val")]))
    assert np.array_equal(both.indices.numpy(), rows)


def test_resize_matches_batched_interpolate(synth_root: Path) -> None:
    full = load_split(synth_root, "crc", "val")
    small = load_split(synth_root, "crc", "val", image_size=20)
    assert small.images.shape == (27, 3, 20, 20) and small.images.dtype == torch.uint8
    assert torch.equal(small.images, resize_uint8(full.images, 20))
    # a flat image stays flat: the resize neither shifts nor scales intensities
    flat = torch.full((1, 1, 32, 32), 77, dtype=torch.uint8)
    assert torch.equal(resize_uint8(flat, 13), torch.full((1, 1, 13, 13), 77, dtype=torch.uint8))


def test_memory_map_above_budget(synth_root: Path, tmp_path: Path) -> None:
    in_memory = load_split(synth_root, "crc", "train", image_size=24)
    cache = tmp_path / "cache"
    mapped = load_split(
        synth_root, "crc", "train", image_size=24, memory_budget_gb=1e-6, cache=cache
    )
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].stat().st_size == mapped.images.numel()
    assert torch.equal(mapped.images, in_memory.images)
    assert torch.equal(mapped.labels, in_memory.labels)
    # a second load reuses the cache file instead of writing another
    again = load_split(
        synth_root, "crc", "train", image_size=24, memory_budget_gb=1e-6, cache=cache
    )
    assert list(cache.iterdir()) == files and torch.equal(again.images, in_memory.images)


def test_liver_domain_concatenates_views(synth_root: Path) -> None:
    assert resolve_domain("liver") == DOMAINS["liver"]
    assert resolve_domain("organs_axial") == ("organs_axial",)
    assert domain_preset("liver") == "ct" and domain_preset("organs_sagittal") == "ct"
    assert domain_preset("crc") == "histology"
    liver = load_domain(synth_root, "liver", "train")
    parts = [load_split(synth_root, d, "train") for d in DOMAINS["liver"]]
    assert liver.dataset_ids == DOMAINS["liver"]
    assert torch.equal(liver.images, torch.cat([p.images for p in parts]))
    assert torch.equal(liver.labels, torch.cat([p.labels for p in parts]))
    assert liver.class_names == parts[0].class_names
    assert torch.equal(liver.dataset_index, torch.repeat_interleave(torch.arange(3), 132))
    crc = load_domain(synth_root, "crc", ["train", "val"], image_size=16)
    assert crc.images.shape == (135, 3, 16, 16)
    with pytest.raises(MedzooError, match="unknown domain 'livr'"):
        resolve_domain("livr")


# ------------------------------------------------------------------------------ bad input


@pytest.fixture()
def broken(synth_root: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the synthetic crc dataset to damage."""
    root = tmp_path / "root"
    shutil.copytree(synth_root / "crc", root / "crc")
    return root


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(MedzooError, match="does not exist.*medzoo data synth"):
        load_split(tmp_path / "nowhere", "crc", "train")


def test_unknown_dataset_lists_those_that_exist(synth_root: Path) -> None:
    with pytest.raises(MedzooError, match="'crcx' not found.*crc, organs_axial"):
        load_split(synth_root, "crcx", "train")
    assert list_datasets(synth_root) == ["crc", "organs_axial", "organs_coronal", "organs_sagittal"]


def test_unknown_split_and_task(synth_root: Path) -> None:
    with pytest.raises(MedzooError, match="split 'tain' not found.*test, train, val"):
        load_split(synth_root, "crc", "tain")
    with pytest.raises(MedzooError, match="no task 'organ label'.*'tissue class'"):
        load_split(synth_root, "crc", "train", task="organ label")


def test_info_missing_keys(broken: Path) -> None:
    info = (broken / "crc" / "info.yaml").read_text()
    (broken / "crc" / "info.yaml").write_text(info.replace("input_size:", "inputsize:"))
    with pytest.raises(MedzooError, match="lacks the key.*input_size"):
        read_info(broken, "crc")


def test_split_index_beyond_hdf5(broken: Path) -> None:
    with open(broken / "crc" / "splits" / "train.txt", "a") as handle:
        handle.write("\nimages/999999.tiff")
    with pytest.raises(MedzooError, match="names image 999999.*rows 0..188"):
        load_split(broken, "crc", "train")


def test_malformed_split_line(broken: Path) -> None:
    (broken / "crc" / "splits" / "val.txt").write_text("images/000001.tiff\nimages/abc.tiff")
    with pytest.raises(MedzooError, match="val.txt:2.*not like images/000123.tiff"):
        load_split(broken, "crc", "val")


def test_labels_shorter_than_images(broken: Path) -> None:
    path = broken / "crc" / "task_labels" / "tissue class.npy"
    np.save(path, np.load(path)[:-5])
    with pytest.raises(MedzooError, match="184 labels but images.hdf5 has 189 images"):
        load_split(broken, "crc", "train")


def _replace_images(root: Path, array: np.ndarray) -> None:
    with h5py.File(root / "crc" / "images.hdf5", "w") as handle:
        handle.create_dataset("images", data=array)


def test_wrong_image_dtype(broken: Path) -> None:
    _replace_images(broken, np.zeros((189, 32, 32, 3), dtype=np.float32))
    with pytest.raises(MedzooError, match="images are float32, expected uint8"):
        load_split(broken, "crc", "train")


def test_wrong_image_shape(broken: Path) -> None:
    _replace_images(broken, np.zeros((189, 32, 32, 5), dtype=np.uint8))
    with pytest.raises(MedzooError, match=r"shape \(189, 32, 32, 5\)"):
        load_split(broken, "crc", "train")


def test_label_out_of_range(broken: Path) -> None:
    path = broken / "crc" / "task_labels" / "tissue class.npy"
    labels = np.load(path)
    labels[int(split_indices(broken, "crc", "train")[0])] = 9
    np.save(path, labels)
    with pytest.raises(MedzooError, match="labels outside 0..8"):
        load_split(broken, "crc", "train")


def test_images_disagree_with_input_size(broken: Path) -> None:
    _replace_images(broken, np.zeros((189, 30, 32, 3), dtype=np.uint8))
    with pytest.raises(MedzooError, match="images are 30x32 but info.yaml's input_size says 32x32"):
        load_split(broken, "crc", "train")


def test_bad_image_size_request(synth_root: Path) -> None:
    with pytest.raises(MedzooError, match="image_size 0"):
        load_split(synth_root, "crc", "val", image_size=0)

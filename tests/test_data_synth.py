"""Synthetic MIMeta data: the real mimeta package reads it, and its classes are learnable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medzoo.data.mimeta import KNOWN_DATASETS, load_split, read_info
from medzoo.data.synth import SYNTHETIC_DATASETS, split_counts, write_synthetic
from medzoo.errors import MedzooError


@pytest.mark.parametrize("dataset_id", SYNTHETIC_DATASETS)
def test_mimeta_package_reads_what_synth_writes(synth_root: Path, dataset_id: str) -> None:
    import mimeta

    known = KNOWN_DATASETS[dataset_id]
    for split in ("train", "val", "test"):
        ours = load_split(synth_root, dataset_id, split)
        theirs = mimeta.MIMeta(
            str(synth_root), dataset_id, known.task, split=split, transform=np.asarray
        )
        assert len(theirs) == len(ours)
        assert tuple(theirs.classes.values()) == ours.class_names == known.class_names
        for position in (0, len(ours) // 2, len(ours) - 1):
            image, label = theirs[position]
            pixels = ours.images[position].permute(1, 2, 0).numpy()
            assert np.array_equal(image, pixels[..., 0] if known.channels == 1 else pixels)
            assert int(label) == int(ours.labels[position])
        assert np.array_equal(np.asarray(theirs.labels), ours.labels.numpy())


def test_split_sizes_info_and_original_splits(synth_root: Path) -> None:
    import mimeta

    counts = split_counts(12)
    info = read_info(synth_root, "crc")
    assert info["splits_num_samples"] == {k: 9 * v for k, v in counts.items()}
    assert info["input_size"] == [3, 32, 32]
    assert info["total_num_samples"] == 9 * sum(counts.values())
    # mimeta's original_split path works as on the real files (crc's source test set is "val")
    original = mimeta.MIMeta(str(synth_root), "crc", "tissue class", original_split="val")
    assert len(original) == 9 * counts["test"]
    train = load_split(synth_root, "organs_axial", "train")
    assert torch.equal(torch.bincount(train.labels), torch.full((11,), 12))
    splits = [
        set(load_split(synth_root, "crc", s).indices.tolist()) for s in ("train", "val", "test")
    ]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])


def test_deterministic_and_atomic(tmp_path: Path) -> None:
    first = write_synthetic(tmp_path / "a", ["crc"], size=16, per_class=2, seed=3)[0]
    second = write_synthetic(tmp_path / "b", ["crc"], size=16, per_class=2, seed=3)[0]
    other = write_synthetic(tmp_path / "c", ["crc"], size=16, per_class=2, seed=4)[0]
    a, b, c = (load_split(p.parent, "crc", "train").images for p in (first, second, other))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # rewriting replaces the dataset in place and leaves no temporary folders behind
    write_synthetic(tmp_path / "a", ["crc"], size=16, per_class=3, seed=3)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["crc"]
    assert len(load_split(tmp_path / "a", "crc", "train")) == 27


def test_refuses_to_overwrite_real_data(tmp_path: Path) -> None:
    real = tmp_path / "crc"
    real.mkdir()
    (real / "info.yaml").write_text("id: crc\nname: real\n")
    with pytest.raises(MedzooError, match="not a synthetic dataset"):
        write_synthetic(tmp_path, ["crc"], size=16, per_class=1)
    assert (real / "info.yaml").read_text() == "id: crc\nname: real\n"


def test_bad_synth_arguments(tmp_path: Path) -> None:
    with pytest.raises(MedzooError, match="cannot synthesise"):
        write_synthetic(tmp_path, ["mnist"], size=16)
    with pytest.raises(MedzooError, match="size"):
        write_synthetic(tmp_path, ["crc"], size=2)
    with pytest.raises(MedzooError, match="per-class"):
        write_synthetic(tmp_path, ["crc"], size=16, per_class=0)
    assert not any(tmp_path.iterdir())


def _pooled(data) -> np.ndarray:
    return torch.nn.functional.avg_pool2d(data.images.float(), 4).flatten(1).numpy() / 255


@pytest.mark.parametrize("dataset_id", SYNTHETIC_DATASETS)
def test_classes_are_learnable_from_raw_pixels(synth_root: Path, dataset_id: str) -> None:
    """Nearest class centroid on 8x8-pooled pixels beats chance (1/9, 1/11) by a wide margin."""
    train, test = (
        load_split(synth_root, dataset_id, "train"),
        load_split(synth_root, dataset_id, "test"),
    )
    features_train, features_test = _pooled(train), _pooled(test)
    centroids = np.stack(
        [features_train[train.labels.numpy() == c].mean(0) for c in range(train.num_classes)]
    )
    distances = ((features_test[:, None] - centroids[None]) ** 2).sum(-1)
    accuracy = (distances.argmin(1) == test.labels.numpy()).mean()
    assert accuracy > 0.6, accuracy  # chance is 0.09-0.11


def test_left_organs_are_mirrored_right_organs(tmp_path: Path) -> None:
    """Flipping 'left kidney' images gives the distribution of 'right kidney' images."""
    write_synthetic(tmp_path, ["organs_axial"], size=32, per_class=40, seed=1)
    data = load_split(tmp_path, "organs_axial", ["train", "val", "test"])
    names = data.class_names
    images = data.images.float()
    for organ in ("kidney", "lung", "femoral head"):
        left = images[data.labels == names.index(f"left {organ}")].mean(0)
        right = images[data.labels == names.index(f"right {organ}")].mean(0)
        mirrored_gap = (left.flip(-1) - right).abs().mean()
        unflipped_gap = (left - right).abs().mean()
        assert mirrored_gap < 0.5 * unflipped_gap, (organ, mirrored_gap, unflipped_gap)

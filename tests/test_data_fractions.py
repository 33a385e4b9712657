"""Label fractions: stratified, seeded, nested, deterministic, at least one image per class."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medzoo.data.fractions import label_fraction_indices, per_class_count
from medzoo.errors import MedzooError

# an imbalanced split: 5 classes of 3..403 images, in shuffled order
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(5), [403, 200, 57, 9, 3]))
FRACTIONS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_stratified_with_one_per_class(fraction: float) -> None:
    chosen = label_fraction_indices(LABELS, fraction, seed=0)
    assert chosen.dtype == np.int64 and np.all(np.diff(chosen) > 0)  # sorted, unique
    counts = np.bincount(LABELS[chosen], minlength=5)
    for cls, total in enumerate(np.bincount(LABELS)):
        assert counts[cls] >= 1
        assert counts[cls] == per_class_count(total, fraction)
        assert abs(counts[cls] - fraction * total) <= max(1.0, 0.5 + 1e-9)


def test_full_fraction_is_everything() -> None:
    assert np.array_equal(label_fraction_indices(LABELS, 1.0, seed=5), np.arange(len(LABELS)))


def test_nested_for_one_seed() -> None:
    for seed in (0, 1, 7):
        subsets = [set(label_fraction_indices(LABELS, f, seed).tolist()) for f in FRACTIONS]
        for smaller, larger in zip(subsets, subsets[1:]):
            assert smaller <= larger


def test_deterministic_and_seed_dependent() -> None:
    a = label_fraction_indices(LABELS, 0.1, seed=3)
    assert np.array_equal(a, label_fraction_indices(LABELS.copy(), 0.1, seed=3))
    assert np.array_equal(a, label_fraction_indices(torch.from_numpy(LABELS), 0.1, seed=3))
    assert not np.array_equal(a, label_fraction_indices(LABELS, 0.1, seed=4))


def test_class_order_independent_of_other_classes() -> None:
    """Relabelling other classes does not change which images of class 0 are picked."""
    merged = np.where(LABELS >= 2, 2, LABELS)
    pick = lambda labels: set(i for i in label_fraction_indices(labels, 0.1, 9) if labels[i] == 0)  # noqa: E731
    assert pick(LABELS) == pick(merged)


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, math.nan, "abc"])
def test_bad_fractions(fraction: object) -> None:
    with pytest.raises(MedzooError, match="fraction"):
        label_fraction_indices(LABELS, fraction, seed=0)  # type: ignore[arg-type]


def test_class_without_images_and_empty_labels() -> None:
    with pytest.raises(MedzooError, match="class.*3.*no training images"):
        label_fraction_indices(np.array([0, 1, 2, 0]), 0.5, seed=0, num_classes=4)
    with pytest.raises(MedzooError, match="non-empty"):
        label_fraction_indices(np.array([], dtype=np.int64), 0.5, seed=0)
    with pytest.raises(MedzooError, match="integer"):
        label_fraction_indices(np.array([0.5, 1.0]), 0.5, seed=0)

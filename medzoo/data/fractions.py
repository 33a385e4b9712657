"""Label-fraction subsets: stratified, seeded, nested, at least one image per class.

Each class's rows are put in a seeded random order that depends only on (seed, class), and a
fraction takes the first ``max(1, round(fraction * n_c))`` of them. So the subset for a
fraction is deterministic, contains every class, and for one seed the 1 % subset is inside the
10 % subset: label-fraction curves compare like with like.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medzoo.errors import MedzooError


def check_fraction(fraction: float) -> float:
    """``fraction`` as a float in (0, 1], else a MedzooError."""
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        raise MedzooError(
            f"label fraction {fraction!r} is not a number; use a value in (0, 1]"
        ) from None
    if not (0.0 < value <= 1.0):  # also rejects NaN
        raise MedzooError(
            f"label fraction {fraction} is outside (0, 1]; use e.g. 0.01 for 1 % or 1.0 for all labels"
        )
    return value


def per_class_count(n_class: int, fraction: float) -> int:
    """Images kept from a class of ``n_class`` images: rounded half up, at least one."""
    return min(n_class, max(1, math.floor(fraction * n_class + 0.5)))


def label_fraction_indices(
    labels: Any, fraction: float, seed: int, *, num_classes: int | None = None
) -> np.ndarray:
    """Sorted int64 indices into ``labels`` of a stratified ``fraction`` subset.

    Args:
        labels: one integer class per image of the split (numpy array, tensor or sequence).
        fraction: in (0, 1]; 1.0 returns every index.
        seed: the subset depends only on (labels, fraction, seed), and is nested across
            fractions for one seed.
        num_classes: if given, every class in ``range(num_classes)`` must have an image.

    Raises:
        MedzooError: a fraction outside (0, 1], no labels, or a class without images.
    """
    value = check_fraction(fraction)
    array = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
    if array.ndim != 1 or array.size == 0:
        raise MedzooError("label fractions need a non-empty 1-D array of class labels")
    if not np.issubdtype(array.dtype, np.integer):
        raise MedzooError(f"labels are {array.dtype}; label fractions need integer classes")
    array = array.astype(np.int64)
    present = np.unique(array)
    if num_classes is not None:
        empty = sorted(set(range(num_classes)) - set(present.tolist()))
        if empty:
            raise MedzooError(
                f"class(es) {', '.join(map(str, empty))} have no training images, so no "
                "label fraction can hold one image per class; check the dataset's train split"
            )
    counts = {int(c): per_class_count(int(np.sum(array == c)), value) for c in present}
    return stratified_indices(array, counts, seed)


def stratified_indices(labels: Any, counts: dict[int, int], seed: int) -> np.ndarray:
    """Sorted int64 indices: the first ``counts[c]`` images of class ``c`` in the seeded order.

    The order of a class depends only on (seed, class), so subsets with larger counts contain
    the smaller ones (fractions, shots and matched validation subsets are all nested).
    """
    array = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels).astype(np.int64)
    chosen = [np.zeros(0, np.int64)]
    for cls, count in sorted(counts.items()):
        rows = np.flatnonzero(array == cls)
        # one generator per (seed, class): a class's order does not depend on the others
        order = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(cls) & 0xFFFFFFFF]).permutation(
            len(rows)
        )
        chosen.append(rows[order[: min(int(count), len(rows))]])
    return np.sort(np.concatenate(chosen))

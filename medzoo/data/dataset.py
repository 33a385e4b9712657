"""``MIMetaDataset``: a torch ``Dataset`` over one MIMeta split, read by the fast uint8 reader.

For a researcher's own training loop: the split is read once (:func:`medzoo.data.mimeta.load_split`,
memory-mapped above the budget), and each item is ``(image, label)``. Without a ``transform`` the
image is the stored uint8 ``[C, H, W]`` tensor (normalise it with the model's mean and std, or pass
the whole batch to :func:`medzoo.extract_features`); with one, the image is handed to it as a PIL
image (mode ``L`` or ``RGB``), the way torchvision and timm transforms expect, e.g.
``transform=medzoo.transforms("bt-crc-r18")``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from medzoo.data.mimeta import load_split


class MIMetaDataset(Dataset):
    """One MIMeta dataset's split (or splits) as ``(image, label)`` items.

    Args:
        root: the MIMeta root (``--data-root`` / ``MEDZOO_DATA``).
        dataset: a dataset id, e.g. ``crc``, ``organs_axial``.
        split: ``train``, ``val``, ``test`` or a list of them.
        task: the task whose labels are returned (default: the dataset's medzoo task).
        transform: applied to each image as a PIL image; ``None`` returns uint8 tensors.
        target_transform: applied to each label (an ``int``).
        image_size: resize while reading (square, bilinear, antialiased); ``None`` keeps it.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        dataset: str,
        split: str | Sequence[str] = "train",
        task: str | None = None,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
        *,
        image_size: int | None = None,
    ) -> None:
        self.data = load_split(root, dataset, split, task=task, image_size=image_size)
        self.dataset = dataset
        self.split = split
        self.transform = transform
        self.target_transform = target_transform

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.data.class_names

    @property
    def task(self) -> str:
        return self.data.task

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image: Any = self.data.images[index].contiguous()
        label: Any = int(self.data.labels[index])
        if self.transform is not None:
            image = self.transform(to_pil(image))
        if self.target_transform is not None:
            label = self.target_transform(label)
        return image, label

    def __repr__(self) -> str:
        return (
            f"MIMetaDataset({self.dataset!r}, split={self.split!r}, task={self.task!r}, "
            f"n={len(self)}, classes={self.num_classes}, shape={tuple(self.data.images.shape[1:])})"
        )


def to_pil(image: torch.Tensor) -> Any:
    """uint8 ``[C, H, W]`` (C = 1 or 3) -> a PIL image in mode ``L`` or ``RGB``."""
    from PIL import Image

    array = image.permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)

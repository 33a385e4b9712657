"""The one rule for unifying channels across datasets: gray -> RGB by replication, RGB -> gray
by ITU-R 601-2 luma (PIL's ``convert("L")``); :mod:`medzoo.data.mimeta` applies it on read.

A 3-channel model fed a grayscale CT slice sees the slice in all three channels (timm's ImageNet
conv1 sums to the same response as a 1-channel conv1 adapted by timm); a 1-channel model fed a
colour photograph sees its luminance.
"""

from __future__ import annotations

import torch
from torch import Tensor

from medzoo.errors import MedzooError

RULE = {1: "RGB reduced to luminance (ITU-R 601-2)", 3: "grayscale replicated to RGB"}


def convert_channels(images: Tensor, channels: int) -> Tensor:
    """uint8 ``[N, C, H, W]`` with C in (1, 3) -> ``channels`` channels, by :data:`RULE`."""
    have = images.shape[1]
    if have == channels:
        return images
    if channels == 3 and have == 1:
        return images.expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)
    if channels == 1 and have == 3:
        weights = torch.tensor([299, 587, 114], dtype=torch.int32).view(1, 3, 1, 1)
        luma = (images.to(torch.int32) * weights).sum(dim=1, keepdim=True)
        return ((luma + 500) // 1000).to(torch.uint8).contiguous(memory_format=torch.channels_last)
    raise MedzooError(f"cannot convert {have}-channel images to {channels} channels; use 1 or 3")

"""``medzoo.extract_features``: pooled embeddings of a zoo backbone for a user's own loop.

The same forward as the linear probe's feature cache (:func:`medzoo.probe.pooled_features`,
``forward_head(pre_logits=True)``), batched, on the best device, in eval mode under
``torch.inference_mode``; uint8 images are normalised with the entry's mean and std.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from medzoo.errors import MedzooError
from medzoo.progress import on_terminal
from medzoo.progress import progress as show_progress


def _batches(images: torch.Tensor | Iterable[Any], batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise MedzooError(f"images must be [N, C, H, W]; got shape {tuple(images.shape)}")
        return [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    return (item[0] if isinstance(item, (tuple, list)) else item for item in images)


def extract_features(
    name: str,
    images: torch.Tensor | Iterable[Any],
    *,
    batch_size: int = 256,
    device: Any = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Pooled embeddings ``[N, num_features]`` (float32, on the CPU) of ``name``'s backbone.

    Args:
        name: a zoo name, ``hf-hub:`` or ``local-dir:``; a classifier gives its pre-logits.
        images: uint8 ``[N, C, H, W]`` (normalised here), a float tensor already normalised, or
            an iterable of such batches or of ``(images, labels)`` (a ``DataLoader``).
        batch_size: images per forward pass for a tensor input.
        device: ``None`` picks CUDA when present, else the CPU.
        progress: show progress by :mod:`medzoo.progress` (``None``: only on a terminal).
    """
    from medzoo.data.augment import normalize_uint8
    from medzoo.probe import pooled_features, resolve_device
    from medzoo.zoo.index import load

    if batch_size < 1:
        raise MedzooError(f"batch_size must be positive, got {batch_size}")
    target = resolve_device("auto") if device is None else torch.device(device)
    model = load(name, device=target)
    cfg = model.pretrained_cfg
    mean, std = cfg["mean"], cfg["std"]
    cuda = target.type == "cuda"
    if cuda:
        model.to(memory_format=torch.channels_last)
    batches = _batches(images, batch_size)
    enabled = on_terminal() if progress is None else bool(progress)
    chunks = []
    with torch.inference_mode():
        for batch in show_progress(batches, desc=f"features {name}", unit="batch", enabled=enabled):
            x = torch.as_tensor(batch).to(target, non_blocking=cuda)
            if x.ndim == 3:
                x = x[None]
            x = normalize_uint8(x, mean, std) if x.dtype == torch.uint8 else x.float()
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            chunks.append(pooled_features(model, x).float().cpu())
    if not chunks:
        return torch.zeros(0, int(getattr(model, "num_features", 0)))
    return torch.cat(chunks)

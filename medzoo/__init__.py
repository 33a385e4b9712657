"""medzoo: a zoo of self-supervised ResNet-18 backbones for MIMeta medical imaging.

The public API: :func:`load`, :func:`list_models`, :func:`model_info`, :func:`data_config`,
:func:`transforms`, :func:`extract_features` and ``__version__``; the torch dataset is
:class:`medzoo.data.dataset.MIMetaDataset`. Everything heavy (torch, timm) is imported inside these
functions, so ``import medzoo`` stays fast. Library code logs to ``logging.getLogger("medzoo")``
and never prints.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    import torch

    from medzoo.zoo.entry import ZooEntry

__version__ = "0.1.0"
__all__ = [
    "__version__",
    "data_config",
    "extract_features",
    "list_models",
    "load",
    "model_info",
    "transforms",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())


def load(
    name: str,
    num_classes: int | None = None,
    pretrained: bool = True,
    device: Any = None,
    in_chans: int | None = None,
    seed: int | None = None,
) -> torch.nn.Module:
    """A timm model in eval mode with the zoo entry's weights (sha256 checked before loading).

    ``name`` is a zoo name (``medzoo.list_models()``), ``hf-hub:ORG/NAME`` or ``local-dir:PATH``.
    ``num_classes`` puts a new head on a backbone; ``in_chans`` adapts conv1 as timm does;
    ``seed`` draws a random-init entry (``load("random-r18", seed=S)``). The model's
    ``pretrained_cfg`` is the entry's own, so ``timm.data.resolve_model_data_config`` gives its
    input size, mean and std.
    """
    from medzoo.zoo.index import load as _load

    return _load(
        name,
        num_classes=num_classes,
        pretrained=pretrained,
        device=device,
        in_chans=in_chans,
        seed=seed,
    )


def list_models(filter: str | list[str] = "") -> list[str]:
    """Names in the packaged catalog and the local registry, sorted; ``filter`` as in timm.

    ``filter`` is an fnmatch pattern (``"bt-*"``) or a list of them; empty lists everything.
    """
    from medzoo.zoo.index import list_models as _list_models

    return _list_models(filter)


def model_info(name: str) -> ZooEntry:
    """The :class:`~medzoo.zoo.entry.ZooEntry` for ``name``."""
    from medzoo.zoo.index import model_info as _model_info

    return _model_info(name)


def data_config(name: str) -> dict[str, Any]:
    """The entry's preprocessing as timm states it: ``timm.data.create_transform(**data_config)``.

    Keys: ``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``; equal
    to ``timm.data.resolve_model_data_config(medzoo.load(name), use_test_size=True)``.
    """
    from medzoo.data.transforms import data_config as _data_config

    return _data_config(model_info(name))


def transforms(name: str, training: bool = False) -> Callable[[Any], torch.Tensor]:
    """``timm.data.create_transform(**medzoo.data_config(name), is_training=training)``.

    Takes a PIL image in the entry's mode (``"L"`` for 1-channel entries, ``"RGB"`` otherwise).
    """
    from medzoo.data.transforms import create_transform

    return create_transform(model_info(name), training=training)


def extract_features(
    name: str,
    images: torch.Tensor | Iterable[Any],
    *,
    batch_size: int = 256,
    device: Any = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Pooled embeddings ``[N, num_features]`` of the backbone of ``name``, on the best device.

    ``images`` is a uint8 ``[N, C, H, W]`` tensor (normalised here with the entry's mean and std),
    a float tensor already normalised, or an iterable of batches (a ``DataLoader`` over
    :class:`~medzoo.data.dataset.MIMetaDataset`, whose items are ``(image, label)`` or images).
    """
    from medzoo.features import extract_features as _extract

    return _extract(name, images, batch_size=batch_size, device=device, progress=progress)

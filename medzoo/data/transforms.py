"""The preprocessing rule of a zoo entry, as timm states it: data config, transforms, uint8 pixels.

One rule for every consumer: ``medzoo.transforms(name)`` (a user's own loop), ``medzoo predict``,
the pixels an ``--include-preprocessing`` ONNX graph expects, and the metadata that export
records. It is timm's evaluation transform built from the entry's ``pretrained_cfg``: resize the
short side to ``floor(size / crop_pct)`` with the entry's interpolation, centre-crop to the input
size (``crop_mode = "center"``), then ``(pixels / 255 - mean) / std``. MIMeta images are already
224 px and centred, so with the catalog's ``crop_pct = 1.0`` the rule changes nothing on them;
on other images it keeps the aspect ratio instead of squashing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from medzoo.zoo.entry import ZooEntry

# The keys of timm.data.resolve_data_config's answer, which timm.data.create_transform takes.
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def data_config(entry: ZooEntry) -> dict[str, Any]:
    """``timm.data.resolve_model_data_config`` of a model built from ``entry`` (without building it).

    ``timm.data.create_transform(**data_config(entry))`` is the entry's evaluation transform.
    """
    from medzoo.zoo.entry import pretrained_cfg

    cfg = pretrained_cfg(entry)
    return {key: cfg[key] for key in DATA_CONFIG_KEYS}


def create_transform(entry: ZooEntry, *, training: bool = False) -> Callable[[Any], Any]:
    """``timm.data.create_transform(**data_config(entry), is_training=training)``.

    The evaluation transform takes a PIL image in the entry's mode (``L`` for one channel, ``RGB``
    for three) and returns a normalised float tensor ``[C, H, W]``. The training transform is
    timm's ImageNet recipe (random resized crop, flips): fine-tuning on MIMeta in medzoo itself
    uses the domain presets of :mod:`medzoo.data.augment` instead (no flips on organ slices).
    """
    import timm.data

    return timm.data.create_transform(**data_config(entry), is_training=training)


def pixel_transform(entry: ZooEntry) -> Callable[[Any], Any]:
    """The geometric half of the rule: PIL image -> uint8 tensor ``[C, H, W]`` (resized, cropped).

    What ``medzoo predict`` and an ``--include-preprocessing`` ONNX graph are fed; normalising
    its output with the entry's mean and std gives :func:`create_transform`'s output.
    """
    import timm.data

    return timm.data.create_transform(**data_config(entry), normalize=False)


def rule_metadata(entry: ZooEntry) -> dict[str, Any]:
    """The rule as an export records it (ONNX metadata, export.json)."""
    config = data_config(entry)
    return {
        "interpolation": config["interpolation"],
        "crop_pct": float(config["crop_pct"]),
        "crop_mode": config["crop_mode"],
        "resize": "short side to floor(size / crop_pct), then centre crop to input_size",
    }

"""medzoo: a zoo of self-supervised ResNet-18 backbones for MIMeta medical imaging.

The public API is small: :func:`load`, :func:`list_models`, :func:`model_info` and
``__version__``. Everything heavy (torch, timm) is imported inside these functions, so
``import medzoo`` stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "list_models", "load", "model_info"]


def load(
    name: str,
    num_classes: int | None = None,
    pretrained: bool = True,
    device: Any = None,
    in_chans: int | None = None,
    seed: int | None = None,
) -> Any:
    """A timm model in eval mode with the zoo entry's weights (sha256 checked before loading).

    ``name`` is a zoo name (``medzoo.list_models()``), ``hf-hub:ORG/NAME`` or ``local-dir:PATH``.
    ``num_classes`` puts a new head on a backbone; ``in_chans`` adapts conv1 as timm does;
    ``seed`` draws a random-init entry (``load("random-r18", seed=S)``).
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


def list_models() -> list[str]:
    """Names of every model in the packaged catalog and the local registry."""
    from medzoo.zoo.index import list_models as _list_models

    return _list_models()


def model_info(name: str) -> Any:
    """The :class:`~medzoo.zoo.entry.ZooEntry` for ``name``."""
    from medzoo.zoo.index import model_info as _model_info

    return _model_info(name)

"""``medzoo predict``: classify image files with a classifier entry, or embed them with a backbone.

Images (PNG, JPEG, TIFF, anything Pillow reads) are converted to the entry's channels (``L`` for
one, ``RGB`` for three), then go through the entry's preprocessing rule, timm's evaluation
transform (short side resized, centre crop, mean and std; :mod:`medzoo.data.transforms`). The same uint8 batch goes to
torch or, with ``onnx=True``, to the verified ONNX export in onnxruntime.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medzoo.errors import MedzooError


def open_image(path: str | os.PathLike[str], in_chans: int) -> Any:
    """A PIL image in the entry's mode (``L`` for one channel, ``RGB`` for three), fully read.

    16-bit and float TIFFs are rescaled to 0-255 (min to max), not clipped.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise MedzooError(f"image {path} does not exist")
    mode = {1: "L", 3: "RGB"}.get(in_chans)
    if mode is None:
        raise MedzooError(f"cannot feed images to a model with {in_chans} input channels (1 or 3)")
    try:
        with warnings.catch_warnings():
            # a DecompressionBombWarning (between 1x and 2x MAX_IMAGE_PIXELS) is an error here
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
        with image:
            if image.mode in ("I;16", "I;16B", "I", "F"):  # 16-bit / float TIFFs: rescale, no clip
                array = np.asarray(image, dtype=np.float64)
                span = float(array.max() - array.min()) or 1.0
                return Image.fromarray(
                    ((array - array.min()) / span * 255).round().astype(np.uint8)
                ).convert(mode)
            return image.convert(mode)
    except MedzooError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise MedzooError(
            f"{path} is too large to decode safely ({err}); give an image of at most "
            f"{Image.MAX_IMAGE_PIXELS} pixels"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as err:
        raise MedzooError(
            f"{path} is not an image Pillow can read ({type(err).__name__}); give PNG, JPEG or TIFF files"
        ) from None
    except (IndexError, KeyError, TypeError, ZeroDivisionError, struct.error) as err:
        # Pillow's decoders meet a damaged file's bytes with these too (TIFF tags, GIF frames)
        raise MedzooError(
            f"{path} is a damaged image ({type(err).__name__} while decoding it); give an intact "
            "PNG, JPEG or TIFF file"
        ) from None


def read_images(entry: Any, paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
    """uint8 ``[N, C, H, W]``: each file through the entry's preprocessing rule, before normalising.

    The rule is timm's evaluation transform for the entry (:mod:`medzoo.data.transforms`): short
    side resized to ``floor(size / crop_pct)``, centre crop; normalising the result gives exactly
    ``medzoo.transforms(name)(image)``.
    """
    from medzoo.data.transforms import pixel_transform

    transform = pixel_transform(entry)
    return np.stack([transform(open_image(p, entry.in_chans)).numpy() for p in paths])


def _onnx_outputs(name: str, entry: Any, images: np.ndarray, export_dir: Path) -> np.ndarray:
    from medzoo.export.onnx import export_model
    from medzoo.export.runtime import (
        MODEL_FILE,
        cpu_session,
        normalize,
        read_metadata,
        run_session,
        verify_onnx,
    )

    path = export_dir / MODEL_FILE
    if not path.is_file():
        export_model(name, export_dir)  # verified like any export; `medzoo export` does the same
    verify_onnx(path)  # the bytes the export recorded, before onnxruntime parses any of them
    meta = read_metadata(path)
    if meta.get("sha256", "") != (entry.sha256 or "") or meta.get("name") != name:
        raise MedzooError(
            f"{path} was not exported from the current weights of {name}; run `medzoo export {name} --out {export_dir}`"
        )
    feed = (
        images
        if meta.get("include_preprocessing") == "true"
        else normalize(images, entry.mean, entry.std).numpy()
    )
    return run_session(cpu_session(path), feed)


def _torch_outputs(name: str, entry: Any, images: np.ndarray) -> np.ndarray:
    import torch

    from medzoo.export.runtime import normalize
    from medzoo.zoo.index import load

    model = load(name)
    with torch.inference_mode():
        return model(normalize(images, entry.mean, entry.std)).float().numpy()


def predict(
    name: str,
    paths: Sequence[str | os.PathLike[str]],
    *,
    onnx: bool = False,
    top_k: int = 5,
    export_dir: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Top-k labels (classifier) or the embedding (backbone) of each image file.

    Args:
        name: a zoo name.
        paths: image files.
        onnx: run ``export_dir/model.onnx`` (default ``exports/NAME``) in onnxruntime; it is
            exported (and verified) first when missing.
        top_k: labels per image for a classifier (capped at its number of classes).

    Returns:
        One dict per image: ``{"path", "top_k": [{"label", "index", "probability"}]}`` for a
        classifier, ``{"path", "embedding": [...]}`` for a backbone.
    """
    from medzoo.export.onnx import default_export_dir
    from medzoo.zoo.index import model_info

    if top_k < 1:
        raise MedzooError(f"--top-k {top_k}: give a positive number of labels")
    if not paths:
        raise MedzooError("give at least one image file")
    entry = model_info(name)
    images = read_images(entry, paths)
    if onnx:
        where = Path(export_dir) if export_dir is not None else default_export_dir(name)
        outputs = _onnx_outputs(name, entry, images, where)
    else:
        outputs = _torch_outputs(name, entry, images)
    if entry.is_backbone:
        return [
            {"path": str(p), "embedding": [float(v) for v in row]} for p, row in zip(paths, outputs)
        ]
    labels = entry.label_names or tuple(str(i) for i in range(entry.num_classes))
    shifted = outputs - outputs.max(1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
    k = min(top_k, entry.num_classes)
    results = []
    for path, row in zip(paths, probabilities):
        order = np.argsort(-row, kind="stable")[:k]
        top = [{"label": labels[i], "index": int(i), "probability": float(row[i])} for i in order]
        results.append({"path": str(path), "top_k": top})
    return results

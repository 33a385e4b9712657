"""Parity of an ONNX export with its torch model: test images, the comparison, the check.

:func:`check_parity` runs the same uint8 images through the torch model (fp32) and an
onnxruntime CPU session of the exported file, and raises :class:`MedzooError` when they disagree
beyond the tolerance of the precision (or, in fp32, when a classifier's top-1 differs on any
image). :func:`~medzoo.export.onnx.export_module` calls it for every precision it writes; the
session helpers come from :mod:`medzoo.export.runtime`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medzoo.errors import MedzooError
from medzoo.export.runtime import cpu_session, model_input, run_session

FP32_TOLERANCE = 1e-4  # max |torch - ort| / max |torch|
FP16_TOLERANCE = 1e-2


def run_torch(module: Any, inputs: np.ndarray, batch_size: int = 32) -> np.ndarray:
    import torch

    with torch.inference_mode():
        outs = [
            module(torch.from_numpy(inputs[i : i + batch_size])).float().numpy()
            for i in range(0, len(inputs), batch_size)
        ]
    return np.concatenate(outs)


def compare(reference: np.ndarray, candidate: np.ndarray, *, classifier: bool) -> dict[str, Any]:
    """Max absolute error, relative error (max abs error / max |reference|), top-1 mismatches."""
    diff = float(np.max(np.abs(reference - candidate))) if reference.size else 0.0
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    out: dict[str, Any] = {
        "images": int(reference.shape[0]),
        "max_abs": diff,
        "max_rel": diff / max(scale, 1e-12),
    }
    if classifier:
        out["top1_mismatches"] = int(np.sum(reference.argmax(1) != candidate.argmax(1)))
    return out


@dataclass
class ParityInputs:
    """uint8 images ``[N, C, H, W]`` for the checks, and the labels of the real ones."""

    random: np.ndarray
    real: np.ndarray | None = None


def random_images(input_size: Sequence[int], count: int, seed: int = 0) -> np.ndarray:
    c, h, w = input_size
    return np.random.default_rng(seed).integers(0, 256, size=(count, c, h, w), dtype=np.uint8)


def check_parity(
    module: Any,
    path: Path,
    meta: Mapping[str, Any],
    inputs: ParityInputs,
    *,
    precision: str,
    include_preprocessing: bool,
) -> dict[str, Any]:
    """Run ``inputs`` through torch (fp32) and onnxruntime CPU; raise if they disagree.

    The random images go in as one batch of 1 and one of 7 (neither is the traced batch of 2),
    the real ones in batches of 32. Raises :class:`MedzooError` when the relative error exceeds
    the tolerance of ``precision`` or (fp32) when a classifier's top-1 differs on any image.
    """
    session = cpu_session(path)
    classifier = bool(meta["num_classes"])
    batches = [inputs.random[:1], inputs.random[1 : 1 + 7]]
    if inputs.real is not None and len(inputs.real):
        batches.append(inputs.real)
    reference, candidate = [], []
    for images in batches:
        feed = model_input(images, meta, include_preprocessing)
        ort_out = run_session(session, feed, batch_size=max(len(feed), 1) if len(feed) <= 7 else 32)
        if ort_out.shape[0] != len(feed):
            raise MedzooError(
                f"{path.name}: batch of {len(feed)} gave {ort_out.shape[0]} outputs; the batch axis is not dynamic"
            )
        reference.append(run_torch(module, feed))
        candidate.append(ort_out)
    result = compare(np.concatenate(reference), np.concatenate(candidate), classifier=classifier)
    result["batches_checked"] = [len(b) for b in batches]
    result["real_images"] = 0 if inputs.real is None else int(len(inputs.real))
    tolerance = FP16_TOLERANCE if precision == "fp16" else FP32_TOLERANCE
    result["tolerance"] = tolerance
    if result["max_rel"] > tolerance:
        raise MedzooError(
            f"{meta['name']} {precision} export failed parity: relative error {result['max_rel']:.2e} "
            f"> {tolerance:.0e} (max abs {result['max_abs']:.2e}); nothing written"
        )
    if classifier and precision == "fp32" and result["top1_mismatches"]:
        raise MedzooError(
            f"{meta['name']} fp32 export failed parity: top-1 differs from torch on "
            f"{result['top1_mismatches']} of {result['images']} images; nothing written"
        )
    return result

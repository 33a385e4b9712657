"""Reader speed: this package's ``load_split`` against ``mimeta.MIMeta.__getitem__``.

Both produce the same thing, a uint8 ``[N, C, 224, 224]`` tensor of one split: ``mimeta`` one
image at a time (HDF5 row -> PIL image -> ``PILToTensor``, resized only if the images are not
224 px), then stacked; ``load_split`` with a few large sorted slab reads. Each side runs
``repeats`` times after a warm-up read of the same rows (so both find the file in the page
cache) and the best time counts.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from medzoo.data.mimeta import load_split, read_info, split_indices, task_info
from medzoo.errors import MedzooError


def _mimeta_read(
    root: str, dataset_id: str, task: str, split: str, limit: int, size: int
) -> torch.Tensor:
    import mimeta
    from torchvision.transforms import v2

    steps: list[Any] = [v2.PILToTensor()]
    info = read_info(root, dataset_id)
    if list(info["input_size"][1:]) != [size, size]:
        steps.append(v2.Resize((size, size), antialias=True))
    dataset = mimeta.MIMeta(root, dataset_id, task, split=split, transform=v2.Compose(steps))
    count = min(limit, len(dataset))
    return torch.stack([dataset[i][0] for i in range(count)])


def run_bench(
    root: str | os.PathLike[str],
    dataset_id: str = "crc",
    split: str = "train",
    *,
    limit: int = 2000,
    image_size: int = 224,
    repeats: int = 3,
) -> dict[str, Any]:
    """Images per second of both readers on the same rows; returns the figures and the ratio."""
    root = str(root)
    info = read_info(root, dataset_id)
    task = task_info(info)["task_name"]
    rows = split_indices(root, dataset_id, split)
    count = min(limit, len(rows))
    if count == 0:
        raise MedzooError(f"split {split} of {dataset_id} is empty; nothing to benchmark")

    def ours() -> torch.Tensor:
        # load_split reads the whole split; time it and scale to images per second
        return load_split(root, dataset_id, split, image_size=image_size).images

    def theirs() -> torch.Tensor:
        return _mimeta_read(root, dataset_id, task, split, count, image_size)

    timings = {}
    outputs = {}
    for name, reader in (("mimeta", theirs), ("medzoo", ours)):
        outputs[name] = reader()  # warm-up: page cache, imports
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            reader()
            best = min(best, time.perf_counter() - start)
        timings[name] = best
    ours_images = outputs["medzoo"]
    same = (
        bool(torch.equal(ours_images[:count], outputs["mimeta"]))
        if image_size == int(info["input_size"][-1])
        else None
    )
    medzoo_rate = len(ours_images) / timings["medzoo"]
    mimeta_rate = count / timings["mimeta"]
    return {
        "dataset": dataset_id,
        "split": split,
        "images_medzoo": int(len(ours_images)),
        "images_mimeta": int(count),
        "image_size": image_size,
        "channels": int(ours_images.shape[1]),
        "medzoo_images_per_s": medzoo_rate,
        "mimeta_images_per_s": mimeta_rate,
        "ratio": medzoo_rate / mimeta_rate,
        "identical_pixels": same,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
    }


def format_bench(result: dict[str, Any]) -> str:
    return (
        f"{result['dataset']}/{result['split']} at {result['image_size']} px: "
        f"medzoo load_split {result['medzoo_images_per_s']:,.0f} img/s "
        f"({result['images_medzoo']} images), mimeta.MIMeta[i] {result['mimeta_images_per_s']:,.0f} "
        f"img/s ({result['images_mimeta']} images); ratio {result['ratio']:.1f}x"
        + (
            ""
            if result["identical_pixels"] is None
            else f"; identical pixels: {result['identical_pixels']}"
        )
    )

"""One init prepared for one dataset: its zoo entry, channels, statistics and cached features."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medzoo.evaluation.recipe import EvalConfig
from medzoo.probe import cached_features, data_fingerprint, extract_features
from medzoo.zoo.entry import adapt_stats


@dataclass
class InitContext:
    """One init prepared for one dataset: entry, channels, statistics, cache identity."""

    name: str
    entry: Any
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights_id: str
    seed: int | None = None  # the draw of a random-init backbone (None: fixed weights)


def is_random(name: str) -> bool:
    """A random-init entry: a new backbone per evaluation seed."""
    from medzoo.zoo.index import model_info

    return model_info(name).method == "random"


def init_context(name: str, in_chans: int, seed: int | None = None) -> InitContext:
    """``seed`` draws a random-init backbone; it must be None for entries with weights."""
    from medzoo.zoo.index import model_info

    entry = model_info(name)
    seed = seed if entry.method == "random" else None
    # the key of the weights: their sha256, or what makes them reproducible without a file
    # (a random backbone: its seed and its live residual branches, zero_init_last=False)
    weights_id = entry.sha256 or (
        f"timm:{entry.timm_name}"
        if entry.timm_name
        else f"{entry.method}:seed{seed or 0}:zero_init_last=False:{entry.arch}"
    )
    return InitContext(
        name, entry, in_chans, adapt_stats(entry.mean, in_chans), adapt_stats(entry.std, in_chans),
        weights_id, seed,
    )  # fmt: skip


def split_features(
    ctx: InitContext,
    splits: dict[str, Any],
    root: Path,
    dataset: str,
    cfg: EvalConfig,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Features of each split in ``splits``, from the cache or extracted once with the frozen
    backbone (evaluation asks for test only when it scores)."""
    from medzoo.zoo.index import load

    model = None
    out = {}
    for split, data in splits.items():
        material = {
            "weights": ctx.weights_id, "arch": ctx.entry.arch, "in_chans": ctx.in_chans,
            "dataset": dataset, "task": data.task, "split": split, "image_size": data.image_size,
            "mean": ctx.mean, "std": ctx.std, "data": data_fingerprint(root, dataset, data.labels, data.indices),
        }  # fmt: skip

        def compute(data: Any = data) -> torch.Tensor:
            nonlocal model
            if model is None:
                model = load(ctx.name, in_chans=ctx.in_chans, seed=ctx.seed)
            return extract_features(
                model,
                data.images,
                ctx.mean,
                ctx.std,
                in_chans=ctx.in_chans,
                device=device,
                batch_size=cfg.probe.batch_size,
            )

        out[split], _ = cached_features(
            material, data.labels, compute, use_cache=cfg.cache_features
        )
    return out

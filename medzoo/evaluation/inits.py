"""One init prepared for one dataset: its zoo entry, channels, statistics and cached features."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medzoo.evaluation.recipe import EvalConfig
from medzoo.probe import cached_features, data_fingerprint, extract_features


@dataclass
class InitContext:
    """One init prepared for one dataset: entry, channels, statistics, cache identity."""

    name: str
    entry: Any
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights_id: str


def _stats(values: tuple[float, ...], chans: int) -> tuple[float, ...]:
    return tuple(values) if len(values) == chans else (sum(values) / len(values),) * chans


def init_context(name: str, in_chans: int) -> InitContext:
    from medzoo.zoo.index import model_info

    entry = model_info(name)
    # the key of the weights: their sha256, or what makes them reproducible without a file
    weights_id = entry.sha256 or (
        f"timm:{entry.timm_name}" if entry.timm_name else f"{entry.method}:seed0:{entry.arch}"
    )
    return InitContext(
        name, entry, in_chans, _stats(entry.mean, in_chans), _stats(entry.std, in_chans), weights_id
    )


def split_features(
    ctx: InitContext,
    splits: dict[str, Any],
    root: Path,
    dataset: str,
    cfg: EvalConfig,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Features of every split, from the cache or extracted once with the frozen backbone."""
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
                model = load(ctx.name, in_chans=ctx.in_chans)
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

"""Multi-domain pre-training: several datasets or domains in one run, each sample augmented with
its own dataset's preset, channels unified by one stated rule, sampled by per-entry weights.

``data.domain = ["crc", "derm"]`` and ``data.weights = [1, 1]``: every epoch draws
``weight / sum(weights)`` of its samples from each entry (without replacement while an entry
has images left, then again from the start), so a small dataset is not drowned by a large one.
(:class:`medzoo.data.batches.WeightedBatchSource`). Without weights the entries are simply concatenated (each image once an epoch). Images are
converted to ``data.channels`` by :data:`medzoo.data.channels.RULE`. The plan is recorded in
the run folder and the zoo entry as ``mix.json``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from medzoo.config import PretrainConfig


@dataclasses.dataclass(frozen=True)
class MixPart:
    entry: str  # as named in data.domain
    datasets: tuple[str, ...]
    preset: str  # augmentation preset of its samples
    channels: int  # as stored (converted to data.channels by the rule)
    count: int  # pre-training images
    weight: float  # share of each epoch (normalised)


def entries(cfg: PretrainConfig) -> tuple[str, ...]:
    domain = cfg.data.domain
    return (domain,) if isinstance(domain, str) else tuple(domain)


def plan_mix(cfg: PretrainConfig, root: str | os.PathLike[str]) -> list[MixPart]:
    """The parts of a mix from metadata alone (no pixel is read)."""
    from medzoo.data.domains import domain_preset, resolve_domain
    from medzoo.data.mimeta import read_info, split_indices

    names = entries(cfg)
    total_images, parts = 0, []
    for entry in names:
        ids = resolve_domain(entry, root)
        count = sum(len(split_indices(root, d, list(cfg.data.splits))) for d in ids)
        channels = int(read_info(root, ids[0])["input_size"][0])
        preset = cfg.augment.preset
        if preset == "auto":
            preset = domain_preset(entry, root)
        parts.append([entry, ids, preset, channels, count])
        total_images += count
    weights = cfg.data.weights or tuple(part[4] / total_images for part in parts)
    total_weight = sum(weights)
    return [MixPart(*part, weight=w / total_weight) for part, w in zip(parts, weights)]


def mix_record(parts: Sequence[MixPart], channels: int, weighted: bool) -> dict[str, Any]:
    """What ``mix.json`` says: the parts, the channel rule, and how an epoch is drawn."""
    from medzoo.data.channels import RULE

    return {
        "parts": [dataclasses.asdict(part) for part in parts],
        "channels": channels,
        "channel_rule": RULE[channels],
        "sampling": "data.weights: each epoch draws weight x epoch size from each part"
        if weighted
        else "concatenated: each image once an epoch",
    }


def load_mix_images(
    cfg: PretrainConfig, root: str | os.PathLike[str], parts: Sequence[MixPart]
) -> Tensor:
    """The images of every part, in the plan's order, at ``data.channels``."""
    from medzoo.data.channels import convert_channels
    from medzoo.data.domains import load_domain

    total = sum(part.count for part in parts)
    pieces = []
    for part in parts:
        budget = cfg.data.memory_budget_gb * part.count / max(total, 1)
        split = load_domain(
            root, part.entry, list(cfg.data.splits), image_size=cfg.data.image_size,
            memory_budget_gb=budget,
        )  # fmt: skip
        pieces.append(convert_channels(split.images, cfg.data.channels))
    return torch.cat(pieces).contiguous(memory_format=torch.channels_last)


def groups_of(parts: Sequence[MixPart]) -> Tensor:
    """int64 ``[N]``: the part of each image, in load order."""
    return torch.repeat_interleave(
        torch.arange(len(parts)), torch.tensor([part.count for part in parts])
    )


class MixedAugment:
    """Two views per sample, each sample with its own part's :class:`TwoViewAugment`."""

    def __init__(self, augments: Sequence[Any]) -> None:
        self.augments = list(augments)

    def __call__(
        self,
        batch: Tensor,
        *,
        generator: torch.Generator | None = None,
        groups: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        if groups is None:  # the monitor's val views: the first part's rules
            return self.augments[0](batch, generator=generator)
        view1 = view2 = None
        for part in groups.unique().tolist():  # groups live on the CPU: no device sync
            rows = (groups == part).nonzero().flatten().to(batch.device)
            v1, v2 = self.augments[part](batch[rows], generator=generator)
            if view1 is None:
                shape = (len(batch), *v1.shape[1:])
                view1 = v1.new_empty(shape)
                view2 = v2.new_empty(shape)
            view1[rows], view2[rows] = v1, v2
        return view1, view2

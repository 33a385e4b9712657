"""Pre-training images and their batches.

``BatchSource`` hands out uint8 batches in an order seeded by (seed, epoch), each rank its slice
of the global batch, so a resumed run sees exactly what an uninterrupted one would. Under torchrun
the processes of a host share one memory budget and one memory map.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from medzoo.config import PretrainConfig
from medzoo.errors import MedzooError
from medzoo.runtime import Runtime


class BatchSource:
    """Deterministic batches of uint8 images: epoch permutations seeded by (seed, epoch)."""

    def __init__(
        self, images: torch.Tensor, batch_size: int, seed: int, rank: int, world_size: int
    ) -> None:
        if batch_size % world_size:
            raise MedzooError(
                f"training.batch_size = {batch_size} is not divisible by the {world_size} processes"
            )
        if len(images) < batch_size:
            raise MedzooError(
                f"training.batch_size = {batch_size} exceeds the {len(images)} pre-training images: lower it"
            )
        self.images = images
        self.batch_size = batch_size
        self.local_batch = batch_size // world_size
        self.seed = seed
        self.rank = rank
        self.steps_per_epoch = len(images) // batch_size
        self._perm_epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def indices(self, step: int) -> torch.Tensor:
        epoch, within = divmod(step, self.steps_per_epoch)
        if epoch != self._perm_epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm = self.epoch_order(generator)
            self._perm_epoch = epoch
        start = within * self.batch_size + self.rank * self.local_batch
        # Sorted rows read faster from a memory map; order within a batch does not change the loss.
        return self._perm[start : start + self.local_batch].sort().values

    def epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        """The rows of one epoch, in order (a permutation of all images)."""
        return torch.randperm(len(self.images), generator=generator)

    def load(self, step: int, pin: bool) -> torch.Tensor:
        batch = self.images[self.indices(step)]
        return batch.pin_memory() if pin else batch


class WeightedBatchSource(BatchSource):
    """Batches whose epochs draw ``weight`` of their samples from each part of a mix.

    ``parts`` are :class:`medzoo.data.mix.MixPart` (``count`` images each, in load order, and a
    normalised ``weight``); a part smaller than its share is drawn again from the start.
    """

    def __init__(self, images: torch.Tensor, parts: Sequence[Any], *args: Any, **kwargs: Any):
        self.parts = list(parts)
        super().__init__(images, *args, **kwargs)

    def epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        total = len(self.images)
        shares = [round(part.weight * total) for part in self.parts]
        shares[-1] = total - sum(shares[:-1])
        offset, chosen = 0, []
        for part, share in zip(self.parts, shares):
            repeats = -(-max(share, 0) // part.count)  # as many passes as the share needs
            rows = torch.cat(
                [torch.randperm(part.count, generator=generator) for _ in range(repeats)]
            )
            chosen.append(offset + rows[:share])
            offset += part.count
        order = torch.cat(chosen)
        return order[torch.randperm(len(order), generator=generator)]


def synthetic_images(count: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random uint8 images for throughput benchmarks (no data root needed)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(
        0, 256, (count, channels, size, size), dtype=torch.uint8, generator=generator
    )


def load_pretraining_images(
    cfg: PretrainConfig, data_root: str | os.PathLike[str] | None
) -> torch.Tensor:
    from medzoo.config import data_root as resolve_root
    from medzoo.data.domains import load_domain

    root = resolve_root(data_root or cfg.data.root)
    if not root.is_dir():
        raise MedzooError(
            f"data root {root} does not exist: run `medzoo data fetch` (or `medzoo data synth {root}` "
            "for synthetic data), or point --data-root / MEDZOO_DATA at your MIMeta folder"
        )
    if not isinstance(cfg.data.domain, str):  # a multi-domain mix
        from medzoo.data.mix import load_mix_images, plan_mix

        return load_mix_images(cfg, root, plan_mix(cfg, root))
    split = load_domain(
        root,
        cfg.data.domain,
        list(cfg.data.splits),
        image_size=cfg.data.image_size,
        memory_budget_gb=cfg.data.memory_budget_gb,
    )
    if split.images.shape[1] != cfg.data.channels:
        raise MedzooError(
            f"domain {cfg.data.domain} has {split.images.shape[1]} channel(s) but data.channels = "
            f"{cfg.data.channels}: set data.channels and model.in_chans to {split.images.shape[1]}"
        )
    return split.images


def load_images_per_rank(
    cfg: PretrainConfig, data_root: str | os.PathLike[str] | None, runtime: Runtime
) -> torch.Tensor:
    """Load the pre-training images once per host under torchrun.

    Every process of a host shares one memory budget (8 GPUs must not hold 8 copies of crc's
    12.8 GB), so above its share the split is memory-mapped; the first process of each host
    writes the map and the others wait, then map the same file through the page cache.
    """
    if runtime.world_size == 1:
        return load_pretraining_images(cfg, data_root)
    import dataclasses

    import torch.distributed as dist

    per_host = int(os.environ.get("LOCAL_WORLD_SIZE", runtime.world_size))
    share = dataclasses.replace(cfg.data, memory_budget_gb=cfg.data.memory_budget_gb / per_host)
    cfg = dataclasses.replace(cfg, data=share)
    images = load_pretraining_images(cfg, data_root) if runtime.local_rank == 0 else None
    dist.barrier()
    return images if images is not None else load_pretraining_images(cfg, data_root)

"""An online representation monitor for pre-training: is the backbone learning, or collapsing?

The Barlow Twins loss says little about downstream quality, so every
``training.monitor_every_steps`` steps (and at the start and the end) the monitor measures, on
fixed subsets chosen once per run:

- **kNN accuracy** of the backbone's pooled features on a stratified subset of the *val* split
  (never test), against a stratified labelled subset of *train*: k = 20 nearest neighbours by
  cosine similarity, each voting ``exp(similarity / T)`` with T = 0.07, as solo-learn's
  ``WeightedKNNClassifier`` and InstDisc (Wu et al. 2018) do;
- the **effective rank** (Roy & Vetterli 2007: the exponential of the entropy of the normalised
  singular values) of the projector's embeddings of the val subset, a collapse alarm;
- the **mean on-diagonal cross-correlation** of the two views' standardised embeddings, the
  quantity the Barlow Twins invariance term drives to 1.

The views are made by the run's own augmentation with a fixed generator, so successive readings
differ only because the model changed. The model is evaluated in eval mode without gradients on
the process that owns the monitor (rank 0 under torchrun; the others wait at their next
collective), and put back in train mode. Nothing here touches the training RNG streams, so a
monitored run trains exactly as an unmonitored one.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medzoo.errors import MedzooError


@dataclass(frozen=True)
class MonitorData:
    """The fixed labelled subsets the monitor measures on (uint8 images, int64 labels)."""

    train_images: Tensor
    train_labels: Tensor
    val_images: Tensor
    val_labels: Tensor
    num_classes: int


# ------------------------------------------------------------------------------ the metrics


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Temperature-weighted cosine kNN accuracy (solo-learn ``WeightedKNNClassifier``)."""
    train = nn.functional.normalize(train_features.float(), dim=1)
    test = nn.functional.normalize(test_features.float(), dim=1)
    k = min(k, len(train))
    similarity, neighbours = (test @ train.T).topk(k, dim=1)
    weights = (similarity / temperature).exp()
    votes = torch.zeros(len(test), num_classes, dtype=weights.dtype, device=weights.device)
    votes.scatter_add_(1, train_labels[neighbours], weights)
    return (votes.argmax(dim=1) == test_labels).float().mean().item()


def effective_rank(embeddings: Tensor) -> float:
    """exp(entropy) of the normalised singular values of the centred ``[N, D]`` embeddings."""
    centred = embeddings.float() - embeddings.float().mean(dim=0)
    singular = torch.linalg.svdvals(centred)
    total = singular.sum()
    if not torch.isfinite(total) or total <= 0:
        return 0.0
    p = singular / total
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


def on_diagonal_correlation(z1: Tensor, z2: Tensor) -> float:
    """Mean diagonal of the Barlow Twins cross-correlation of two views' embeddings."""
    z1 = (z1.float() - z1.float().mean(0)) / (z1.float().std(0) + 1e-6)
    z2 = (z2.float() - z2.float().mean(0)) / (z2.float().std(0) + 1e-6)
    return ((z1 * z2).sum(0) / (len(z1) - 1)).mean().item()


# ------------------------------------------------------------------------------ the data


def load_monitor_data(
    root: str | os.PathLike[str],
    datasets: Sequence[str],
    *,
    image_size: int,
    channels: int,
    val_size: int,
    train_size: int,
    seed: int,
) -> MonitorData | str:
    """Stratified, seeded subsets of val and train of ``datasets``; a reason string if there is
    nothing to measure on (no val split, no labels, fewer than two classes).

    Datasets with different label spaces (class names) are given disjoint label ranges (crc's
    class 0 is not derm's class 0), so kNN also measures whether the datasets are told apart;
    datasets sharing one (the three organ views of liver) share one range.
    """
    from medzoo.data.domains import load_subset

    val_parts, train_parts, offset = [], [], 0
    val_labels, train_labels = [], []
    offsets: dict[tuple[str, ...], int] = {}  # one label range per label space (liver: one)
    try:
        for dataset_id in datasets:
            val = load_subset(root, dataset_id, "val", val_size // len(datasets), seed, image_size)
            train = load_subset(
                root, dataset_id, "train", train_size // len(datasets), seed + 1, image_size
            )
            val_parts.append(_to_channels(val.images, channels))
            train_parts.append(_to_channels(train.images, channels))
            if val.class_names not in offsets:
                offsets[val.class_names] = offset
                offset += len(val.class_names)
            val_labels.append(val.labels + offsets[val.class_names])
            train_labels.append(train.labels + offsets[val.class_names])
    except MedzooError as err:
        return f"no labelled val/train subset ({err})"
    labels = torch.cat(val_labels)
    if len(labels.unique()) < 2:
        return "the val subset has fewer than two classes"
    return MonitorData(
        torch.cat(train_parts), torch.cat(train_labels), torch.cat(val_parts), labels, offset
    )


def _to_channels(images: Tensor, channels: int) -> Tensor:
    from medzoo.data.channels import convert_channels

    return convert_channels(images, channels)


# ------------------------------------------------------------------------------ the monitor


class Monitor:
    """Measures a Barlow Twins model on :class:`MonitorData`; see the module docstring."""

    def __init__(
        self,
        data: MonitorData,
        augment: Callable[..., tuple[Tensor, Tensor]],
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        *,
        k: int = 20,
        temperature: float = 0.07,
        batch_size: int = 256,
    ) -> None:
        self.data, self.augment, self.device = data, augment, device
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.k, self.temperature, self.batch_size = k, temperature, batch_size

    def _batches(self, images: Tensor):
        for start in range(0, len(images), self.batch_size):
            yield images[start : start + self.batch_size].to(self.device)

    def _features(self, backbone: nn.Module, images: Tensor) -> Tensor:
        out = []
        for batch in self._batches(images):
            x = (batch.float() / 255 - self.mean) / self.std
            out.append(backbone(x).float())
        return torch.cat(out)

    def _views(self, model: nn.Module) -> tuple[Tensor, Tensor]:
        generator = torch.Generator(device=self.device).manual_seed(12345)
        z1, z2 = [], []
        for batch in self._batches(self.data.val_images):
            view1, view2 = self.augment(batch, generator=generator)
            z1.append(model(view1).float())
            z2.append(model(view2).float())
        return torch.cat(z1), torch.cat(z2)

    @torch.no_grad()
    def measure(self, model: nn.Module) -> dict[str, float]:
        """kNN accuracy, effective rank, on-diagonal correlation and the seconds they took."""
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            train = self._features(model.backbone, self.data.train_images)
            val = self._features(model.backbone, self.data.val_images)
            z1, z2 = self._views(model)
        finally:
            model.train(was_training)
        data = self.data
        return {
            "knn_acc": knn_accuracy(
                train,
                data.train_labels.to(self.device),
                val,
                data.val_labels.to(self.device),
                num_classes=data.num_classes,
                k=self.k,
                temperature=self.temperature,
            ),  # fmt: skip
            "effective_rank": effective_rank(z1),
            "diag_corr": on_diagonal_correlation(z1, z2),
            "monitor_s": time.perf_counter() - start,
        }


class CollapseWatch:
    """Collapse when the effective rank stays below ``threshold`` for ``patience`` readings."""

    def __init__(self, threshold: float, patience: int) -> None:
        self.threshold, self.patience = threshold, patience
        self.low: list[int] = []  # steps of consecutive low readings

    def update(self, step: int, rank: float) -> None:
        self.low = [*self.low, step] if rank < self.threshold else []

    @property
    def suspect(self) -> bool:
        """The latest reading is low: checkpoints wait, so the last good one is kept."""
        return bool(self.low)

    @property
    def collapsed(self) -> bool:
        return len(self.low) >= self.patience


# ------------------------------------------------------------------------------ the plot


def summary_line(log_path: Path) -> str | None:
    """One line: kNN accuracy and effective rank at the first and last reading, or None."""
    import json

    if not log_path.is_file():
        return None
    readings = [r for r in map(json.loads, log_path.read_text().splitlines()) if "knn_acc" in r]
    if not readings:
        return None
    first, last = readings[0], readings[-1]
    cost = sum(r["monitor_s"] for r in readings)
    return (
        f"monitor: kNN accuracy on val {100 * first['knn_acc']:.1f}% (step {first['step']}) -> "
        f"{100 * last['knn_acc']:.1f}% (step {last['step']}), effective rank "
        f"{first['effective_rank']:.1f} -> {last['effective_rank']:.1f}, on-diagonal "
        f"correlation {first['diag_corr']:.2f} -> {last['diag_corr']:.2f} "
        f"({len(readings)} readings, {cost:.0f} s); plot: {log_path.parent / 'monitor.png'}"
    )


def plot_monitor(log_path: Path, out: Path) -> None:
    """Loss, kNN accuracy and effective rank against steps from ``train_log.jsonl``."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medzoo.provenance import atomic_path

    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    readings = [r for r in records if "knn_acc" in r]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    series: list[tuple[Any, list[tuple[int, float]], str]] = [
        (axes[0], losses, "Barlow Twins loss"),
        (axes[1], [(r["step"], 100 * r["knn_acc"]) for r in readings], "kNN accuracy on val (%)"),
        (axes[2], [(r["step"], r["effective_rank"]) for r in readings], "effective rank"),
    ]
    for axis, points, title in series:
        if points:
            steps, values = np.array(points, dtype=float).T
            axis.plot(steps, values, marker="o" if axis is not axes[0] else None, ms=3)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)

"""Full and surgical fine-tuning with early stopping on validation accuracy.

Full fine-tuning trains every parameter; surgical fine-tuning trains only the chosen layer
groups (``medzoo.models.RESNET_LAYER_GROUPS``) and the head, and keeps the BatchNorm layers of the
frozen groups in eval mode after every ``model.train()`` so their running statistics stay those
of the pre-trained weights. Training images stay uint8 until they are on the device, where the
domain's augmentation preset makes one normalised view per image (no horizontal flip for CT
organs). On CUDA the model runs channels_last under bf16 autocast; on CPU in fp32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from medzoo.errors import MedzooError
from medzoo.models import freeze_except, set_frozen_bn_eval
from medzoo.probe import match_channels


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyperparameters of full fine-tuning (the ``[finetune]`` recipe table)."""

    epochs: int = 30  # upper bound: early stopping on val usually ends sooner
    lr: float = 1e-4  # AdamW; pre-trained weights move little at this rate
    batch_size: int = 64
    weight_decay: float = 1e-4
    patience: int = 5  # epochs without a better val accuracy before stopping
    eval_batch_size: int = 256
    crop_scale: tuple[float, float] = (0.5, 1.0)  # milder than pre-training's (0.08, 1)
    augment: bool = True  # the domain preset's flips/rotations/jitter; no blur or solarisation
    max_steps_per_epoch: int | None = None  # cap (smoke runs); None: one pass over the subset


@dataclass(frozen=True)
class SurgicalConfig(FinetuneConfig):
    """Surgical fine-tuning: only ``groups`` and the head train (the ``[surgical]`` table)."""

    lr: float = 1e-3  # fewer trainable parameters tolerate a larger step
    groups: tuple[str, ...] = ("layer4",)  # used by the strategy name "surgical"


@dataclass
class FinetuneResult:
    model: nn.Module
    best_epoch: int
    val_accuracy: float
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """bf16 on CUDA (auto), fp16 if asked, None (fp32) on CPU or when asked."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    return torch.bfloat16


def predict_probs(
    model: nn.Module,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    in_chans: int,
    device: torch.device,
    batch_size: int = 256,
    precision: str = "auto",
) -> np.ndarray:
    """Softmax probabilities ``[N, K]`` of uint8 ``images`` (eval mode, no augmentation)."""
    from medzoo.data.augment import normalize_uint8

    model.eval()
    dtype = autocast_dtype(device, precision)
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = match_channels(images[start : start + batch_size], in_chans).to(device)
            x = normalize_uint8(batch, mean, std)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(x)
            out.append(torch.softmax(logits.float(), 1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def _batches(
    n: int, batch_size: int, generator: torch.Generator, cap: int | None
) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    batches = list(order.split(batch_size))
    # a last batch of one image would make BatchNorm's batch statistics undefined
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()
    return batches[:cap] if cap else batches


def finetune(
    model: nn.Module,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    *,
    config: FinetuneConfig,
    mean: Sequence[float],
    std: Sequence[float],
    in_chans: int,
    device: torch.device,
    trainable_groups: Sequence[str] | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    seed: int = 0,
    precision: str = "auto",
    train_subset: np.ndarray | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` (a timm classifier) and restore its best-on-val weights.

    Args:
        trainable_groups: None for full fine-tuning; else the layer groups to train besides the
            head (surgical).
        augment: uint8 batch on the device -> normalised float batch (one augmented view);
            None: plain normalisation.
        train_subset: rows of ``train_images`` to train on (a label fraction); None: all.
            Batches are gathered from these rows, so the subset is never copied whole (100 %
            of crc at 224 px is 12.8 GB).
    """
    from medzoo.data.augment import normalize_uint8

    rows = (
        torch.arange(len(train_labels)) if train_subset is None else torch.as_tensor(train_subset)
    )
    if len(rows) < 2:
        raise MedzooError(
            "fine-tuning needs at least 2 training images; use a larger label fraction"
        )
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    cuda = device.type == "cuda"
    model.to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    if trainable_groups is None:
        model.requires_grad_(True)
    else:
        freeze_except(model, [*trainable_groups, "head"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = len(
        _batches(len(rows), config.batch_size, torch.Generator(), config.max_steps_per_epoch)
    )
    total_steps = max(1, steps_per_epoch * config.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    dtype = autocast_dtype(device, precision)
    val_y = val_labels.numpy()
    best_accuracy, best_epoch, best_state, stale = -1.0, -1, None, 0
    history: list[dict[str, float]] = []
    epoch = -1
    for epoch in range(config.epochs):
        model.train()
        if trainable_groups is not None:
            set_frozen_bn_eval(model)
        losses = []
        for idx in _batches(len(rows), config.batch_size, generator, config.max_steps_per_epoch):
            idx = rows[idx]
            images = match_channels(train_images[idx], in_chans).to(device, non_blocking=cuda)
            labels = train_labels[idx].to(device, non_blocking=cuda)
            x = augment(images) if augment is not None else normalize_uint8(images, mean, std)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(x)
            loss = nn.functional.cross_entropy(logits.float(), labels)  # raw logits, no softmax
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        probs = predict_probs(
            model, val_images, mean, std, in_chans=in_chans, device=device,
            batch_size=config.eval_batch_size, precision=precision,
        )  # fmt: skip
        accuracy = float((probs.argmax(1) == val_y).mean()) if len(val_y) else 0.0
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_accuracy": accuracy})
        if accuracy > best_accuracy:
            best_accuracy, best_epoch, stale = accuracy, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FinetuneResult(model, best_epoch, best_accuracy, epoch + 1, history)


def augmenter(
    dataset: str,
    config: FinetuneConfig,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int,
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """One augmented, normalised view per uint8 image with ``dataset``'s preset (or None)."""
    if not config.augment:
        return None
    from medzoo.config import AugmentConfig
    from medzoo.data.augment import TwoViewAugment, resolve_augment
    from medzoo.data.domains import domain_preset

    # the domain preset (no horizontal flip for CT organs), milder crops, and none of the
    # pre-training-only distortions: blur, solarisation, grayscale (stain colour is signal)
    params = resolve_augment(
        AugmentConfig(
            preset=domain_preset(dataset),
            crop_scale=config.crop_scale,
            blur_prob=(0.0, 0.0),
            solarize_prob=(0.0, 0.0),
            grayscale_prob=0.0,
        )
    )
    augment = TwoViewAugment(params, image_size, tuple(mean), tuple(std))
    return lambda images: augment.single(images, view=0)


def finetune_split(
    init: str,
    splits: dict[str, Any],
    subset: np.ndarray,
    *,
    config: FinetuneConfig,
    mean: Sequence[float],
    std: Sequence[float],
    in_chans: int,
    device: torch.device,
    trainable_groups: Sequence[str] | None,
    dataset: str,
    seed: int,
    precision: str = "auto",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fine-tune zoo model ``init`` on ``subset`` of the train split (val for early stopping);
    returns the test probabilities and what the run chose."""
    from medzoo.zoo.index import load

    train, val, test = splits["train"], splits["val"], splits["test"]
    torch.manual_seed(seed)  # the new head's initialisation
    model = load(init, num_classes=train.num_classes, in_chans=in_chans)
    result = finetune(
        model, train.images, train.labels, val.images, val.labels, config=config,
        mean=mean, std=std, in_chans=in_chans, device=device, trainable_groups=trainable_groups,
        augment=augmenter(dataset, config, mean, std, train.image_size), seed=seed,
        precision=precision, train_subset=subset,
    )  # fmt: skip
    probs = predict_probs(
        result.model, test.images, mean, std, in_chans=in_chans, device=device,
        batch_size=config.eval_batch_size, precision=precision,
    )  # fmt: skip
    chosen = {
        "val_accuracy": result.val_accuracy,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
    }
    return probs, chosen

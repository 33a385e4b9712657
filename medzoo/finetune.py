"""Full and surgical fine-tuning, budgeted in optimiser steps, selected on validation.

A run trains for at least ``min_steps`` and at most ``max_steps`` optimiser steps, whatever the
size of the labelled subset (11 images at 0.5 % of organs is one step per pass: counting passes
would stop runs before the new head has moved). Validation accuracy is measured every
``eval_every_steps``; ``patience`` counts evaluations without improvement, and stopping is only
allowed after ``min_steps``; the best state is restored at the end. The new head gets its own
rate (``head_lr``); a random-init backbone trains from scratch at ``scratch_lr``. Weight decay
applies to conv and linear weights only, never to BatchNorm parameters or biases.

Full fine-tuning trains every parameter; surgical fine-tuning trains only the chosen layer
groups (``medzoo.models.RESNET_LAYER_GROUPS``) and the head, and keeps the BatchNorm layers of the
frozen groups in eval mode after every ``model.train()`` so their running statistics stay those
of the pre-trained weights. Training images stay uint8 until they are on the device, where the
domain's augmentation preset makes one normalised view per image (no horizontal flip for CT
organs). Precision follows :func:`medzoo.runtime.resolve_precision` (the rule pre-training uses):
bf16 autocast where the GPU supports it, fp16 with a GradScaler otherwise, fp32 on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medzoo.errors import MedzooError
from medzoo.models import freeze_except, group_of, set_frozen_bn_eval
from medzoo.probe import match_channels


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyperparameters of full fine-tuning (the ``[finetune]`` recipe table)."""

    min_steps: int = 200  # every run trains at least this many optimiser steps
    max_steps: int = 2000  # and at most this many (the cosine schedule spans max_steps)
    eval_every_steps: int = 25  # validation accuracy every N steps
    patience: int = 8  # evaluations without a better val accuracy (counted after min_steps)
    lr: float = 1e-4  # AdamW rate of a pre-trained backbone: its weights move little
    head_lr: float = 1e-3  # the new head starts from noise and needs a larger step
    scratch_lr: float = 3e-3  # backbone rate when the init is random (training from scratch)
    batch_size: int = 64
    weight_decay: float = 1e-4  # on conv/linear weights only; none on BatchNorm or biases
    eval_batch_size: int = 256
    crop_scale: tuple[float, float] = (0.5, 1.0)  # milder than pre-training's (0.08, 1)
    augment: bool = True  # the domain preset's flips/rotations/jitter; no blur or solarisation


@dataclass(frozen=True)
class SurgicalConfig(FinetuneConfig):
    """Surgical fine-tuning: only ``groups`` and the head train (the ``[surgical]`` table)."""

    lr: float = 1e-3  # fewer trainable parameters tolerate a larger step
    groups: tuple[str, ...] = ("layer4",)  # used by the strategy name "surgical"


@dataclass
class FinetuneResult:
    model: nn.Module
    best_step: int  # the optimiser step whose weights were restored
    val_accuracy: float  # at best_step
    steps: int  # optimiser steps run
    lr: float  # backbone rate used
    head_lr: float
    history: list[dict[str, float]] = field(default_factory=list)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: fp32), by the shared rule."""
    from medzoo.runtime import resolve_precision

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(device, precision))


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
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Softmax probabilities ``[N, K]`` of uint8 ``images`` (eval mode, no augmentation).

    ``rows``: only these rows of ``images`` (gathered batch by batch, never copied whole).
    """
    from medzoo.data.augment import normalize_uint8

    model.eval()
    dtype = autocast_dtype(device, precision)
    index = torch.arange(len(images)) if rows is None else torch.as_tensor(rows)
    out = []
    with torch.inference_mode():
        for chunk in index.split(batch_size):
            batch = match_channels(images[chunk], in_chans).to(device)
            x = normalize_uint8(batch, mean, std)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(x)
            out.append(torch.softmax(logits.float(), 1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def batch_stream(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled batches of ``range(n)``: a new permutation per pass.

    A subset smaller than a batch is one batch per step. A last batch of one image is dropped:
    BatchNorm's batch statistics of a single image are undefined.
    """
    while True:
        for batch in torch.randperm(n, generator=generator).split(batch_size):
            if len(batch) > 1 or n == 1:
                yield batch


def param_groups(
    model: nn.Module, *, lr: float, head_lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW groups: backbone and head rates; weight decay on conv/linear weights only.

    Decaying BatchNorm scales and biases only shrinks them toward a worse optimum (the common
    practice since Goyal et al. 2017 and in timm's ``param_groups_weight_decay``).
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (group_of(name) == "head", param.ndim > 1)
            groups.setdefault(key, []).append(param)
    return [
        {
            "params": params,
            "lr": head_lr if head else lr,
            "weight_decay": weight_decay if decay else 0.0,
        }
        for (head, decay), params in sorted(groups.items())
    ]


# long: one optimisation loop with its validation schedule and best-state restore over shared locals
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
    val_subset: np.ndarray | None = None,
    lr: float | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` (a timm classifier) for a step budget; restore its best-on-val state.

    Args:
        trainable_groups: None for full fine-tuning; else the layer groups to train besides the
            head (surgical).
        augment: uint8 batch on the device -> normalised float batch (one augmented view);
            None: plain normalisation.
        train_subset: rows of ``train_images`` to train on (a label budget); None: all.
            Batches are gathered from these rows, so the subset is never copied whole (100 %
            of crc at 224 px is 12.8 GB).
        val_subset: rows of ``val_images`` used for model selection; None: all.
        lr: the backbone rate (default ``config.lr``; the caller passes ``scratch_lr`` for a
            random init).
    """
    from medzoo.data.augment import normalize_uint8

    rows = (
        torch.arange(len(train_labels)) if train_subset is None else torch.as_tensor(train_subset)
    )
    if len(rows) < 2:
        raise MedzooError(
            "fine-tuning needs at least 2 training images; use a larger label fraction"
        )
    val_rows = np.arange(len(val_labels)) if val_subset is None else np.asarray(val_subset)
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
    lr = config.lr if lr is None else lr
    optimizer = torch.optim.AdamW(
        param_groups(model, lr=lr, head_lr=config.head_lr, weight_decay=config.weight_decay)
    )
    total = config.max_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    )
    dtype = autocast_dtype(device, precision)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    val_y = val_labels.numpy()[val_rows]

    def validate() -> float:
        probs = predict_probs(
            model, val_images, mean, std, in_chans=in_chans, device=device,
            batch_size=config.eval_batch_size, precision=precision, rows=val_rows,
        )  # fmt: skip
        return float((probs.argmax(1) == val_y).mean()) if len(val_y) else 0.0

    best_accuracy, best_step, best_state = -1.0, 0, None
    history: list[dict[str, float]] = []
    stale, step, losses = 0, 0, []
    batches = batch_stream(len(rows), config.batch_size, generator)
    model.train()
    if trainable_groups is not None:
        set_frozen_bn_eval(model)
    while step < config.max_steps:
        idx = rows[next(batches)]
        images = match_channels(train_images[idx], in_chans).to(device, non_blocking=cuda)
        labels = train_labels[idx].to(device, non_blocking=cuda)
        x = augment(images) if augment is not None else normalize_uint8(images, mean, std)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), labels)  # raw logits, no softmax
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        step += 1
        losses.append(loss.detach())
        if step % config.eval_every_steps and step < config.max_steps:
            continue
        accuracy = validate()
        history.append(
            {"step": step, "loss": float(torch.stack(losses).mean()), "val_accuracy": accuracy}
        )
        losses = []
        if accuracy > best_accuracy:
            best_accuracy, best_step, stale = accuracy, step, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        if stale >= config.patience and step >= config.min_steps:
            break
        model.train()
        if trainable_groups is not None:
            set_frozen_bn_eval(model)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FinetuneResult(model, best_step, best_accuracy, step, lr, config.head_lr, history)


def augmenter(
    dataset: str,
    config: FinetuneConfig,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int,
    data_root: str | Path | None = None,
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
            preset=domain_preset(dataset, data_root),
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
    data_root: str | Path | None = None,
    precision: str = "auto",
    val_subset: np.ndarray | None = None,
    from_scratch: bool = False,
    init_seed: int | None = None,
    head: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> FinetuneResult:
    """Fine-tune zoo model ``init`` on ``subset`` of the train split, selected on ``val_subset``.

    Reads only ``splits["train"]`` and ``splits["val"]``: scoring on test is the caller's
    separate step (:func:`predict_probs` on the returned model).

    Args:
        data_root: the MIMeta root of ``dataset`` (its ``info.yaml`` picks the augmentation
            preset of a dataset outside the named domains).
        from_scratch: the init is a random backbone; its rate is ``config.scratch_lr``.
        init_seed: the draw of a random-init entry (``medzoo.load(init, seed=...)``).
        head: ``(weight, bias)`` to start the head from (LP-FT: the fitted linear probe);
            None: a new seeded random head.
    """
    from medzoo.zoo.index import load

    train, val = splits["train"], splits["val"]
    torch.manual_seed(seed)  # the new head's initialisation
    model = load(init, num_classes=train.num_classes, in_chans=in_chans, seed=init_seed)
    if head is not None:
        with torch.no_grad():
            model.get_classifier().weight.copy_(head[0])
            model.get_classifier().bias.copy_(head[1])
    return finetune(
        model, train.images, train.labels, val.images, val.labels, config=config,
        mean=mean, std=std, in_chans=in_chans, device=device, trainable_groups=trainable_groups,
        augment=augmenter(dataset, config, mean, std, train.image_size, data_root), seed=seed,
        precision=precision, train_subset=subset, val_subset=val_subset,
        lr=config.scratch_lr if from_scratch else config.lr,
    )  # fmt: skip

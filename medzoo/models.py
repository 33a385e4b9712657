"""Backbones, the Barlow Twins projector, linear heads and surgical layer groups.

Backbones are plain timm models created with ``num_classes=0`` so that their state dict is
exactly what ``timm.create_model(arch, num_classes=0)`` loads. The projector and the Barlow
Twins wrapper exist only during pre-training; only the backbone is saved.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from medzoo.errors import MedzooError

# Parameter-name prefixes of a timm ResNet, in depth order. "stem" is conv1 + bn1.
RESNET_LAYER_GROUPS: dict[str, tuple[str, ...]] = {
    "stem": ("conv1.", "bn1."),
    "layer1": ("layer1.",),
    "layer2": ("layer2.",),
    "layer3": ("layer3.",),
    "layer4": ("layer4.",),
    "head": ("fc.", "head.", "classifier."),
}


def create_backbone(
    arch: str = "resnet18",
    in_chans: int = 3,
    num_classes: int = 0,
    pretrained: bool = False,
    pretrained_tag: str | None = None,
) -> nn.Module:
    """A timm model; ``num_classes=0`` gives the pooled-feature backbone.

    ``pretrained=True`` downloads timm's weights (``arch.tag``); timm adapts the ImageNet conv1
    for ``in_chans=1`` by summing over the colour channels.
    """
    import timm

    name = f"{arch}.{pretrained_tag}" if pretrained_tag else arch
    try:
        return timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans
        )
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise MedzooError(f"unknown timm architecture '{arch}' (try resnet18)") from None
        raise


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _global_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Batch normalisation of ``x`` with the statistics of the batch over every rank.

    Two passes: the global mean first, then the global mean of squared deviations from it, so the
    variance does not suffer the cancellation of E[x^2] - mean^2 when |mean| >> std.
    """
    from medzoo.losses import sum_over_ranks

    dtype = x.dtype
    x = x.float()
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    count = torch.full((1,), float(x.numel() // x.shape[1]), device=x.device)
    first = sum_over_ranks(torch.cat([x.sum(dims), count]))
    total = first[-1]
    mean = first[:-1] / total
    centred = x - mean.view(shape)
    var = sum_over_ranks((centred * centred).sum(dims)) / total
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            unbiased = var * total / (total - 1).clamp_min(1)
            momentum = 0.1 if bn.momentum is None else bn.momentum
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
            bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)
            bn.num_batches_tracked += 1
    y = centred * torch.rsqrt(var + bn.eps).view(shape)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y.to(dtype)


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose batch statistics are those of the global batch under DDP.

    The sums are reduced with ``torch.distributed.nn.all_reduce``, which is autograd-aware, so
    gradients flow through the statistics of every rank's samples, as they would for one
    process on the concatenated batch. Unlike ``nn.SyncBatchNorm`` it also runs on CPU with the
    gloo backend (tests, torchrun on CPU). Outside DDP it is exactly ``nn.BatchNorm1d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _distributed()):
            return super().forward(x)
        return _global_batch_norm(self, x)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with global-batch statistics under DDP (see :class:`GlobalBatchNorm1d`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _distributed()):
            return super().forward(x)
        return _global_batch_norm(self, x)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Synchronise every BatchNorm2d of ``module`` across ranks, as the official Barlow Twins does.

    On CUDA: ``nn.SyncBatchNorm`` (NCCL). Elsewhere (gloo): :class:`GlobalBatchNorm2d`. The
    parameters and buffers are the same objects, so an optimizer built before still holds them
    and the state dict keys do not change.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, GlobalBatchNorm2d):
            new = GlobalBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine,
                child.track_running_stats,
            )  # fmt: skip
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(module, name, new)
        else:
            sync_batchnorm(child, device)
    return module


class Projector(nn.Sequential):
    """The Barlow Twins projector: Linear-BN-ReLU blocks, then a final Linear without bias.

    With ``dims=(2048, 2048, 2048)`` on a ResNet-18 this is the paper's 512 -> 2048 -> 2048 ->
    2048 with BN + ReLU after the first two layers.
    """

    def __init__(self, in_dim: int, dims: Sequence[int]) -> None:
        layers: list[nn.Module] = []
        sizes = [in_dim, *dims]
        for i in range(len(sizes) - 2):
            layers += [
                nn.Linear(sizes[i], sizes[i + 1], bias=False),
                GlobalBatchNorm1d(sizes[i + 1]),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
        super().__init__(*layers)


class BarlowTwinsModel(nn.Module):
    """Backbone + projector; ``forward`` returns the projected embeddings of one view."""

    def __init__(self, backbone: nn.Module, projector_dims: Sequence[int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = Projector(backbone.num_features, projector_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


def group_of(
    param_name: str, groups: dict[str, tuple[str, ...]] = RESNET_LAYER_GROUPS
) -> str | None:
    for group, prefixes in groups.items():
        if param_name.startswith(prefixes):
            return group
    return None


def check_layer_groups(names: Iterable[str]) -> None:
    """Raise a one-line error if a surgical layer group does not exist in a ResNet."""
    for name in names:
        if name not in RESNET_LAYER_GROUPS:
            raise MedzooError(
                f"unknown layer group '{name}': choose from {', '.join(RESNET_LAYER_GROUPS)}"
            )


def freeze_except(model: nn.Module, trainable_groups: Iterable[str]) -> list[str]:
    """Freeze every parameter outside ``trainable_groups`` ("head" is the classifier).

    Frozen BatchNorm layers are put in eval mode by :func:`set_frozen_bn_eval`, which must be
    called after every ``model.train()``. Returns the names of the trainable parameters.
    """
    trainable_groups = set(trainable_groups)
    check_layer_groups(trainable_groups)
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad = group_of(name) in trainable_groups
        if param.requires_grad:
            trainable.append(name)
    return trainable


def set_frozen_bn_eval(model: nn.Module) -> None:
    """Keep BatchNorm layers whose parameters are all frozen in eval mode (running stats fixed)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()

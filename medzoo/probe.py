"""The linear probe: frozen-backbone features, cached on disk, and a multinomial logistic head.

The backbone runs once per (weights, dataset, split, image size, preprocessing) in eval mode
under ``torch.inference_mode`` -- so neither its weights nor its BatchNorm statistics can move --
and the pooled features land in ``$MEDZOO_HOME/cache/features/<key>.safetensors``. Every probe of
a label-fraction x seed sweep then trains from that cache: a linear layer on standardised
features, fitted full-batch with L-BFGS on the cross-entropy of the raw logits (no softmax
before the loss), with the weight decay chosen on the validation split.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medzoo.errors import MedzooError

FEATURE_CACHE_VERSION = 1  # bump when the extraction itself changes (pooling, dtype, ...)


# --------------------------------------------------------------------------- inputs


def match_channels(images: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Give a uint8 batch the model's channel count: grayscale is repeated for an RGB model.

    RGB images for a one-channel model are refused: converting histology to grayscale throws
    away the stain colour the task depends on (one of the seed paper's mistakes).
    """
    channels = images.shape[1]
    if channels == in_chans:
        return images
    if channels == 1 and in_chans == 3:
        return images.expand(-1, 3, -1, -1)
    raise MedzooError(
        f"images have {channels} channel(s) but the model expects {in_chans}; "
        "use an init trained on images with the same channels"
    )


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when present, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MedzooError(
            f"device {name!r} requested but CUDA is not available; use device = 'cpu'"
        )
    return device


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The pooled pre-logits features of a timm model, whatever head it carries."""
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        return model.forward_head(model.forward_features(x), pre_logits=True)
    return model(x)


def extract_features(
    model: nn.Module,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    in_chans: int,
    device: torch.device,
    batch_size: int = 256,
) -> torch.Tensor:
    """Pooled features ``[N, D]`` (float32, CPU) of uint8 ``images`` through a frozen ``model``.

    The model is put in eval mode (BatchNorm uses its running statistics and never updates them)
    and run under ``torch.inference_mode``; inputs are normalised with ``mean``/``std``, the
    statistics that belong to the weights. Runs in fp32 (channels_last on CUDA) so that cached
    features do not depend on an autocast setting.
    """
    from medzoo.data.augment import normalize_uint8

    model.eval()
    model.to(device)
    cuda = device.type == "cuda"
    if cuda:
        model.to(memory_format=torch.channels_last)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = match_channels(images[start : start + batch_size], in_chans)
            batch = batch.to(device, non_blocking=cuda)
            x = normalize_uint8(batch, mean, std)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            chunks.append(pooled_features(model, x).float().cpu())
    if not chunks:
        return torch.zeros(0, getattr(model, "num_features", 0))
    return torch.cat(chunks)


# --------------------------------------------------------------------------- the cache


def feature_cache_dir() -> Path:
    """``$MEDZOO_HOME/cache/features``."""
    from medzoo.config import medzoo_home

    return medzoo_home() / "cache" / "features"


def data_fingerprint(
    root: str | os.PathLike[str], dataset_id: str, labels: torch.Tensor, indices: torch.Tensor
) -> str:
    """Changes when the data root, its image file, the split rows or the labels change."""
    digest = hashlib.sha256(str(Path(root).resolve() / dataset_id).encode())
    hdf5 = Path(root) / dataset_id / "images.hdf5"
    if hdf5.is_file():
        stat = hdf5.stat()
        digest.update(f"|{stat.st_size}|{stat.st_mtime_ns}".encode())
    digest.update(np.ascontiguousarray(indices.numpy()).tobytes())
    digest.update(np.ascontiguousarray(labels.numpy()).tobytes())
    return digest.hexdigest()[:32]


def cache_key(material: dict[str, Any]) -> str:
    """A file name for the features described by ``material`` (JSON-able, order-independent)."""
    text = json.dumps({"version": FEATURE_CACHE_VERSION, **material}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def cached_features(
    material: dict[str, Any],
    labels: torch.Tensor,
    compute: Callable[[], torch.Tensor],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
) -> tuple[torch.Tensor, bool]:
    """Features for ``material``: from the cache when present, else computed and stored.

    Returns ``(features, hit)``. A cached file whose labels differ from ``labels`` is stale (it
    cannot be, given the key, short of tampering) and is recomputed.
    """
    if not use_cache:
        return compute(), False
    import safetensors.torch

    from medzoo.provenance import atomic_path

    folder = Path(cache_dir) if cache_dir is not None else feature_cache_dir()
    target = folder / f"{cache_key(material)}.safetensors"
    if target.is_file():
        try:
            stored = safetensors.torch.load_file(str(target))
            if torch.equal(stored["labels"], labels.cpu()):
                return stored["features"], True
        except Exception:  # a truncated or foreign file: recompute and replace it
            pass
    features = compute()
    meta = {"medzoo": json.dumps(material, sort_keys=True, default=str)}
    with atomic_path(target) as tmp:
        safetensors.torch.save_file(
            {"features": features.contiguous(), "labels": labels.cpu().contiguous()},
            str(tmp),
            metadata=meta,
        )
    return features, False


# --------------------------------------------------------------------------- the linear head


@contextlib.contextmanager
def _few_threads_for_small(x: torch.Tensor) -> Iterator[None]:
    """One intra-op thread for small CPU problems, where thread hand-offs cost more than the
    arithmetic (measured: a 108 x 512 probe step took 10 ms on 2 threads, 0.8 ms on 1)."""
    if x.device.type != "cpu" or x.numel() > 2_000_000:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class ProbeHead:
    """A linear classifier on standardised features; ``linear`` sees ``(x - mean) / std``."""

    linear: nn.Linear
    mean: torch.Tensor
    std: torch.Tensor
    weight_decay: float
    val_accuracy: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = (features.to(self.mean.device) - self.mean) / self.std
            return self.linear(x.to(self.linear.weight.dtype)).float()

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight, bias)`` acting on raw features: the standardisation folded in."""
        with torch.no_grad():
            weight = self.linear.weight / self.std
            bias = self.linear.bias - weight @ self.mean
        return weight.float().cpu(), bias.float().cpu()


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std (floored, so dead ReLU units do not divide by zero)."""
    mean = features.mean(0)
    std = features.std(0, unbiased=False).clamp_min(1e-6)
    return mean, std


def _lbfgs(params: list[torch.Tensor], max_iter: int) -> torch.optim.LBFGS:
    """The probe's full-batch L-BFGS (strong-Wolfe line search), shared by every fit."""
    return torch.optim.LBFGS(
        params, lr=1.0, max_iter=max_iter, history_size=20,
        tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe",
    )  # fmt: skip


def train_linear_grid(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decays: Sequence[float],
    *,
    max_iter: int = 100,
) -> list[nn.Linear]:
    """Multinomial logistic regression for every weight decay at once, full-batch L-BFGS.

    The loss is cross-entropy on the raw logits (``F.cross_entropy`` applies log-softmax
    itself; a softmax before it would squash the gradients) plus ``wd / 2 * |W|^2`` (not on the
    bias). The heads of the grid are independent problems whose losses are summed, so one L-BFGS
    run solves them all: the same optima, at a fifth of the Python overhead of five runs (the
    overhead, not the arithmetic, dominates a probe on cached features). Zero initialisation
    makes the fit deterministic: the seed of a run only chooses its label fraction.
    """
    grid = len(weight_decays)
    n, dim = x.shape
    weight = torch.zeros(grid, num_classes, dim, device=x.device, requires_grad=True)
    bias = torch.zeros(grid, num_classes, device=x.device, requires_grad=True)
    decay = torch.tensor([float(w) for w in weight_decays], device=x.device).view(grid, 1, 1)
    targets = y.repeat(grid)
    optimizer = _lbfgs([weight, bias], max_iter)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = torch.einsum("nd,gkd->gnk", x, weight) + bias[:, None, :]
        # the sum over the grid of each head's mean cross-entropy
        loss = (
            nn.functional.cross_entropy(
                logits.reshape(grid * n, num_classes), targets, reduction="sum"
            )
            / n
        )
        loss = loss + 0.5 * (decay * weight.pow(2)).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), _few_threads_for_small(x):
        optimizer.step(closure)
    heads = []
    for g in range(grid):
        linear = nn.Linear(dim, num_classes).to(x.device)
        with torch.no_grad():
            linear.weight.copy_(weight[g])
            linear.bias.copy_(bias[g])
        heads.append(linear.eval().requires_grad_(False))
    return heads


def train_linear(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, *, max_iter: int = 100
) -> nn.Linear:
    """One head of :func:`train_linear_grid`."""
    return train_linear_grid(x, y, num_classes, [weight_decay], max_iter=max_iter)[0]


def fit_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    *,
    weight_decays: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
    max_iter: int = 100,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
) -> ProbeHead:
    """Fit one head per weight decay on ``train`` (one joint L-BFGS run); keep the best on val.

    Ties go to the larger weight decay (the simpler model). ``stats`` standardise the features
    (default: those of ``train_x``; evaluation passes the statistics of the whole unlabelled
    train split, which are steadier than those of a 0.5 % subset).
    """
    device = torch.device(device)
    mean, std = stats if stats is not None else feature_stats(train_x)
    mean, std = mean.to(device), std.to(device)
    tx = ((train_x.to(device) - mean) / std).float()
    vx = ((val_x.to(device) - mean) / std).float()
    ty, vy = train_y.to(device), val_y.to(device)
    if not weight_decays:
        raise MedzooError("probe.weight_decays is empty: give at least one value, e.g. [1e-4]")
    decays = sorted(float(w) for w in weight_decays)
    heads = train_linear_grid(tx, ty, num_classes, decays, max_iter=max_iter)
    best: ProbeHead | None = None
    for weight_decay, linear in zip(decays, heads):
        with torch.no_grad():
            accuracy = (linear(vx).argmax(1) == vy).float().mean().item() if len(vy) else 0.0
        if best is None or accuracy >= best.val_accuracy:
            best = ProbeHead(linear, mean, std, weight_decay, accuracy)
    assert best is not None
    return best


# long: one batched L-BFGS problem: the closure and its bookkeeping share the tensors
def fit_probes(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    train_subsets: Sequence[Sequence[int]],
    val_subsets: Sequence[Sequence[int]] | None = None,
    *,
    weight_decays: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
    max_iter: int = 100,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
) -> list[ProbeHead]:
    """:func:`fit_probe` for many label subsets of one feature set at once (a sweep's
    (fraction, seed) runs of one init), every (subset, weight decay) head in ONE L-BFGS run.

    Each subset is a row mask over ``train_x``; its heads minimise the mean cross-entropy over
    its own rows, so the problems stay independent (their losses are summed) and each head's
    optimum is the one :func:`fit_probe` finds. ``val_subsets`` (default: all of val for each)
    choose each subset's weight decay, ties to the larger one. ``stats`` default to those of
    the whole ``train_x`` (what evaluation passes to every run).
    """
    device = torch.device(device)
    if not weight_decays:
        raise MedzooError("probe.weight_decays is empty: give at least one value, e.g. [1e-4]")
    if not train_subsets:
        return []
    mean, std = stats if stats is not None else feature_stats(train_x)
    mean, std = mean.to(device), std.to(device)
    tx = ((train_x.to(device) - mean) / std).float()
    vx = ((val_x.to(device) - mean) / std).float()
    ty, vy = train_y.to(device), val_y.to(device)
    decays = sorted(float(w) for w in weight_decays)
    problems, grid = len(train_subsets), len(decays)
    n, dim = tx.shape
    # rows of each problem; a row weight of 1 / n_p gives each problem its own mean loss
    row_weight = torch.zeros(problems, n, device=device)
    for p, subset in enumerate(train_subsets):
        rows = torch.as_tensor(np.asarray(subset, dtype=np.int64), device=device)
        row_weight[p, rows] = 1.0 / max(len(rows), 1)
    heads_n = problems * grid
    weight = torch.zeros(heads_n, num_classes, dim, device=device, requires_grad=True)
    bias = torch.zeros(heads_n, num_classes, device=device, requires_grad=True)
    decay = torch.tensor(decays * problems, device=device).view(heads_n, 1, 1)
    per_head_rows = row_weight.repeat_interleave(grid, 0)  # [heads, n]
    used = per_head_rows.sum(0) > 0  # rows no problem uses cost nothing
    x_used, y_used, w_used = tx[used], ty[used], per_head_rows[:, used]
    optimizer = _lbfgs([weight, bias], max_iter)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = torch.einsum("nd,hkd->hnk", x_used, weight) + bias[:, None, :]
        losses = nn.functional.cross_entropy(
            logits.reshape(-1, num_classes), y_used.repeat(heads_n), reduction="none"
        ).view(heads_n, -1)
        loss = (losses * w_used).sum() + 0.5 * (decay * weight.pow(2)).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), _few_threads_for_small(x_used):
        optimizer.step(closure)
    out = []
    with torch.no_grad():
        val_logits = torch.einsum("nd,hkd->hnk", vx, weight) + bias[:, None, :]
        correct = (val_logits.argmax(2) == vy[None]).float()  # [heads, n_val]
    for p in range(problems):
        rows = (
            torch.arange(len(vy), device=device)
            if val_subsets is None
            else torch.as_tensor(np.asarray(val_subsets[p], dtype=np.int64), device=device)
        )
        best: ProbeHead | None = None
        for g, weight_decay in enumerate(decays):
            h = p * grid + g
            accuracy = correct[h, rows].mean().item() if len(rows) else 0.0
            if best is None or accuracy >= best.val_accuracy:
                linear = nn.Linear(dim, num_classes).to(device)
                with torch.no_grad():
                    linear.weight.copy_(weight[h])
                    linear.bias.copy_(bias[h])
                best = ProbeHead(
                    linear.eval().requires_grad_(False), mean, std, weight_decay, accuracy
                )
        assert best is not None
        out.append(best)
    return out

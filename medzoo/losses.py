"""The Barlow Twins loss, with the cross-correlation reduced over all processes under DDP.

Zbontar, Jing, Misra, LeCun, Deny: "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", ICML 2021 (https://arxiv.org/abs/2103.03230). The official code normalises each
embedding dimension with ``nn.BatchNorm1d(affine=False)`` (biased variance, eps 1e-5), forms
``c = z1n.T @ z2n / batch`` and sums ``(1 - c_ii)^2`` plus ``lambda * c_ij^2`` for ``i != j``.

Under DDP every statistic is the global one: mean and variance over the global batch and ``c``
summed over all ranks, each through ``torch.distributed.nn.all_reduce``, whose backward is
itself an all-reduce, so gradients flow back to the samples of every rank.
"""

from __future__ import annotations

import torch
from torch import Tensor

BATCHNORM_EPS = 1e-5  # nn.BatchNorm1d's default, as in the official implementation


def _world_size() -> int:
    """Processes in the default group; 1 without an initialised torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def sum_over_ranks(tensor: Tensor, world_size: int | None = None) -> Tensor:
    """Autograd-aware sum over ranks (identity on a single process).

    ``torch.distributed.nn.all_reduce`` is the autograd-aware collective DESIGN.md names; torch
    2.14 marks it deprecated in favour of a private module, so its FutureWarning is silenced here
    rather than printed at every step.
    """
    if (world_size if world_size is not None else _world_size()) == 1:
        return tensor
    import warnings

    from torch.distributed.nn import all_reduce  # autograd-aware, unlike torch.distributed's

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*all_reduce is deprecated", category=FutureWarning
        )
        return all_reduce(tensor)


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambda_offdiag: float = 0.0051) -> Tensor:
    """Barlow Twins redundancy-reduction loss of two batches of projector outputs.

    Args:
        z1: ``[B, D]`` projector outputs of the first views (this rank's share of the batch).
        z2: ``[B, D]`` projector outputs of the second views, same samples in the same order.
        lambda_offdiag: weight of the off-diagonal (redundancy) term; 0.0051 in the paper.

    Returns:
        A float32 scalar: ``sum_i (1 - c_ii)^2 + lambda * sum_{i != j} c_ij^2`` with ``c`` the
        cross-correlation over the whole (global, under DDP) batch. Every rank gets the same value.

    Gradient scale under DDP (world size W): every rank computes the same global loss L, and
    the backward of each autograd all-reduce sums the incoming gradients of all W ranks, which
    are identical, so this rank's samples receive W * dL/dz (W times the gradient of the
    single-process loss on the concatenated batch with respect to those samples). DDP then
    AVERAGES parameter gradients over ranks: (1/W) * sum_r W * dL/dtheta|_r = sum_r dL/dtheta|_r
    = dL/dtheta, exactly the single-process gradient on the concatenated batch. So do not
    divide or multiply the loss by W in the training loop. (A plain, non-autograd all_reduce
    would give each rank only its own share, and DDP's average would leave gradients 1/W too
    small; tests/test_losses_ddp.py checks both the loss and the parameter gradients.)
    Note that input gradients seen by hooks on a rank are therefore W times the single-process
    ones; only the DDP-averaged parameter gradients are meant to match.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(
            f"z1 and z2 must both be [batch, dim], got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    world_size = _world_size()
    # fp32 even under autocast: c sums B products per entry and the loss D^2 squared entries;
    # bf16 loses the on-diagonal signal (1 - c_ii is small late in training).
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z1 = z1.float()
        z2 = z2.float()
        batch = torch.tensor(float(z1.shape[0]), device=z1.device)
        total = sum_over_ranks(batch, world_size)  # ranks may hold unequal shares
        z1n = _batch_normalise(z1, total, world_size)
        z2n = _batch_normalise(z2, total, world_size)
        c = sum_over_ranks(z1n.T @ z2n, world_size) / total
        on_diag = torch.diagonal(c)
        on_diag_loss = (1.0 - on_diag).pow(2).sum()
        # sum of all squares minus the diagonal ones: no [D, D] mask allocation
        off_diag_loss = c.pow(2).sum() - on_diag.pow(2).sum()
        return on_diag_loss + lambda_offdiag * off_diag_loss


def _batch_normalise(z: Tensor, total: Tensor, world_size: int) -> Tensor:
    """BatchNorm1d(affine=False) in training mode over the global batch of ``total`` rows."""
    mean = sum_over_ranks(z.sum(dim=0), world_size) / total
    centred = z - mean
    var = sum_over_ranks(centred.pow(2).sum(dim=0), world_size) / total  # biased, as BatchNorm
    return centred * torch.rsqrt(var + BATCHNORM_EPS)

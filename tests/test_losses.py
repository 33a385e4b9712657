"""Barlow Twins loss: parity with the reference formula written out naively."""

from __future__ import annotations

import pytest
import torch

from medzoo.losses import barlow_twins_loss


def reference_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> torch.Tensor:
    """The paper's formula in float64, with explicit loops over the correlation matrix."""
    z1, z2 = z1.double(), z2.double()
    batch, dim = z1.shape

    def normalise(z: torch.Tensor) -> torch.Tensor:
        mean = z.sum(0) / batch
        var = ((z - mean) ** 2).sum(0) / batch  # biased, as nn.BatchNorm1d in training mode
        return (z - mean) / torch.sqrt(var + 1e-5)

    a, b = normalise(z1), normalise(z2)
    loss = torch.zeros((), dtype=torch.float64)
    for i in range(dim):
        for j in range(dim):
            c_ij = sum(a[n, i] * b[n, j] for n in range(batch)) / batch
            loss = loss + ((1 - c_ij) ** 2 if i == j else lambd * c_ij**2)
    return loss


@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_matches_reference_formula(lambd: float) -> None:
    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(6, 5, generator=gen) * 3 + 1
    z2 = z1 + 0.5 * torch.randn(6, 5, generator=gen)
    got = barlow_twins_loss(z1, z2, lambd)
    want = reference_loss(z1, z2, lambd)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5), (got, want)


def test_matches_batchnorm_reference_and_gradients() -> None:
    """Same loss and input gradients as the official code's nn.BatchNorm1d(affine=False)."""
    gen = torch.Generator().manual_seed(1)
    z1 = torch.randn(16, 8, generator=gen, requires_grad=True)
    z2 = torch.randn(16, 8, generator=gen, requires_grad=True)
    bn = torch.nn.BatchNorm1d(8, affine=False)
    c = bn(z1).T @ bn(z2) / 16
    on = torch.diagonal(c).add(-1).pow(2).sum()
    off = (c.pow(2).sum() - torch.diagonal(c).pow(2).sum()) * 0.0051
    want = on + off
    want_grads = torch.autograd.grad(want, (z1, z2))
    got = barlow_twins_loss(z1, z2)
    got_grads = torch.autograd.grad(got, (z1, z2))
    assert torch.allclose(got, want, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        assert torch.allclose(g, w, atol=1e-5)


def test_identical_decorrelated_views_give_zero_loss() -> None:
    """Whitened, identical embeddings are the optimum: c = I, loss ~ 0."""
    gen = torch.Generator().manual_seed(2)
    centred = torch.randn(64, 4, generator=gen, dtype=torch.float64)
    centred -= centred.mean(0)
    z = torch.linalg.qr(centred)[0].float() * 8  # centred, orthogonal columns: c = I
    loss = barlow_twins_loss(z, z)
    assert loss.item() < 1e-2
    assert barlow_twins_loss(z, torch.randn(64, 4, generator=gen)).item() > 1.0


def test_fp32_under_autocast() -> None:
    z1 = torch.randn(8, 4).bfloat16()
    z2 = torch.randn(8, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = barlow_twins_loss(z1, z2)
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, barlow_twins_loss(z1.float(), z2.float()))


def test_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        barlow_twins_loss(torch.randn(4, 3), torch.randn(4, 2))

"""fit_probes: a sweep's (subset x weight decay) heads in one batched L-BFGS, the same as one by one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medzoo.errors import MedzooError
from medzoo.probe import feature_stats, fit_probe, fit_probes


def _blobs(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.randn(4, 24, generator=torch.Generator().manual_seed(42)) * 1.5
    y = torch.arange(4).repeat_interleave(n_per_class)
    x = centres[y] + torch.randn(len(y), 24, generator=torch.Generator().manual_seed(seed)) + 3.0
    return x, y


def test_batched_heads_match_separate_fits() -> None:
    """Every head keeps its own L-BFGS state, so batching must not move any head: with a budget
    too small for the smallest subsets to converge (where one shared optimiser, as before,
    stopped them elsewhere) each head still equals its own fit, to float rounding."""
    tx, ty = _blobs(30, seed=0)
    vx, vy = _blobs(15, seed=1)
    rng = np.random.default_rng(0)
    subsets = [np.sort(rng.choice(len(ty), size, replace=False)) for size in (4, 8, 24, 60, 120)]
    val_subsets = [np.arange(0, len(vy), 2), np.arange(len(vy)), np.arange(len(vy)),
                   np.arange(1, len(vy), 3), np.arange(len(vy))]  # fmt: skip
    decays = (1e-5, 1e-3, 1e-1)
    stats = feature_stats(tx)
    for max_iter in (7, 200):
        batched = fit_probes(
            tx, ty, vx, vy, 4, subsets, val_subsets, weight_decays=decays, max_iter=max_iter,
            stats=stats,
        )  # fmt: skip
        assert len(batched) == len(subsets)
        for subset, val, head in zip(subsets, val_subsets, batched, strict=True):
            idx = torch.from_numpy(subset)
            single = fit_probe(
                tx[idx], ty[idx], vx[val], vy[val], 4, weight_decays=decays, max_iter=max_iter,
                stats=stats,
            )  # fmt: skip
            assert head.weight_decay == single.weight_decay
            assert head.val_accuracy == single.val_accuracy
            assert (head.iterations, head.converged) == (single.iterations, single.converged)
            torch.testing.assert_close(
                head.linear.weight, single.linear.weight, rtol=1e-5, atol=1e-6
            )
            torch.testing.assert_close(head.linear.bias, single.linear.bias, rtol=1e-5, atol=1e-6)
    assert any(not h.converged for h in fit_probes(tx, ty, vx, vy, 4, subsets, max_iter=7))


def test_batched_lbfgs_reaches_the_optimum_of_each_head() -> None:
    """Against torch's own L-BFGS run to convergence on each head alone: the same minimum."""
    from medzoo.probe import _SoftmaxProblems, batched_lbfgs

    x, y = _blobs(10, seed=2)
    x = (x - x.mean(0)) / x.std(0)
    rows = [torch.arange(0, 40, 2), torch.arange(40)]
    decays = (1e-2, 1e-1)
    result = batched_lbfgs(
        _SoftmaxProblems(x, y, rows, decays, 4), torch.zeros(4, 4 * 25), max_iter=500,
        tolerance_grad=1e-7, tolerance_change=1e-12,
    )  # fmt: skip
    assert bool(result.converged.all())
    for h in range(4):
        rows_h, decay = rows[h // 2], decays[h % 2]
        w = torch.zeros(4, 25, requires_grad=True)
        opt = torch.optim.LBFGS(
            [w], max_iter=1000, tolerance_grad=1e-9, tolerance_change=1e-14,
            line_search_fn="strong_wolfe",
        )  # fmt: skip

        def closure(w=w, opt=opt, rows_h=rows_h, decay=decay) -> torch.Tensor:
            opt.zero_grad()
            logits = x[rows_h] @ w[:, :24].T + w[:, 24]
            loss = torch.nn.functional.cross_entropy(logits, y[rows_h])
            loss = loss + 0.5 * decay * w[:, :24].pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        assert result.loss[h].item() == pytest.approx(closure().item(), abs=1e-6)
        torch.testing.assert_close(result.theta[h].view(4, 25), w.detach(), atol=2e-3, rtol=0)


def test_fit_probes_needs_a_weight_decay() -> None:
    x, y = _blobs(4, seed=0)
    with pytest.raises(MedzooError, match="weight_decays"):
        fit_probes(x, y, x, y, 4, [np.arange(4)], weight_decays=())
    assert fit_probes(x, y, x, y, 4, []) == []

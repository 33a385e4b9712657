"""fit_probes: a sweep's (subset x weight decay) heads in one L-BFGS run, the same as one by one."""

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
    tx, ty = _blobs(30, seed=0)
    vx, vy = _blobs(15, seed=1)
    rng = np.random.default_rng(0)
    subsets = [np.sort(rng.choice(len(ty), size, replace=False)) for size in (8, 24, 60, 120)]
    val_subsets = [np.arange(0, len(vy), 2), None, np.arange(len(vy)), np.arange(1, len(vy), 3)]
    val_subsets = [np.arange(len(vy)) if v is None else v for v in val_subsets]
    decays = (1e-3, 1e-2, 1e-1)
    stats = feature_stats(tx)
    batched = fit_probes(
        tx, ty, vx, vy, 4, subsets, val_subsets, weight_decays=decays, max_iter=200, stats=stats
    )
    assert len(batched) == len(subsets)
    for subset, val, head in zip(subsets, val_subsets, batched, strict=True):
        idx = torch.from_numpy(subset)
        single = fit_probe(
            tx[idx], ty[idx], vx[val], vy[val], 4, weight_decays=decays, max_iter=200, stats=stats
        )
        assert head.weight_decay == single.weight_decay
        assert head.val_accuracy == pytest.approx(single.val_accuracy)
        expected, got = single.logits(vx), head.logits(vx)
        torch.testing.assert_close(got, expected, atol=2e-2 * expected.abs().max().item(), rtol=0)
        assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.97


def test_fit_probes_needs_a_weight_decay() -> None:
    x, y = _blobs(4, seed=0)
    with pytest.raises(MedzooError, match="weight_decays"):
        fit_probes(x, y, x, y, 4, [np.arange(4)], weight_decays=())
    assert fit_probes(x, y, x, y, 4, []) == []

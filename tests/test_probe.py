"""The linear probe: frozen features (bit-identical backbone), the feature cache, the head."""

from __future__ import annotations

import pytest
import torch

from medzoo.errors import MedzooError
from medzoo.probe import (
    cache_key,
    cached_features,
    extract_features,
    feature_cache_dir,
    fit_probe,
    match_channels,
    train_linear,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _images(n: int = 6, chans: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randint(
        0,
        256,
        (n, chans, size, size),
        generator=torch.Generator().manual_seed(0),
        dtype=torch.uint8,
    )


def test_extraction_leaves_weights_and_batchnorm_bit_identical():
    from medzoo.zoo.index import load

    model = load("random-r18")
    model.train()  # even handed a model in train mode, the probe must not update BN statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    features = extract_features(
        model, _images(), MEAN, STD, in_chans=3, device=torch.device("cpu"), batch_size=4
    )
    assert features.shape == (6, 512) and features.dtype == torch.float32
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key  # includes running_mean/var, num_batches_tracked
    assert not model.training


def test_extraction_is_batch_size_independent():
    from medzoo.zoo.index import load

    model = load("random-r18")
    images = _images(5)
    one = extract_features(
        model, images, MEAN, STD, in_chans=3, device=torch.device("cpu"), batch_size=1
    )
    five = extract_features(
        model, images, MEAN, STD, in_chans=3, device=torch.device("cpu"), batch_size=5
    )
    torch.testing.assert_close(one, five, rtol=1e-4, atol=1e-5)  # eval-mode BN: no batch statistics


def test_match_channels():
    gray = _images(2, chans=1)
    assert match_channels(gray, 3).shape == (2, 3, 32, 32)
    assert match_channels(gray, 1) is gray
    with pytest.raises(MedzooError, match="channel"):
        match_channels(_images(2, chans=3), 1)


def test_cache_hit_miss_and_key():
    labels = torch.tensor([0, 1, 2])
    calls = []

    def compute() -> torch.Tensor:
        calls.append(1)
        return torch.arange(6, dtype=torch.float32).view(3, 2)

    material = {
        "weights": "abc",
        "dataset": "crc",
        "split": "train",
        "image_size": 32,
        "mean": MEAN,
    }
    first, hit1 = cached_features(material, labels, compute)
    second, hit2 = cached_features(material, labels, compute)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    assert torch.equal(first, second)
    assert len(list(feature_cache_dir().glob("*.safetensors"))) == 1
    # any change of the preprocessing is another key, hence another extraction
    _, hit3 = cached_features({**material, "mean": (0.1, 0.1, 0.1)}, labels, compute)
    assert not hit3 and len(calls) == 2
    assert cache_key(material) == cache_key(dict(reversed(list(material.items()))))
    # a cached file whose labels disagree is recomputed, not trusted
    _, hit4 = cached_features(material, torch.tensor([2, 1, 0]), compute)
    assert not hit4 and len(calls) == 3
    _, hit5 = cached_features(material, labels, compute, use_cache=False)
    assert not hit5 and len(calls) == 4


def _blobs(
    n_per_class: int, num_classes: int = 3, dim: int = 16, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(42)) * 3
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = centres[y] + torch.randn(len(y), dim, generator=g) + 5.0  # offset: standardisation matters
    return x, y


def test_fit_probe_separates_blobs_and_folds_standardisation():
    tx, ty = _blobs(20)
    vx, vy = _blobs(10, seed=1)
    head = fit_probe(tx, ty, vx, vy, 3, weight_decays=(1e-4, 1e-2), max_iter=50)
    assert head.val_accuracy > 0.95
    assert head.weight_decay in (1e-4, 1e-2)
    weight, bias = head.folded()
    torch.testing.assert_close(vx @ weight.T + bias, head.logits(vx), rtol=1e-4, atol=1e-4)


def test_train_linear_is_deterministic_and_weight_decay_shrinks():
    x, y = _blobs(10)
    x = (x - x.mean(0)) / x.std(0)
    a = train_linear(x, y, 3, 1e-3, max_iter=30)
    b = train_linear(x, y, 3, 1e-3, max_iter=30)
    assert torch.equal(a.weight, b.weight)  # zero init: the seed only picks the labelled subset
    strong = train_linear(x, y, 3, 1.0, max_iter=30)
    assert strong.weight.norm() < a.weight.norm()


def test_fit_probe_needs_a_weight_decay():
    x, y = _blobs(4)
    with pytest.raises(MedzooError, match="weight_decays"):
        fit_probe(x, y, x, y, 3, weight_decays=())

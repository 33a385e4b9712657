"""Batched two-view augmentation: presets, per-sample parameters, parity with torchvision v2.

Tolerances: every single operation is compared with its torchvision.transforms.v2.functional
counterpart on float images in [0, 1] for fixed parameters, to PARITY_ATOL = 1e-5 (float32
rounding; the largest difference seen is about 2e-6, from the antialiased downscale and the
closed-form hue). The whole pipeline is compared with a per-image torchvision reference (the
same ops on floats, the same parameters) to PIPELINE_ATOL = 1e-4 in normalised units (rounding
accumulates over ten ops and the division by std ~0.23).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from medzoo.config import AugmentConfig
from medzoo.data import augment_ops as ops
from medzoo.data.augment import (
    AugmentParams,
    TwoViewAugment,
    ViewParams,
    normalize_uint8,
    resolve_augment,
    sample_crop_boxes,
)
from medzoo.errors import MedzooError

PARITY_ATOL = 1e-5
PIPELINE_ATOL = 1e-4
MEAN3, STD3 = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _images(batch: int = 4, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, generator=gen)


def _floats(batch: int = 4, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _augment(
    preset: str = "histology", size: int = 32, channels: int = 3, **overrides
) -> TwoViewAugment:
    params = resolve_augment(AugmentConfig(preset=preset, **overrides))
    mean = MEAN3 if channels == 3 else (0.449,)
    std = STD3 if channels == 3 else (0.226,)
    return TwoViewAugment(params, size, mean, std)


# --------------------------------------------------------------------------- presets


def test_presets_follow_the_paper_and_the_domains() -> None:
    hist = resolve_augment(AugmentConfig(preset="histology"))
    assert (hist.hflip_prob, hist.vflip_prob, hist.rotate90) == (0.5, 0.5, True)
    assert (hist.brightness, hist.contrast, hist.saturation, hist.hue) == (0.4, 0.4, 0.2, 0.1)
    assert (hist.color_jitter_prob, hist.grayscale_prob) == (0.8, 0.2)
    assert hist.blur_prob == (1.0, 0.1) and hist.solarize_prob == (0.0, 0.2)
    assert hist.crop_scale == (0.08, 1.0) and hist.interpolation == "bicubic"
    ct = resolve_augment(AugmentConfig(preset="ct"))
    assert (ct.hflip_prob, ct.vflip_prob, ct.rotate90) == (0.0, 0.0, False)
    assert (ct.saturation, ct.hue, ct.grayscale_prob) == (0.0, 0.0, 0.0)
    assert (ct.brightness, ct.contrast) == (0.4, 0.4)


def test_overrides_replace_preset_values() -> None:
    params = resolve_augment(
        AugmentConfig(preset="ct", crop_scale=(0.5, 1.0), blur_prob=(0.5, 0.5))
    )
    assert params.crop_scale == (0.5, 1.0) and params.blur_prob == (0.5, 0.5)
    assert params.hflip_prob == 0.0  # untouched preset value


@pytest.mark.parametrize(
    "override",
    [{"hflip_prob": 1.5}, {"hue": 0.7}, {"crop_scale": (0.5, 0.1)}, {"blur_sigma": (0.0, 1.0)}],
)
def test_invalid_overrides_are_user_errors(override: dict) -> None:
    with pytest.raises(MedzooError):
        resolve_augment(AugmentConfig(**override))


def test_bad_input_is_a_user_error() -> None:
    aug = _augment()
    with pytest.raises(MedzooError, match="uint8"):
        aug(_floats())
    with pytest.raises(MedzooError, match="channels"):
        TwoViewAugment(AugmentParams(), 32, MEAN3, STD3)(_images(channels=1))


# --------------------------------------------------------------------------- parameters


def test_images_in_one_batch_get_different_parameters() -> None:
    aug = _augment()
    prm = aug.sample_params(_images(batch=2), 0, torch.Generator().manual_seed(0))
    boxes = torch.stack([prm.top, prm.left, prm.height, prm.width], dim=1)
    assert not torch.equal(boxes[0], boxes[1])
    for factor in (prm.brightness, prm.contrast, prm.saturation, prm.hue, prm.sigma):
        assert factor[0] != factor[1]


def test_view_probabilities_are_asymmetric() -> None:
    aug = _augment()
    images = _images(batch=2000, size=8)
    gen = torch.Generator().manual_seed(0)
    first, second = aug.sample_params(images, 0, gen), aug.sample_params(images, 1, gen)
    assert bool(first.blur.all()) and not bool(first.solarize.any())
    assert 0.05 < second.blur.float().mean() < 0.15
    assert 0.15 < second.solarize.float().mean() < 0.25
    assert 0.75 < first.jitter.float().mean() < 0.85
    assert 0.15 < first.grayscale.float().mean() < 0.25
    assert set(first.rot90.tolist()) == {0, 1, 2, 3}
    orders = torch.sort(first.order, dim=1).values
    assert torch.equal(orders, torch.arange(4).expand_as(orders))  # permutations
    assert len({tuple(o) for o in first.order.tolist()}) == 24


def test_crop_boxes_stay_inside_and_respect_scale_and_ratio() -> None:
    top, left, h, w = sample_crop_boxes(
        5000, 48, 64, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0)
    )
    assert bool((top >= 0).all() and (left >= 0).all())
    assert bool((top + h <= 48).all() and (left + w <= 64).all())
    area = (h * w).float() / (48 * 64)
    assert bool((area > 0.06).all() and (area <= 1.0).all())
    ratio = w.float() / h.float()
    assert bool((ratio > 0.7).all() and (ratio < 1.45).all())
    assert h.unique().numel() > 20  # spread, not a constant box


def test_ct_never_flips_or_rotates_in_its_parameters() -> None:
    aug = _augment("ct", channels=1)
    prm = aug.sample_params(
        _images(batch=4000, channels=1, size=8), 0, torch.Generator().manual_seed(0)
    )
    assert not bool(prm.hflip.any()) and not bool(prm.vflip.any())
    assert not bool(prm.rot90.any())


def _ramp_images(batch: int, size: int = 32) -> torch.Tensor:
    """Brightness rising left to right (0 .. 150, so that no jitter saturates it)."""
    ramp = torch.linspace(0, 150, size).round().to(torch.uint8)
    return ramp.expand(batch, 1, size, size).contiguous()


@pytest.mark.parametrize("hflip_prob, expect_flipped", [(None, False), (1.0, True)])
def test_ct_views_keep_left_and_right(hflip_prob: float | None, expect_flipped: bool) -> None:
    """An image brighter on the right stays brighter on the right in every ct view; with the
    flip forced on (the control) every view is mirrored, so the check can fail."""
    aug = _augment("ct", channels=1, hflip_prob=hflip_prob, solarize_prob=(0.0, 0.0))
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        for view in aug(_ramp_images(100), gen):
            half = view.shape[-1] // 2
            right_brighter = view[..., half:].mean(dim=(1, 2, 3)) > view[..., :half].mean(
                dim=(1, 2, 3)
            )
            assert bool((~right_brighter).all() if expect_flipped else right_brighter.all())


# --------------------------------------------------------------------------- parity, op by op


def _full(value: float | int | bool, batch: int = 4, dtype=None) -> torch.Tensor:
    return torch.full((batch,), value, dtype=dtype)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize(
    "box, size",
    [((3, 5, 20, 30), 32), ((0, 0, 40, 40), 24), ((2, 1, 37, 12), 16), ((0, 0, 40, 40), 40)],
)
def test_resized_crop_matches_torchvision(interpolation: str, box: tuple, size: int) -> None:
    """Upscaling, antialiased downscaling, non-square boxes and the identity."""
    x = _floats(size=40)
    top, left, h, w = (_full(v) for v in box)
    ours = ops.resized_crop(x, top, left, h, w, size, interpolation=interpolation)
    mode = TF.InterpolationMode(interpolation)
    ref = torch.stack(
        [TF.resized_crop(img, *box, [size, size], interpolation=mode, antialias=True) for img in x]
    )
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=PARITY_ATOL)


def test_resized_crop_of_uint8_scales_like_to_dtype() -> None:
    images = _images(size=40)
    one = _full(1)
    ours = ops.resized_crop(images, one, one, _full(30), _full(30), 30, input_scale=1 / 255)
    ref = TF.to_dtype(images[:, :, 1:31, 1:31], torch.float32, scale=True)
    assert torch.allclose(ours, ref, atol=PARITY_ATOL)


def test_flips_and_quarter_turns_match_torchvision() -> None:
    """Every combination of hflip, vflip and k quarter turns, one per sample, folded into the crop."""
    combos = [(h, v, k) for h in (False, True) for v in (False, True) for k in range(4)]
    x = _floats(batch=len(combos), size=24)
    box = (2, 3, 18, 15)
    top, left, h, w = (_full(v, len(combos)) for v in box)
    hflip = torch.tensor([c[0] for c in combos])
    vflip = torch.tensor([c[1] for c in combos])
    rot90 = torch.tensor([c[2] for c in combos])
    ours = ops.resized_crop(x, top, left, h, w, 20, hflip=hflip, vflip=vflip, rot90=rot90)
    for i, (hf, vf, k) in enumerate(combos):
        ref = TF.resized_crop(
            x[i], *box, [20, 20], interpolation=TF.InterpolationMode.BICUBIC, antialias=True
        )
        ref = TF.horizontal_flip(ref) if hf else ref
        ref = TF.vertical_flip(ref) if vf else ref
        ref = TF.rotate(ref, 90.0 * k)
        assert torch.allclose(ours[i], ref, atol=PARITY_ATOL), (hf, vf, k)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    "name, values",
    [
        ("brightness", (0.6, 1.0, 1.4, 0.9)),
        ("contrast", (0.6, 1.0, 1.4, 0.9)),
        ("saturation", (0.8, 1.0, 1.2, 0.0)),
        ("hue", (-0.1, 0.05, 0.5, -0.5)),
    ],
)
def test_colour_ops_match_torchvision(name: str, values: tuple, channels: int) -> None:
    x = _floats(channels=channels)
    factors = torch.tensor(values)
    ours = getattr(ops, f"adjust_{name}")(x, factors)
    ref = torch.stack([getattr(TF, f"adjust_{name}")(img, v) for img, v in zip(x, values)])
    assert torch.allclose(ours, ref, atol=PARITY_ATOL)


def test_hue_on_edge_colours_matches_torchvision() -> None:
    """Grays, primaries and colours on the sextant borders, where the hue formula switches."""
    levels = torch.tensor([0.0, 0.25, 0.5, 1.0])
    grid = torch.cartesian_prod(levels, levels, levels).T.reshape(1, 3, 8, 8)
    for shift in (-0.5, -0.25, 0.0, 1 / 6, 0.3, 0.5):
        ours = ops.adjust_hue(grid, torch.tensor([shift]))
        assert torch.allclose(ours, TF.adjust_hue(grid[0], shift)[None], atol=PARITY_ATOL), shift


def test_grayscale_blur_solarize_match_torchvision() -> None:
    x = _floats(size=24)
    assert torch.allclose(
        ops.rgb_to_grayscale(x), TF.rgb_to_grayscale(x, num_output_channels=3), atol=PARITY_ATOL
    )
    sigma = torch.tensor([0.1, 0.5, 1.0, 2.0])
    ours = ops.gaussian_blur(x, sigma, 7)
    ref = torch.stack([TF.gaussian_blur(img, [7, 7], [float(s)] * 2) for img, s in zip(x, sigma)])
    assert torch.allclose(ours, ref, atol=PARITY_ATOL)
    assert torch.equal(ops.solarize(x), TF.solarize(x, 128 / 255))


def test_color_jitter_follows_each_samples_order() -> None:
    """Four samples with four different op orders against torchvision applied in that order."""
    x = _floats(batch=4)
    factors = {
        "brightness": torch.tensor([1.3, 0.7, 1.1, 0.9]),
        "contrast": torch.tensor([0.7, 1.3, 0.8, 1.2]),
        "saturation": torch.tensor([1.2, 0.8, 0.0, 1.1]),
        "hue": torch.tensor([0.1, -0.1, 0.05, -0.08]),
    }
    order = torch.tensor([[3, 0, 1, 2], [0, 1, 2, 3], [1, 3, 2, 0], [2, 0, 3, 1]])
    ours = ops.color_jitter(x, *factors.values(), order)
    for i in range(4):
        ref = x[i]
        for op in order[i].tolist():
            name = ops.JITTER_OPS[op]
            ref = getattr(TF, f"adjust_{name}")(ref, float(factors[name][i]))
        assert torch.allclose(ours[i], ref, atol=PARITY_ATOL), i
    # a disabled op is skipped wherever it sits in the order
    partial = ops.color_jitter(x, *factors.values(), order, enabled=("brightness", "contrast"))
    ref = TF.adjust_contrast(TF.adjust_brightness(x[1], 0.7), 1.3)
    assert torch.allclose(partial[1], ref, atol=PARITY_ATOL)


def test_masked_computes_only_selected_samples_and_equals_where() -> None:
    x = _floats(batch=6)
    mask = torch.tensor([True, False, True, False, False, True])
    seen = []

    def record(batch: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        seen.append(batch.shape[0])
        return batch * factor.view(-1, 1, 1, 1)

    factor = torch.arange(6.0)
    out = ops.masked(mask, record, x, factor)
    assert seen == [3]
    assert torch.equal(out, torch.where(mask.view(-1, 1, 1, 1), x * factor.view(-1, 1, 1, 1), x))
    assert torch.equal(x, _floats(batch=6))  # not in place unless asked


def test_normalize_uint8_matches_torchvision() -> None:
    images = _images()
    ref = TF.normalize(TF.to_dtype(images, torch.float32, scale=True), list(MEAN3), list(STD3))
    assert torch.allclose(normalize_uint8(images, MEAN3, STD3), ref, atol=PARITY_ATOL)


# --------------------------------------------------------------------------- whole pipeline


def _reference_view(
    image: torch.Tensor, prm: ViewParams, i: int, aug: TwoViewAugment
) -> torch.Tensor:
    """One view of one image with torchvision v2 on floats, op by op, with sample i's parameters."""
    x = TF.to_dtype(image, torch.float32, scale=True)
    box = [int(v[i]) for v in (prm.top, prm.left, prm.height, prm.width)]
    size = [aug.image_size] * 2
    x = TF.resized_crop(x, *box, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    x = x.clamp(0, 1)  # as the uint8 pipeline clamps the bicubic overshoot
    x = TF.horizontal_flip(x) if prm.hflip[i] else x
    x = TF.vertical_flip(x) if prm.vflip[i] else x
    x = TF.rotate(x, 90.0 * int(prm.rot90[i]))
    if prm.jitter[i]:
        for op in prm.order[i].tolist():
            name = ops.JITTER_OPS[op]
            x = getattr(TF, f"adjust_{name}")(x, float(getattr(prm, name)[i]))
    x = TF.rgb_to_grayscale(x, num_output_channels=3) if prm.grayscale[i] and x.shape[0] == 3 else x
    k = aug.blur_kernel_size
    x = TF.gaussian_blur(x, [k, k], [float(prm.sigma[i])] * 2) if prm.blur[i] else x
    x = TF.solarize(x, 128 / 255) if prm.solarize[i] else x
    return TF.normalize(x, list(aug.mean), list(aug.std))


@pytest.mark.parametrize("preset, channels", [("histology", 3), ("ct", 1)])
def test_pipeline_matches_per_image_torchvision(preset: str, channels: int) -> None:
    aug = _augment(preset, size=24, channels=channels)
    images = _images(batch=12, channels=channels, size=32)
    gen = torch.Generator().manual_seed(3)
    for view in (0, 1):
        prm = aug.sample_params(images, view, gen)
        # force every op on for some samples, so that each path is exercised
        prm = dataclasses.replace(prm, solarize=prm.solarize | (torch.arange(12) % 3 == 0))
        ours = aug.apply(images, prm)
        for i in range(12):
            ref = _reference_view(images[i], prm, i, aug)
            assert torch.allclose(ours[i], ref, atol=PIPELINE_ATOL), (view, i)


@pytest.mark.parametrize(
    "channels, in_size, out_size", [(3, 32, 32), (1, 32, 32), (3, 40, 24), (1, 20, 28)]
)
def test_shapes_dtypes_and_devices(channels: int, in_size: int, out_size: int) -> None:
    aug = _augment("histology" if channels == 3 else "ct", size=out_size, channels=channels)
    images = _images(batch=5, channels=channels, size=in_size)
    first, second = aug(images)
    for view in (first, second, aug.single(images, view=1)):
        assert view.shape == (5, channels, out_size, out_size)
        assert view.dtype == torch.float32 and view.device == images.device
        assert torch.isfinite(view).all()
    assert not torch.equal(first, second)


def test_chunked_cpu_pass_equals_one_pass() -> None:
    images = _images(batch=7)
    whole, chunked = _augment(), _augment()
    chunked.cpu_chunk_pixels = 3 * 32 * 32  # three images per chunk
    prm = whole.sample_params(images, 1, torch.Generator().manual_seed(0))
    assert torch.allclose(whole.apply(images, prm), chunked.apply(images, prm), atol=1e-6)


def test_seeded_generator_is_deterministic() -> None:
    aug = _augment()
    images = _images(batch=6)
    a = aug(images, torch.Generator().manual_seed(7))
    b = aug(images, torch.Generator().manual_seed(7))
    c = aug(images, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    """Same parameters, same views on CUDA (no host round trip in apply)."""
    aug = _augment(size=32)
    images = _images(batch=16)
    for view in (0, 1):
        prm = aug.sample_params(images, view, torch.Generator().manual_seed(view))
        cpu = aug.apply(images, prm)
        gpu = aug.apply(images.cuda(), prm.to("cuda"))
        assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
        # TF32 matmuls, if enabled globally, would loosen this
        assert torch.allclose(gpu.cpu(), cpu, atol=1e-3)
    gen = torch.Generator(device="cuda").manual_seed(0)
    first, second = aug(images.cuda(), gen)
    assert first.device.type == "cuda" and first.shape == (16, 3, 32, 32)
